package sim

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/fleetshift/fleetshift/agent/device"
	"github.com/fleetshift/fleetshift/agent/sim/lightnats"
)

// TestDevicesDialFromSpreadLoopbackAddresses: device i's connection to a loopback server leaves from
// 127.0.0.<1 + i mod 250>, so 100,000 devices need at most a few hundred ports per source address.
func TestDevicesDialFromSpreadLoopbackAddresses(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, c := range []struct {
		index int
		want  string
	}{{0, "127.0.0.1"}, {7, "127.0.0.8"}, {249, "127.0.0.250"}, {250, "127.0.0.1"}, {99_999, "127.0.0.250"}} {
		conn, err := (&spreadDialer{index: c.index}).Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatalf("device %d: %v", c.index, err)
		}
		_ = ln.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Second))
		srv, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		got := srv.RemoteAddr().(*net.TCPAddr).IP.String()
		conn.Close()
		srv.Close()
		if got != c.want {
			t.Fatalf("device %d dialled from %s, want %s", c.index, got, c.want)
		}
	}
	if opts := natsOptions(&spreadDialer{index: 3}); len(opts) == 0 {
		t.Fatal("nats.go devices get no NATS options (no spreading dialer)")
	}
}

// TestFileLimitSaysWhenDevicesCannotFit: a fleet that fits is accepted (the limit raised as needed); one
// beyond any possible limit is refused in one line naming RLIMIT_NOFILE, before any device connects.
func TestFileLimitSaysWhenDevicesCannotFit(t *testing.T) {
	if err := raiseFileLimit(100); err != nil {
		t.Fatal(err)
	}
	err := raiseFileLimit(1 << 40)
	if err == nil || !strings.Contains(err.Error(), "RLIMIT_NOFILE") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("error %v", err)
	}
}

// TestLightClientHandsTLSToNATSGo: a device uses the light connection for a nats:// server and nats.go
// for one the light connection cannot serve (TLS); with NATSClientGo it always uses nats.go.
func TestLightClientHandsTLSToNATSGo(t *testing.T) {
	spec := func(url string) device.ConnSpec {
		return device.ConnSpec{URL: url, User: "u", Password: "p", InboxPrefix: "_INBOX_u", Subject: "fleet.device.u.target"}
	}
	for _, c := range []struct {
		client, url string
		light       bool
	}{
		{NATSClientLight, "nats://127.0.0.1:1", true},
		{NATSClientLight, "tls://127.0.0.1:1", false},
		{NATSClientGo, "nats://127.0.0.1:1", false},
	} {
		conn, err := dialer(c.client, 0)(spec(c.url))
		if err != nil {
			t.Fatalf("%s %s: %v", c.client, c.url, err)
		}
		_, light := conn.(*lightnats.Conn)
		conn.Close()
		if light != c.light {
			t.Errorf("%s %s: light connection %v, want %v", c.client, c.url, light, c.light)
		}
	}
}
