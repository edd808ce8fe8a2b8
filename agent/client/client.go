// Package client is the agent's HTTP side of the fleetshift API (docs/contract.md): device registration with a
// provisioning key, the ETag-polled target state, current-state reports, and the two admin calls the
// simulator needs to set targets. One Client (and its connection pool) serves any number of devices.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Client calls one fleetshift server.
type Client struct {
	base string
	http *http.Client
}

// MaxConns bounds the connections of New's default client to one server.
const MaxConns = 256

// New returns a client for the server at base (e.g. http://127.0.0.1:3001). hc nil: a client with a
// connection pool sized for many devices sharing it.
func New(base string, hc *http.Client) (*Client, error) {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("server url %q: want http(s)://host[:port]", base)
	}
	if hc == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConns = 512
		tr.MaxIdleConnsPerHost = 256
		// Beyond this many connections requests wait for one: a simulator's thousands of devices falling
		// back to HTTP at once would otherwise open a connection (two goroutines, 8 KiB of buffers) each.
		tr.MaxConnsPerHost = MaxConns
		hc = &http.Client{Transport: tr, Timeout: 30 * time.Second}
	}
	return &Client{base: strings.TrimRight(base, "/"), http: hc}, nil
}

// StatusError is a non-2xx answer.
type StatusError struct {
	Method, Path string
	Code         int
	Body         string
	// RetryAfter is the wait a 429 or 503 answer asked for (Retry-After); zero when it asked none.
	RetryAfter time.Duration
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%s %s: status %d: %s", e.Method, e.Path, e.Code, e.Body)
}

// IsStatus reports whether err is a StatusError with the given code.
func IsStatus(err error, code int) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Code == code
}

// Identity is what a device gets at registration and keeps.
type Identity struct {
	UUID    string `json:"uuid"`
	APIKey  string `json:"api_key"`
	NATSURL string `json:"nats_url,omitempty"`
}

// Register registers a new device with a fleet provisioning key.
func (c *Client) Register(ctx context.Context, provisioningKey, name string, tags []string) (Identity, error) {
	body := map[string]any{"device_name": name}
	if len(tags) > 0 {
		body["tags"] = tags
	}
	var id Identity
	h := http.Header{"Authorization": {"Bearer " + provisioningKey}}
	if err := c.do(ctx, http.MethodPost, "/api/v1/device/register", h, body, &id); err != nil {
		return Identity{}, fmt.Errorf("register device %q: %w", name, err)
	}
	if id.UUID == "" || id.APIKey == "" {
		return Identity{}, fmt.Errorf("register device %q: answer lacks uuid or api_key", name)
	}
	return id, nil
}

// State is one answer of GET /api/v1/device/:uuid/state.
type State struct {
	Body        []byte
	ETag        string
	NotModified bool
}

// GetState fetches a device's target state; with etag set, an unchanged state answers NotModified.
func (c *Client) GetState(ctx context.Context, uuid, apiKey, etag string) (State, error) {
	path := "/api/v1/device/" + url.PathEscape(uuid) + "/state"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return State{}, fmt.Errorf("get target of %s: %w", uuid, err)
	}
	req.Header.Set("X-Device-API-Key", apiKey)
	if etag != "" {
		req.Header.Set("If-None-Match", etag)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return State{}, fmt.Errorf("get target of %s: %w", uuid, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return State{}, fmt.Errorf("get target of %s: read: %w", uuid, err)
	}
	switch {
	case resp.StatusCode == http.StatusNotModified:
		return State{NotModified: true, ETag: etag}, nil
	case resp.StatusCode/100 != 2:
		return State{}, fmt.Errorf("get target of %s: %w", uuid, &StatusError{Method: "GET", Path: path, Code: resp.StatusCode, Body: trim(b), RetryAfter: retryAfter(resp)})
	}
	return State{Body: b, ETag: resp.Header.Get("ETag")}, nil
}

// PatchState sends a device's current-state report (the PATCH /api/v1/device/state body).
func (c *Client) PatchState(ctx context.Context, apiKey string, report []byte) error {
	h := http.Header{"X-Device-API-Key": {apiKey}}
	if err := c.do(ctx, http.MethodPatch, "/api/v1/device/state", h, json.RawMessage(report), nil); err != nil {
		return fmt.Errorf("report state: %w", err)
	}
	return nil
}

// PutDeviceTarget sets a device's target (admin).
func (c *Client) PutDeviceTarget(ctx context.Context, token, uuid string, apps any, config any) error {
	h := http.Header{"Authorization": {"Bearer " + token}}
	body := map[string]any{"apps": apps, "config": orEmpty(config)}
	if err := c.do(ctx, http.MethodPut, "/api/v1/devices/"+url.PathEscape(uuid)+"/target-state", h, body, nil); err != nil {
		return fmt.Errorf("set target of %s: %w", uuid, err)
	}
	return nil
}

// PutFleetTarget sets a fleet's default target (admin).
func (c *Client) PutFleetTarget(ctx context.Context, token, fleet string, apps any, config any) error {
	h := http.Header{"Authorization": {"Bearer " + token}}
	body := map[string]any{"apps": apps, "config": orEmpty(config)}
	if err := c.do(ctx, http.MethodPut, "/api/v1/fleets/"+url.PathEscape(fleet)+"/target-state", h, body, nil); err != nil {
		return fmt.Errorf("set default target of fleet %s: %w", fleet, err)
	}
	return nil
}

func orEmpty(v any) any {
	if v == nil {
		return map[string]any{}
	}
	return v
}

// maxRefusals is how many 429/503 answers with Retry-After one call waits out before giving up.
const maxRefusals = 8

func (c *Client) do(ctx context.Context, method, path string, h http.Header, in, out any) error {
	var payload []byte
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode %s %s: %w", method, path, err)
		}
		payload = b
	}
	for refusals := 0; ; refusals++ {
		b, err := c.send(ctx, method, path, h, payload, in != nil)
		var se *StatusError
		if errors.As(err, &se) && se.RetryAfter > 0 && refusals < maxRefusals {
			// The server is at a limit (429 rate_limited, 503 overloaded or unavailable) and said when to
			// come back: wait that long plus jitter, so a crowd of refused devices does not return at once.
			if werr := sleepCtx(ctx, withJitter(se.RetryAfter)); werr != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		if out != nil {
			if err := json.Unmarshal(b, out); err != nil {
				return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
			}
		}
		return nil
	}
}

// send makes one request and returns the body of a 2xx answer, or a *StatusError.
func (c *Client) send(ctx context.Context, method, path string, h http.Header, payload []byte, hasBody bool) ([]byte, error) {
	var body io.Reader
	if hasBody {
		body = bytes.NewReader(payload)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	for k, v := range h {
		req.Header[k] = v
	}
	if hasBody {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("%s %s: read: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		return nil, &StatusError{Method: method, Path: path, Code: resp.StatusCode, Body: trim(b), RetryAfter: retryAfter(resp)}
	}
	return b, nil
}

// retryAfter is the delay a 429 or 503 answer asks for in Retry-After (delta seconds or an HTTP date);
// zero for other answers or without the header.
func retryAfter(resp *http.Response) time.Duration {
	if resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode != http.StatusServiceUnavailable {
		return 0
	}
	v := strings.TrimSpace(resp.Header.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if secs, err := strconv.Atoi(v); err == nil {
		return max(time.Duration(secs)*time.Second, 100*time.Millisecond)
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), 100*time.Millisecond)
	}
	return 0
}

// withJitter spreads d over [d, 1.5d).
func withJitter(d time.Duration) time.Duration {
	return d + rand.N(d/2+1)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func trim(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 300 {
		s = s[:300]
	}
	return s
}

// Device is the part of GET /api/v1/devices/:uuid the agent uses.
type Device struct {
	UUID       string `json:"uuid"`
	DeviceName string `json:"device_name"`
	FleetID    string `json:"fleet_id"`
}

// GetDevice reads a device (admin).
func (c *Client) GetDevice(ctx context.Context, token, uuid string) (Device, error) {
	var d Device
	h := http.Header{"Authorization": {"Bearer " + token}}
	if err := c.do(ctx, http.MethodGet, "/api/v1/devices/"+url.PathEscape(uuid), h, nil, &d); err != nil {
		return Device{}, fmt.Errorf("get device %s: %w", uuid, err)
	}
	return d, nil
}
