// Package cli implements fleetshift's operator verbs: a thin, scriptable client of the admin API.
package cli

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// Client calls the admin API.
type Client struct {
	BaseURL string
	Token   string
	HTTP    *http.Client
}

// APIError is an error answer of the API, shown to the user as one line.
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string {
	if e.Code == "" {
		return fmt.Sprintf("HTTP %d: %s", e.Status, e.Message)
	}
	return fmt.Sprintf("%s (HTTP %d): %s", e.Code, e.Status, e.Message)
}

// clientFromEnv builds a client from flags falling back to FLEETSHIFT_URL and FLEETSHIFT_TOKEN.
func clientFromEnv(urlFlag, tokenFlag string) (*Client, error) {
	base := strings.TrimRight(cmp.Or(urlFlag, os.Getenv("FLEETSHIFT_URL"), "http://127.0.0.1:3001"), "/")
	if _, err := url.ParseRequestURI(base); err != nil {
		return nil, fmt.Errorf("server URL %q: %w", base, err)
	}
	token := cmp.Or(tokenFlag, os.Getenv("FLEETSHIFT_TOKEN"))
	if token == "" {
		return nil, errors.New("no API token: set FLEETSHIFT_TOKEN or pass --token")
	}
	return &Client{BaseURL: base, Token: token, HTTP: &http.Client{Timeout: 60 * time.Second}}, nil
}

// Do sends a request with body encoded as JSON (nil for none) and decodes a 2xx answer into out (nil to
// discard). Any other answer is an *APIError.
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, rd)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := c.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(res.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	if res.StatusCode < 200 || res.StatusCode > 299 {
		var eb struct {
			Error struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if json.Unmarshal(raw, &eb) == nil && eb.Error.Message != "" {
			return &APIError{Status: res.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message}
		}
		return &APIError{Status: res.StatusCode, Message: strings.TrimSpace(string(raw))}
	}
	if out == nil || len(raw) == 0 {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}
