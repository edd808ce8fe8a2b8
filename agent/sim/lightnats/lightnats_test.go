package lightnats_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleetshift/fleetshift/agent/device"
	"github.com/fleetshift/fleetshift/agent/internal/fleettest"
	"github.com/fleetshift/fleetshift/agent/sim/lightnats"
)

const (
	uuid = "0b7e3c1a-2f4d-4e5b-9c6d-7e8f9a0b1c2d"
	key  = "device-key"
)

var (
	targetSubj = "fleet.device." + uuid + ".target"
	stateSubj  = "fleet.device." + uuid + ".state"
	directGet  = "$JS.API.DIRECT.GET.FLEET_TARGETS." + targetSubj
)

// startServer runs a JetStream server on port (0: any) over dir, admitting the device only with its own
// password and only to its own subjects (as fleetshift's auth callout does), plus an admin user.
func startServer(t *testing.T, port int, dir string, mutate func(*server.Options)) *server.Server {
	t.Helper()
	if port == 0 {
		port = -1
	}
	o := &server.Options{Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true,
		Users: []*server.User{
			{Username: "admin", Password: "admin"},
			{Username: uuid, Password: key, Permissions: &server.Permissions{
				Publish:   &server.SubjectPermission{Allow: []string{stateSubj, directGet, "nobody.home", "slow.service"}},
				Subscribe: &server.SubjectPermission{Allow: []string{targetSubj, "_INBOX_" + uuid + ".>"}},
			}},
		}}
	if mutate != nil {
		mutate(o)
	}
	ns, err := server.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats not ready")
	}
	t.Cleanup(ns.Shutdown)
	return ns
}

type admin struct {
	nc *nats.Conn
	js jetstream.JetStream
}

func connectAdmin(t *testing.T, url string) admin {
	t.Helper()
	nc, err := nats.Connect(url, nats.UserInfo("admin", "admin"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	for _, cfg := range []jetstream.StreamConfig{
		{Name: "FLEET_TARGETS", Subjects: []string{"fleet.device.*.target"}, MaxMsgsPerSubject: 1, AllowDirect: true},
		{Name: "FLEET_REPORTS", Subjects: []string{"fleet.device.*.state"}},
	} {
		if _, err := js.CreateOrUpdateStream(context.Background(), cfg); err != nil {
			t.Fatal(err)
		}
	}
	return admin{nc, js}
}

// events records what a connection tells its device.
type events struct {
	connects, disconnects atomic.Int64
	mu                    sync.Mutex
	msgs                  []string
	errs                  []error
	lastDisc              error
}

func (e *events) lastDisconnect() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.lastDisc
}

func (e *events) spec(url, password string) device.ConnSpec {
	return device.ConnSpec{
		URL: url, Name: "test " + uuid, User: uuid, Password: password, InboxPrefix: "_INBOX_" + uuid, Subject: targetSubj,
		OnMessage: func(data []byte) {
			e.mu.Lock()
			e.msgs = append(e.msgs, string(data))
			e.mu.Unlock()
		},
		OnConnect: func() { e.connects.Add(1) },
		OnDisconnect: func(err error) {
			e.mu.Lock()
			e.lastDisc = err
			e.mu.Unlock()
			e.disconnects.Add(1)
		},
		OnError: func(err error) {
			e.mu.Lock()
			e.errs = append(e.errs, err)
			e.mu.Unlock()
		},
	}
}

func (e *events) messages() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.msgs...)
}

func (e *events) errors() []error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]error(nil), e.errs...)
}

func connect(t *testing.T, spec device.ConnSpec, o lightnats.Options) *lightnats.Conn {
	t.Helper()
	c, err := lightnats.Connect(spec, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func request(t *testing.T, c *lightnats.Conn, subj string, hdr nats.Header, data []byte) *nats.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m, err := c.Request(ctx, subj, hdr, data)
	if err != nil {
		t.Fatalf("request %s: %v", subj, err)
	}
	return m
}

// TestConnectSubscribeDirectGetAndReport: with the device's own user and password the connection comes
// up, receives pushes on the target subject, reads the latest target with a JetStream direct get (404
// before there is one) and publishes a report that JetStream acknowledges, deduplicated by Nats-Msg-Id.
func TestConnectSubscribeDirectGetAndReport(t *testing.T) {
	t.Parallel()
	ns := startServer(t, 0, t.TempDir(), nil)
	adm := connectAdmin(t, ns.ClientURL())
	var ev events
	c := connect(t, ev.spec(ns.ClientURL(), key), lightnats.Options{})
	fleettest.Eventually(t, 5*time.Second, func() error {
		if !c.Connected() || ev.connects.Load() != 1 {
			return fmt.Errorf("connected %v, %d connects", c.Connected(), ev.connects.Load())
		}
		return nil
	})

	m := request(t, c, directGet, nil, nil)
	if st := m.Header.Get("Status"); st != "404" {
		t.Fatalf("direct get before any target: status %q, data %q", st, m.Data)
	}
	// The reply proves the subscriptions (sent before it) are in place: a push now arrives.
	if _, err := adm.js.Publish(context.Background(), targetSubj, []byte(`{"v":1}`)); err != nil {
		t.Fatal(err)
	}
	fleettest.Eventually(t, 5*time.Second, func() error {
		if got := ev.messages(); len(got) != 1 || got[0] != `{"v":1}` {
			return fmt.Errorf("messages %q", got)
		}
		return nil
	})
	m = request(t, c, directGet, nil, nil)
	if st := m.Header.Get("Status"); st != "" || string(m.Data) != `{"v":1}` || m.Header.Get("Nats-Subject") != targetSubj {
		t.Fatalf("direct get: status %q headers %v data %q", st, m.Header, m.Data)
	}

	var ack struct {
		Stream    string `json:"stream"`
		Seq       uint64 `json:"seq"`
		Duplicate bool   `json:"duplicate"`
	}
	for i, wantDup := range []bool{false, true} {
		m = request(t, c, stateSubj, nats.Header{"Nats-Msg-Id": {"report-1"}}, []byte(`{"state":1}`))
		if err := json.Unmarshal(m.Data, &ack); err != nil || ack.Stream != "FLEET_REPORTS" || ack.Seq != 1 || ack.Duplicate != wantDup {
			t.Fatalf("report %d: ack %s (%v)", i, m.Data, err)
		}
	}
	stored, err := adm.js.Stream(context.Background(), "FLEET_REPORTS")
	if err != nil {
		t.Fatal(err)
	}
	rm, err := stored.GetMsg(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	if string(rm.Data) != `{"state":1}` || rm.Header.Get("Nats-Msg-Id") != "report-1" {
		t.Fatalf("stored report %q headers %v", rm.Data, rm.Header)
	}
	if errs := ev.errors(); len(errs) != 0 {
		t.Fatalf("errors: %v", errs)
	}
}

// TestRequestErrors: no responders, a reply that never comes (the context ends), a subject the device
// may not publish to (the server's permissions violation reaches OnError), a closed connection.
func TestRequestErrors(t *testing.T) {
	t.Parallel()
	ns := startServer(t, 0, t.TempDir(), nil)
	adm := connectAdmin(t, ns.ClientURL())
	if _, err := adm.nc.Subscribe("slow.service", func(*nats.Msg) {}); err != nil {
		t.Fatal(err)
	}
	if err := adm.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	var ev events
	c := connect(t, ev.spec(ns.ClientURL(), key), lightnats.Options{})
	fleettest.Eventually(t, 5*time.Second, func() error {
		if !c.Connected() {
			return errors.New("not connected")
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Request(ctx, "nobody.home", nil, []byte("x")); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("no responders: %v", err)
	}
	short, cancelShort := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancelShort()
	if _, err := c.Request(short, "slow.service", nil, []byte("x")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("unanswered request: %v", err)
	}
	if _, err := c.Request(ctx, "not.mine", nil, []byte("x")); err == nil {
		t.Fatal("a request to a subject the device may not publish to was answered")
	}
	fleettest.Eventually(t, 5*time.Second, func() error {
		for _, err := range ev.errors() {
			if errors.Is(err, nats.ErrPermissionViolation) {
				return nil
			}
		}
		return fmt.Errorf("errors %v: no permissions violation", ev.errors())
	})
	if !c.Connected() {
		t.Fatal("a permissions violation dropped the connection")
	}
	c.Close()
	if c.Connected() {
		t.Fatal("connected after Close")
	}
	if _, err := c.Request(ctx, directGet, nil, nil); !errors.Is(err, nats.ErrConnectionClosed) {
		t.Fatalf("request after Close: %v", err)
	}
}

// TestRefusedSubscriptionIsReported: a device whose target subscription the server refuses learns it
// (OnError with a permissions violation), as the engine needs to keep polling over HTTP.
func TestRefusedSubscriptionIsReported(t *testing.T) {
	t.Parallel()
	ns := startServer(t, 0, t.TempDir(), nil)
	var ev events
	spec := ev.spec(ns.ClientURL(), key)
	spec.Subject = "fleet.device.someone-else.target"
	connect(t, spec, lightnats.Options{})
	fleettest.Eventually(t, 5*time.Second, func() error {
		for _, err := range ev.errors() {
			if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), "someone-else") {
				return nil
			}
		}
		return fmt.Errorf("errors %v", ev.errors())
	})
}

// dialCounter counts connection attempts and when they were made.
type dialCounter struct {
	mu    sync.Mutex
	times []time.Time
}

func (d *dialCounter) Dial(network, address string) (net.Conn, error) {
	d.mu.Lock()
	d.times = append(d.times, time.Now())
	d.mu.Unlock()
	return net.DialTimeout(network, address, 2*time.Second)
}

func (d *dialCounter) attempts() []time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]time.Time(nil), d.times...)
}

// TestWrongPasswordRetriesWithWaitAndJitter: a refused device is not connected, Connect does not fail
// (the agent keeps trying, as nats.go with IgnoreAuthErrorAbort), and attempts are spaced by at least
// the reconnect wait.
func TestWrongPasswordRetriesWithWaitAndJitter(t *testing.T) {
	t.Parallel()
	ns := startServer(t, 0, t.TempDir(), nil)
	var ev events
	var dials dialCounter
	c := connect(t, ev.spec(ns.ClientURL(), "wrong-key"), lightnats.Options{Dial: dials.Dial,
		ReconnectWait: 100 * time.Millisecond, ReconnectJitter: 50 * time.Millisecond})
	fleettest.Eventually(t, 10*time.Second, func() error {
		if n := len(dials.attempts()); n < 4 {
			return fmt.Errorf("%d attempts", n)
		}
		return nil
	})
	if c.Connected() || ev.connects.Load() != 0 {
		t.Fatalf("a wrong password connected (%d connects)", ev.connects.Load())
	}
	at := dials.attempts()
	for i := 1; i < len(at); i++ {
		if gap := at[i].Sub(at[i-1]); gap < 100*time.Millisecond {
			t.Fatalf("attempt %d came %s after the previous one, before the reconnect wait", i, gap)
		}
	}
	closed := make(chan struct{})
	go func() { c.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return")
	}
}

// TestReconnectsAfterServerRestart: the connection notices the server going away (requests fail at once
// rather than at their timeout), comes back when it returns on the same address, subscribes again and
// tells the device (OnConnect), so pushes and requests work again.
func TestReconnectsAfterServerRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ns := startServer(t, 0, dir, nil)
	port := ns.Addr().(*net.TCPAddr).Port
	url := ns.ClientURL()
	connectAdmin(t, url)
	var ev events
	c := connect(t, ev.spec(url, key), lightnats.Options{ReconnectWait: 50 * time.Millisecond, ReconnectJitter: 50 * time.Millisecond})
	fleettest.Eventually(t, 5*time.Second, func() error {
		if ev.connects.Load() != 1 {
			return errors.New("not connected")
		}
		return nil
	})
	request(t, c, directGet, nil, nil)

	ns.Shutdown()
	ns.WaitForShutdown()
	fleettest.Eventually(t, 5*time.Second, func() error {
		if c.Connected() || ev.disconnects.Load() != 1 {
			return fmt.Errorf("connected %v after the server stopped, %d disconnects", c.Connected(), ev.disconnects.Load())
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Request(ctx, directGet, nil, nil); !errors.Is(err, lightnats.ErrDisconnected) {
		t.Fatalf("request while the server is down: %v", err)
	}

	ns2 := startServer(t, port, dir, nil)
	adm := connectAdmin(t, ns2.ClientURL())
	fleettest.Eventually(t, 10*time.Second, func() error {
		if !c.Connected() || ev.connects.Load() != 2 {
			return fmt.Errorf("connected %v, %d connects", c.Connected(), ev.connects.Load())
		}
		return nil
	})
	request(t, c, directGet, nil, nil) // the subscriptions are in place after this reply
	if _, err := adm.js.Publish(context.Background(), targetSubj, []byte(`{"v":2}`)); err != nil {
		t.Fatal(err)
	}
	fleettest.Eventually(t, 5*time.Second, func() error {
		if got := ev.messages(); len(got) != 1 || got[0] != `{"v":2}` {
			return fmt.Errorf("messages after the restart %q", got)
		}
		return nil
	})
}

// TestAnswersServerPings: a server pinging every 50 ms drops a client that does not answer; this one
// stays connected.
func TestAnswersServerPings(t *testing.T) {
	t.Parallel()
	ns := startServer(t, 0, t.TempDir(), func(o *server.Options) { o.PingInterval = 50 * time.Millisecond; o.MaxPingsOut = 2 })
	var ev events
	c := connect(t, ev.spec(ns.ClientURL(), key), lightnats.Options{})
	fleettest.Eventually(t, 5*time.Second, func() error {
		if !c.Connected() {
			return errors.New("not connected")
		}
		return nil
	})
	time.Sleep(time.Second)
	if !c.Connected() || ev.disconnects.Load() != 0 || ev.connects.Load() != 1 {
		t.Fatalf("connected %v, %d connects, %d disconnects: server pings not answered", c.Connected(), ev.connects.Load(), ev.disconnects.Load())
	}
}

// TestSilentServerIsDroppedAfterUnansweredPings: a server that accepts the connection and then answers
// nothing (not even PING) is given up after MaxPingsOut pings, and the connection reconnects.
func TestSilentServerIsDroppedAfterUnansweredPings(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var accepted atomic.Int64
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go func() {
				defer conn.Close()
				fmt.Fprint(conn, `INFO {"server_id":"fake","headers":true,"max_payload":1048576}`+"\r\n")
				r := bufio.NewReader(conn)
				for range 2 { // CONNECT, PING
					if _, err := r.ReadString('\n'); err != nil {
						return
					}
				}
				fmt.Fprint(conn, "PONG\r\n")
				_, _ = io.Copy(io.Discard, r) // from now on nothing is answered, not even PING
			}()
		}
	}()
	var ev events
	c := connect(t, ev.spec("nats://"+ln.Addr().String(), key), lightnats.Options{PingInterval: 100 * time.Millisecond, MaxPingsOut: 2,
		ReconnectWait: 50 * time.Millisecond, ReconnectJitter: 10 * time.Millisecond})
	fleettest.Eventually(t, 5*time.Second, func() error {
		if ev.disconnects.Load() < 1 || accepted.Load() < 2 {
			return fmt.Errorf("%d disconnects, %d connections accepted", ev.disconnects.Load(), accepted.Load())
		}
		return nil
	})
	if err := ev.lastDisconnect(); !errors.Is(err, nats.ErrStaleConnection) {
		t.Fatalf("dropped with %v, want a stale connection", err)
	}
	_ = c
}

// TestUnsupportedURLsAreRefused: TLS and websocket urls are not this connection's; Connect says so with
// ErrUnsupported (the simulator then uses nats.go).
func TestUnsupportedURLsAreRefused(t *testing.T) {
	t.Parallel()
	for _, u := range []string{"tls://127.0.0.1:4222", "wss://127.0.0.1:443", "nats://u:p@127.0.0.1:4222"} {
		if _, err := lightnats.Connect(device.ConnSpec{URL: u, Subject: targetSubj, InboxPrefix: "_INBOX_x"}, lightnats.Options{}); !errors.Is(err, lightnats.ErrUnsupported) {
			t.Errorf("%s: %v", u, err)
		}
	}
}
