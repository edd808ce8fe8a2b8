package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/fleetshift/fleetshift/shared/pgtest"
)

// TestFileDescriptorExhaustionIsNotFatal: `serve` limited to 256 open files, flooded with idle TCP
// connections on its HTTP and NATS ports until accept fails with "too many open files", keeps running;
// once the connections close, the HTTP API answers again and a device connects over NATS (through the
// auth callout).
func TestFileDescriptorExhaustionIsNotFatal(t *testing.T) {
	db := pgtest.New(t)
	env := processEnv(t, map[string]string{"DATABASE_URL": db.URL, "FLEETSHIFT_ADMIN_TOKEN": "admin-tok",
		"FLEETSHIFT_WEBHOOK_TOKEN": "hook-tok", "FLEETSHIFT_LOG_LEVEL": "warn"})
	// ulimit -n sets the soft and the hard limit, so the Go runtime cannot raise it again.
	cmd := exec.Command("/bin/sh", "-c", `ulimit -n 256 && exec "$0" serve`, bin)
	cmd.Env = env
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	exited := make(chan struct{})
	var httpURL, natsURL string
	up := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			switch {
			case len(f) == 3 && f[0] == "HTTP" && f[1] == "API":
				httpURL = f[2]
			case len(f) == 2 && f[0] == "NATS":
				natsURL = f[1]
			case len(f) >= 1 && f[0] == "database" && httpURL != "" && natsURL != "":
				close(up)
			}
		}
		_ = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	select {
	case <-up:
	case <-exited:
		t.Fatalf("serve with 256 open files did not start: %s", stderr.String())
	case <-time.After(2 * time.Minute):
		t.Fatalf("serve not up within 2m: %s", stderr.String())
	}
	// A device to connect over NATS later.
	req, _ := http.NewRequest("POST", httpURL+"/api/v1/devices", strings.NewReader(`{"uuid":"fd-device","device_name":"fd","fleet_id":"fd"}`))
	req.Header.Set("Authorization", "Bearer admin-tok")
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	var created struct {
		APIKey string `json:"api_key"`
	}
	require.NoError(t, json.NewDecoder(res.Body).Decode(&created))
	res.Body.Close()
	require.Equal(t, 201, res.StatusCode)

	nu, err := url.Parse(natsURL)
	require.NoError(t, err)
	hu, err := url.Parse(httpURL)
	require.NoError(t, err)
	var held []net.Conn
	defer func() {
		for _, c := range held {
			_ = c.Close()
		}
	}()
	for range 300 {
		for _, addr := range []string{hu.Host, nu.Host} {
			if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
				held = append(held, c)
			}
		}
	}
	// The server is out of descriptors: a new request is not answered.
	short := &http.Client{Timeout: 500 * time.Millisecond}
	eventually(t, 30*time.Second, func() bool {
		res, err := short.Get(httpURL + "/healthz")
		if err == nil {
			res.Body.Close()
		}
		return err != nil
	}, "the server still accepts connections: the descriptors were not exhausted")
	for _, c := range held {
		_ = c.Close()
	}
	held = nil
	eventually(t, time.Minute, func() bool {
		res, err := short.Get(httpURL + "/healthz")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == 200
	}, "HTTP does not answer after the connections closed")
	eventually(t, time.Minute, func() bool {
		nc, err := nats.Connect(natsURL, nats.UserInfo("fd-device", created.APIKey), nats.MaxReconnects(0), nats.Timeout(2*time.Second))
		if err != nil {
			return false
		}
		nc.Close()
		return true
	}, "a device cannot connect over NATS after the connections closed")
	select {
	case <-exited:
		t.Fatalf("serve exited: %s", stderr.String())
	default:
	}
	require.NotContains(t, stderr.String(), "panic")
}
