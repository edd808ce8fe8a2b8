// Package health runs a service's device-side health check (the server never probes device
// addresses). The accepted document, from the target service's healthCheck (or a policy's
// health_check_config handed down in it), is:
//
//	{"type": "http",      "url": "http://127.0.0.1:8080/healthz", "expected_status": 200, "body_contains": "ok"}
//	{"type": "tcp",       "address": "127.0.0.1:5432"}
//	{"type": "container"}                       // the container runs, and Docker health (if the image has one) is healthy
//	{"type": "command",   "command": ["/usr/bin/check", "--quick"]}   // exit code 0 passes
//
// with, for every type, "interval_seconds" (pause between attempts, default 5), "retries" (attempts
// before giving up, default 3), "timeout_seconds" (one attempt, default 5) and "deadline_seconds" (alias
// "health_check_timeout_seconds": the whole check, default 300). Seconds may be fractional. The check
// passes on the first passing attempt and fails when the attempts or the deadline run out.
// expected_status 0 accepts any 2xx.
package health

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"time"

	"github.com/fleetshift/fleetshift/agent/wire"
)

// Check types.
const (
	TypeHTTP      = "http"
	TypeTCP       = "tcp"
	TypeContainer = "container"
	TypeCommand   = "command"
)

// Config is one health check.
type Config struct {
	Type            string   `json:"type"`
	URL             string   `json:"url,omitempty"`
	ExpectedStatus  int      `json:"expected_status,omitempty"`
	BodyContains    string   `json:"body_contains,omitempty"`
	Address         string   `json:"address,omitempty"`
	Command         []string `json:"command,omitempty"`
	IntervalSeconds float64  `json:"interval_seconds,omitempty"`
	Retries         int      `json:"retries,omitempty"`
	TimeoutSeconds  float64  `json:"timeout_seconds,omitempty"`
	DeadlineSeconds float64  `json:"deadline_seconds,omitempty"`
	// HealthCheckTimeoutSeconds is the policy's name for DeadlineSeconds.
	HealthCheckTimeoutSeconds float64 `json:"health_check_timeout_seconds,omitempty"`
}

// Parse decodes and validates a health-check document, filling defaults.
func Parse(raw json.RawMessage) (Config, error) {
	var c Config
	if err := json.Unmarshal(raw, &c); err != nil {
		return Config{}, fmt.Errorf("decode health check: %w", err)
	}
	if c.Type == "" {
		switch {
		case c.URL != "":
			c.Type = TypeHTTP
		case c.Address != "":
			c.Type = TypeTCP
		case len(c.Command) > 0:
			c.Type = TypeCommand
		default:
			c.Type = TypeContainer
		}
	}
	switch c.Type {
	case TypeHTTP:
		if c.URL == "" {
			return Config{}, errors.New("health check: http needs url")
		}
	case TypeTCP:
		if c.Address == "" {
			return Config{}, errors.New("health check: tcp needs address")
		}
	case TypeCommand:
		if len(c.Command) == 0 {
			return Config{}, errors.New("health check: command needs command")
		}
	case TypeContainer:
	default:
		return Config{}, fmt.Errorf("health check: unknown type %q", c.Type)
	}
	if c.IntervalSeconds <= 0 {
		c.IntervalSeconds = 5
	}
	if c.Retries <= 0 {
		c.Retries = 3
	}
	if c.TimeoutSeconds <= 0 {
		c.TimeoutSeconds = 5
	}
	if c.DeadlineSeconds <= 0 {
		c.DeadlineSeconds = c.HealthCheckTimeoutSeconds
	}
	if c.DeadlineSeconds <= 0 {
		c.DeadlineSeconds = 300
	}
	return c, nil
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// ContainerProbe reports a container's state ("running", "exited", ...) and its Docker health
// ("healthy", "unhealthy", "starting", or "" when the image defines none).
type ContainerProbe func(ctx context.Context) (status, dockerHealth string, err error)

// Result is the outcome of a check, in the report's health shape.
type Result struct {
	Status   string `json:"status"` // healthy or unhealthy
	Attempts int    `json:"attempts"`
	Detail   string `json:"detail,omitempty"`
}

// Health returns the result as the report's per-service health.
func (r Result) Health() *wire.Health {
	return &wire.Health{Status: r.Status, Details: map[string]any{"attempts": r.Attempts, "detail": r.Detail}}
}

// Run runs the check until it passes, its attempts run out, its deadline passes or ctx ends. It never
// returns "starting": a check cut short counts as unhealthy.
func Run(ctx context.Context, c Config, probe ContainerProbe) Result {
	ctx, cancel := context.WithTimeout(ctx, seconds(c.DeadlineSeconds))
	defer cancel()
	var last error
	attempts := 0
	for attempts < c.Retries {
		attempts++
		actx, acancel := context.WithTimeout(ctx, seconds(c.TimeoutSeconds))
		last = attempt(actx, c, probe)
		acancel()
		if last == nil {
			return Result{Status: wire.Healthy, Attempts: attempts}
		}
		if attempts == c.Retries {
			break
		}
		t := time.NewTimer(seconds(c.IntervalSeconds))
		select {
		case <-ctx.Done():
			t.Stop()
			return Result{Status: wire.Unhealthy, Attempts: attempts, Detail: fmt.Sprintf("deadline passed: %v", last)}
		case <-t.C:
		}
	}
	return Result{Status: wire.Unhealthy, Attempts: attempts, Detail: last.Error()}
}

func attempt(ctx context.Context, c Config, probe ContainerProbe) error {
	switch c.Type {
	case TypeHTTP:
		return checkHTTP(ctx, c)
	case TypeTCP:
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", c.Address)
		if err != nil {
			return fmt.Errorf("tcp %s: %w", c.Address, err)
		}
		return conn.Close()
	case TypeCommand:
		cmd := exec.CommandContext(ctx, c.Command[0], c.Command[1:]...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("command %s: %w: %s", strings.Join(c.Command, " "), err, strings.TrimSpace(tail(out.String())))
		}
		return nil
	case TypeContainer:
		if probe == nil {
			return errors.New("container: no runtime to ask")
		}
		status, dh, err := probe(ctx)
		if err != nil {
			return fmt.Errorf("container: %w", err)
		}
		if status != "running" {
			return fmt.Errorf("container is %s", cmp.Or(status, "missing"))
		}
		if dh != "" && dh != wire.Healthy {
			return fmt.Errorf("container health is %s", dh)
		}
		return nil
	}
	return fmt.Errorf("unknown check type %q", c.Type)
}

func checkHTTP(ctx context.Context, c Config) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.URL, nil)
	if err != nil {
		return fmt.Errorf("http %s: %w", c.URL, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("http %s: %w", c.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("http %s: read body: %w", c.URL, err)
	}
	if c.ExpectedStatus != 0 && resp.StatusCode != c.ExpectedStatus {
		return fmt.Errorf("http %s: status %d, want %d", c.URL, resp.StatusCode, c.ExpectedStatus)
	}
	if c.ExpectedStatus == 0 && (resp.StatusCode < 200 || resp.StatusCode > 299) {
		return fmt.Errorf("http %s: status %d, want 2xx", c.URL, resp.StatusCode)
	}
	if c.BodyContains != "" && !bytes.Contains(body, []byte(c.BodyContains)) {
		return fmt.Errorf("http %s: body lacks %q", c.URL, c.BodyContains)
	}
	return nil
}

func tail(s string) string {
	if len(s) > 200 {
		return s[len(s)-200:]
	}
	return s
}
