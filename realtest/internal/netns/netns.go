// Package netns gives Docker-backed tests hosts with their own network addresses on this machine: a
// bridge on the host with the first address of a private /24 made for the test, and per host a network
// namespace joined to the bridge by a veth pair. Traffic stays between the namespaces and the host.
// Everything is removed in t.Cleanup. Needs root and iproute2 (`ip`).
package netns

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
)

// Net is a test network: a host bridge with HostIP in a /24.
type Net struct {
	id     string
	Bridge string
	// Prefix is the /24; HostIP (.1) is the host's address on it.
	Prefix netip.Prefix
	HostIP netip.Addr
}

// Host is a network namespace with one interface (eth0) on the Net.
type Host struct {
	NS       string     // namespace name (ip netns)
	HostVeth string     // the host end of the veth pair, on the bridge
	IP       netip.Addr // the namespace's address
}

// Available says why network namespaces cannot be made here, or "" when they can.
func Available() string {
	if out, err := exec.Command("ip", "netns", "list").CombinedOutput(); err != nil {
		return fmt.Sprintf("ip netns list: %v: %s", err, bytes.TrimSpace(out))
	}
	return ""
}

// ip runs `ip args...` and returns its error with the command and its output.
func ip(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// New makes the bridge on a free 10.x.y.0/24 (one no route on this machine covers) and removes it in
// t.Cleanup, after every Host of it.
func New(t testing.TB) *Net {
	t.Helper()
	ctx := context.Background()
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("netns: random id: %v", err)
	}
	n := &Net{id: hex.EncodeToString(b[:2])}
	n.Bridge = "fsbr" + n.id
	routes, err := exec.Command("ip", "-4", "route", "show", "table", "all").Output()
	if err != nil {
		t.Fatalf("netns: ip route: %v", err)
	}
	for i := 0; ; i++ {
		cand := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 200 + (b[2]+byte(i))%50, b[3] + byte(i*7), 0}), 24)
		if !strings.Contains(string(routes), strings.TrimSuffix(cand.Addr().String(), ".0")+".") {
			n.Prefix = cand
			break
		}
		if i > 50 {
			t.Fatal("netns: no free 10.x.y.0/24")
		}
	}
	n.HostIP = n.Prefix.Addr().Next()
	if err := ip(ctx, "link", "add", n.Bridge, "type", "bridge"); err != nil {
		t.Fatalf("netns: %v", err)
	}
	t.Cleanup(func() {
		if err := ip(context.Background(), "link", "del", n.Bridge); err != nil {
			t.Errorf("netns cleanup: %v", err)
		}
	})
	for _, args := range [][]string{
		{"addr", "add", netip.PrefixFrom(n.HostIP, 24).String(), "dev", n.Bridge},
		{"link", "set", n.Bridge, "up"},
	} {
		if err := ip(ctx, args...); err != nil {
			t.Fatalf("netns: %v", err)
		}
	}
	return n
}

// AddHost makes namespace number i (1..200) with address .(10+i), its default route via HostIP, and
// loopback up; it is deleted in t.Cleanup.
func (n *Net) AddHost(t testing.TB, i int) *Host {
	t.Helper()
	ctx := context.Background()
	if i < 1 || i > 200 {
		t.Fatalf("netns: host number %d outside 1..200", i)
	}
	a := n.Prefix.Addr().As4()
	a[3] = byte(10 + i)
	h := &Host{NS: fmt.Sprintf("fs-%s-%d", n.id, i), HostVeth: fmt.Sprintf("fsv%s%d", n.id, i), IP: netip.AddrFrom4(a)}
	peer := fmt.Sprintf("fsp%s%d", n.id, i)
	if err := ip(ctx, "netns", "add", h.NS); err != nil {
		t.Fatalf("netns: %v", err)
	}
	t.Cleanup(func() {
		// Deleting the namespace deletes its end of the pair, and with it the host end.
		_ = ip(context.Background(), "link", "del", h.HostVeth)
		if err := ip(context.Background(), "netns", "del", h.NS); err != nil {
			t.Errorf("netns cleanup: %v", err)
		}
	})
	steps := [][]string{
		{"link", "add", h.HostVeth, "type", "veth", "peer", "name", peer},
		{"link", "set", h.HostVeth, "master", n.Bridge},
		{"link", "set", h.HostVeth, "up"},
		{"link", "set", peer, "netns", h.NS},
		{"-n", h.NS, "link", "set", peer, "name", "eth0"},
		{"-n", h.NS, "addr", "add", netip.PrefixFrom(h.IP, 24).String(), "dev", "eth0"},
		{"-n", h.NS, "link", "set", "eth0", "up"},
		{"-n", h.NS, "link", "set", "lo", "up"},
		{"-n", h.NS, "route", "add", "default", "via", n.HostIP.String()},
	}
	for _, args := range steps {
		if err := ip(ctx, args...); err != nil {
			t.Fatalf("netns: %v", err)
		}
	}
	return h
}

// Command returns a command that runs inside the namespace.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
}

// SetLink takes the host end of the namespace's veth pair down (cut off) or up (back).
func (h *Host) SetLink(ctx context.Context, up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	return ip(ctx, "link", "set", h.HostVeth, state)
}
