package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/fleetshift/fleetshift/agent/device"
	"github.com/fleetshift/fleetshift/agent/sim/lightnats"
	"github.com/fleetshift/fleetshift/shared/wait"
)

// lightDevice is one device's light connection and what it told the device.
type lightDevice struct {
	conn     *lightnats.Conn
	connects atomic.Int64
	mu       sync.Mutex
	pushes   []string
}

func (d *lightDevice) lastPush() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.pushes) == 0 {
		return ""
	}
	return d.pushes[len(d.pushes)-1]
}

func connectLight(t *testing.T, url, uuid, key string) *lightDevice {
	t.Helper()
	d := &lightDevice{}
	c, err := lightnats.Connect(device.ConnSpec{
		URL: url, Name: "e2e " + uuid, User: uuid, Password: key, InboxPrefix: "_INBOX_" + uuid,
		Subject: "fleet.device." + uuid + ".target",
		OnMessage: func(data []byte) {
			d.mu.Lock()
			d.pushes = append(d.pushes, string(data))
			d.mu.Unlock()
		},
		OnConnect: func() { d.connects.Add(1) },
	}, lightnats.Options{ReconnectWait: 100 * time.Millisecond, ReconnectJitter: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	d.conn = c
	return d
}

func lightRequest(t *testing.T, c *lightnats.Conn, subj string, hdr nats.Header, data []byte) *nats.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := c.Request(ctx, subj, hdr, data)
	if err != nil {
		t.Fatalf("request %s: %v", subj, err)
	}
	return m
}

// TestLightNATSConnectionThroughTheAuthCallout: the simulator's light connection against the real server:
// admitted by the auth callout with the device's own uuid and key (refused with a wrong key), it reads the
// device's latest target with a direct get, receives the next target pushed, has its report acknowledged
// by JetStream, and comes back by itself after a server restart.
func TestLightNATSConnectionThroughTheAuthCallout(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start()
	uuid := "7c1d2e3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f"
	key := e.addDevice(uuid, "light", "acme/app:1.0")

	wrong := connectLight(t, e.srv.NATSURL, uuid, "not-the-key")
	d := connectLight(t, e.srv.NATSURL, uuid, key)
	wait.For(t, 10*time.Second, func() error {
		if !d.conn.Connected() || d.connects.Load() != 1 {
			return fmt.Errorf("connected %v, %d connects", d.conn.Connected(), d.connects.Load())
		}
		return nil
	})
	directGet := "$JS.API.DIRECT.GET.FLEET_TARGETS.fleet.device." + uuid + ".target"
	latest := func() string {
		t.Helper()
		m := lightRequest(t, d.conn, directGet, nil, nil)
		if st := m.Header.Get("Status"); st != "" {
			t.Fatalf("direct get: status %s %s", st, m.Header.Get("Description"))
		}
		return string(m.Data)
	}
	if got := latest(); !strings.Contains(got, "acme/app:1.0") {
		t.Fatalf("latest target %s", got)
	}

	e.admin("PUT", "/api/v1/devices/"+uuid+"/target-state", map[string]any{"apps": appsFor("acme/app:2.0"), "config": map[string]any{}}, 200)
	wait.For(t, 10*time.Second, func() error {
		if p := d.lastPush(); !strings.Contains(p, "acme/app:2.0") {
			return fmt.Errorf("last push %q", p)
		}
		return nil
	})
	if got := latest(); !strings.Contains(got, "acme/app:2.0") {
		t.Fatalf("latest target after the push %s", got)
	}

	report, err := json.Marshal(map[string]any{uuid: map[string]any{"version": 1, "apps": map[string]any{}}})
	if err != nil {
		t.Fatal(err)
	}
	m := lightRequest(t, d.conn, "fleet.device."+uuid+".state", nats.Header{"Nats-Msg-Id": {uuid + "-light-1"}}, report)
	var ack struct {
		Stream string `json:"stream"`
		Error  *struct {
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(m.Data, &ack); err != nil || ack.Error != nil || ack.Stream == "" {
		t.Fatalf("report ack %s (%v)", m.Data, err)
	}
	if wrong.conn.Connected() || wrong.connects.Load() != 0 {
		t.Fatal("a wrong key got through the auth callout")
	}

	e.stop()
	wait.For(t, 10*time.Second, func() error {
		if d.conn.Connected() {
			return errors.New("still connected to a stopped server")
		}
		return nil
	})
	e.start()
	wait.For(t, 30*time.Second, func() error {
		if !d.conn.Connected() || d.connects.Load() != 2 {
			return fmt.Errorf("connected %v, %d connects after the restart", d.conn.Connected(), d.connects.Load())
		}
		return nil
	})
	if got := latest(); !strings.Contains(got, "acme/app:2.0") {
		t.Fatalf("latest target after the restart %s", got)
	}
	e.admin("PUT", "/api/v1/devices/"+uuid+"/target-state", map[string]any{"apps": appsFor("acme/app:3.0"), "config": map[string]any{}}, 200)
	wait.For(t, 10*time.Second, func() error {
		if p := d.lastPush(); !strings.Contains(p, "acme/app:3.0") {
			return fmt.Errorf("last push after the restart %q", p)
		}
		return nil
	})
}
