package device_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/fleetshift/fleetshift/agent/client"
	"github.com/fleetshift/fleetshift/agent/device"
	"github.com/fleetshift/fleetshift/agent/internal/fleettest"
	"github.com/fleetshift/fleetshift/agent/sim/lightnats"
	"github.com/fleetshift/fleetshift/agent/wire"
)

// memRuntime runs targets in memory and remembers every apply.
type memRuntime struct {
	mu      sync.Mutex
	applied []int64
	apps    map[string]wire.App
}

func (m *memRuntime) Apply(_ context.Context, t wire.DeviceTarget) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.applied = append(m.applied, t.Version)
	m.apps = t.Apps
	return nil
}

func (m *memRuntime) State(context.Context) (map[string]wire.ReportedApp, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]wire.ReportedApp{}
	for id, app := range m.apps {
		ra := wire.ReportedApp{AppName: app.AppName}
		for _, s := range app.Services {
			ra.Services = append(ra.Services, wire.ReportedService{ServiceName: s.ServiceName, ImageName: s.Image(), Status: "running"})
		}
		out[id] = ra
	}
	return out, nil
}

func (m *memRuntime) Applied() []int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.applied)
}

type setup struct {
	srv   *fleettest.Server
	uuid  string
	key   string
	rt    *memRuntime
	agent *device.Agent
}

func start(t *testing.T, srv *fleettest.Server, mutate func(*device.Config)) *setup {
	t.Helper()
	uuid, key := srv.AddDevice("dev")
	return startAs(t, srv, uuid, key, mutate)
}

func startAs(t *testing.T, srv *fleettest.Server, uuid, key string, mutate func(*device.Config)) *setup {
	t.Helper()
	api, err := client.New(srv.HTTP.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	rt := &memRuntime{}
	cfg := device.Config{
		Identity:     client.Identity{UUID: uuid, APIKey: key, NATSURL: srv.NATSURL},
		HTTP:         api,
		Runtime:      rt,
		PollInterval: 50 * time.Millisecond,
		Heartbeat:    time.Hour,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	a, err := device.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent run: %v", err)
		}
	})
	return &setup{srv: srv, uuid: uuid, key: key, rt: rt, agent: a}
}

func reportedImage(srv *fleettest.Server, uuid string, version int64, image string) error {
	r, ok := srv.LastReport(uuid)
	if !ok {
		return errors.New("no report yet")
	}
	if r.Report.Version != version {
		return fmt.Errorf("last report version %d, want %d", r.Report.Version, version)
	}
	got := r.Report.Apps["1"].Services
	if len(got) == 0 || got[0].ImageName != image {
		return fmt.Errorf("last report services %+v, want image %s", got, image)
	}
	return nil
}

func natsOnly(c *device.Config) { c.HTTP = nil }

// natsClients are the NATS connections the engine is tested over: the agent's (nats.go) and the
// simulator's (lightnats), which must behave the same towards it.
var natsClients = []string{"nats.go", "light"}

// dialer opens the TCP connections of a test's NATS client (*dialLog, *stallDialer).
type dialer interface {
	Dial(network, address string) (net.Conn, error)
}

// useClient makes c connect with the named client, through dial when it is not nil.
func useClient(c *device.Config, name string, dial dialer) {
	if name == "light" {
		o := lightnats.Options{}
		if dial != nil {
			o.Dial = dial.Dial
		}
		c.Dial = lightnats.Dialer(o)
		return
	}
	if dial != nil {
		c.NATSOptions = append(c.NATSOptions, nats.SetCustomDialer(dial))
	}
}

func TestNATSPushAppliesAndStaleOrDuplicateChangesNothing(t *testing.T) {
	t.Parallel()
	for _, client := range natsClients {
		t.Run(client, func(t *testing.T) {
			t.Parallel()
			testNATSPush(t, client)
		})
	}
}

func testNATSPush(t *testing.T, client string) {
	srv := fleettest.New(t, fleettest.Options{})
	s := start(t, srv, func(c *device.Config) { natsOnly(c); useClient(c, client, nil) })
	// Wait until the device has read its (empty) latest target, i.e. its subscription is live.
	fleettest.Eventually(t, 10*time.Second, func() error {
		if _, ok := srv.LastReport(s.uuid); !ok {
			return errors.New("no startup report")
		}
		return nil
	})
	v1 := srv.SetTarget(s.uuid, fleettest.Images("acme/app:1.0"))
	fleettest.Eventually(t, 10*time.Second, func() error { return reportedImage(srv, s.uuid, 1, "acme/app:1.0") })
	v2 := srv.SetTarget(s.uuid, fleettest.Images("acme/app:2.0"))
	fleettest.Eventually(t, 10*time.Second, func() error { return reportedImage(srv, s.uuid, 2, "acme/app:2.0") })
	if r, _ := srv.LastReport(s.uuid); r.Via != "nats" {
		t.Fatalf("report went over %s, want nats", r.Via)
	}

	// A redelivered v2 and a stale v1 arrive; then a marker v3 proves both were processed before it.
	srv.Publish(s.uuid, v2)
	srv.Publish(s.uuid, v1)
	fleettest.Eventually(t, 10*time.Second, func() error {
		if st := s.agent.Stats(); st.Ignored < 2 {
			return fmt.Errorf("ignored %d targets, want 2", st.Ignored)
		}
		return nil
	})
	srv.SetTarget(s.uuid, fleettest.Images("acme/app:3.0"))
	fleettest.Eventually(t, 10*time.Second, func() error { return reportedImage(srv, s.uuid, 3, "acme/app:3.0") })
	if got := s.rt.Applied(); !slices.Equal(got, []int64{1, 2, 3}) {
		t.Fatalf("applied versions %v, want [1 2 3]: a stale or duplicate target was applied", got)
	}
}

func TestOfflineDeviceConvergesOnConnectFromJetStream(t *testing.T) {
	t.Parallel()
	for _, client := range natsClients {
		t.Run(client, func(t *testing.T) {
			t.Parallel()
			srv := fleettest.New(t, fleettest.Options{})
			uuid, key := srv.AddDevice("offline")
			// Dispatched while the device is off: three versions, only the latest is kept.
			srv.SetTarget(uuid, fleettest.Images("acme/app:1.0"))
			srv.SetTarget(uuid, fleettest.Images("acme/app:2.0"))
			// No HTTP: the target can only come from JetStream.
			s := startAs(t, srv, uuid, key, func(c *device.Config) { natsOnly(c); useClient(c, client, nil) })
			fleettest.Eventually(t, 10*time.Second, func() error { return reportedImage(srv, uuid, 2, "acme/app:2.0") })
			if got := s.rt.Applied(); !slices.Equal(got, []int64{2}) {
				t.Fatalf("applied %v, want only the latest [2]", got)
			}
			if r, _ := srv.LastReport(uuid); r.Via != "nats" {
				t.Fatalf("report went over %s, want nats", r.Via)
			}
		})
	}
}

func deadNATSURL(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "nats://" + addr
}

func TestHTTPFallbackConvergesWhenNATSUnreachable(t *testing.T) {
	t.Parallel()
	srv := fleettest.New(t, fleettest.Options{NoNATS: true})
	s := start(t, srv, func(c *device.Config) { c.NATSURL = deadNATSURL(t) })
	srv.SetTarget(s.uuid, fleettest.Images("acme/app:1.0"))
	fleettest.Eventually(t, 10*time.Second, func() error { return reportedImage(srv, s.uuid, 1, "acme/app:1.0") })
	srv.SetTarget(s.uuid, fleettest.Images("acme/app:2.0"))
	fleettest.Eventually(t, 10*time.Second, func() error { return reportedImage(srv, s.uuid, 2, "acme/app:2.0") })
	fleettest.Eventually(t, 10*time.Second, func() error {
		if srv.NotModified.Load() == 0 {
			return errors.New("no poll was answered 304: If-None-Match not sent")
		}
		return nil
	})
	if r, _ := srv.LastReport(s.uuid); r.Via != "http" {
		t.Fatalf("report over %s, want http", r.Via)
	}
	if got := s.rt.Applied(); !slices.Equal(got, []int64{1, 2}) {
		t.Fatalf("applied %v, want [1 2]", got)
	}
}

func TestNATSAndHTTPConvergeOnTheSameVersion(t *testing.T) {
	t.Parallel()
	srv := fleettest.New(t, fleettest.Options{})
	s := start(t, srv, nil) // both paths live: each target arrives twice
	for i := 1; i <= 3; i++ {
		srv.SetTarget(s.uuid, fleettest.Images(fmt.Sprintf("acme/app:%d.0", i)))
		fleettest.Eventually(t, 10*time.Second, func() error { return reportedImage(srv, s.uuid, int64(i), fmt.Sprintf("acme/app:%d.0", i)) })
	}
	if got := s.rt.Applied(); !slices.Equal(got, []int64{1, 2, 3}) {
		t.Fatalf("applied %v, want [1 2 3]", got)
	}
}

func TestUnsentReportsKeptAndNewestSentWhenLinkReturns(t *testing.T) {
	t.Parallel()
	srv := fleettest.New(t, fleettest.Options{NoNATS: true})
	srv.HTTPDown.Store(true)
	s := start(t, srv, func(c *device.Config) { c.DisableNATS = true })
	s.agent.Offer(wire.DeviceTarget{Version: 1, Apps: fleettest.Images("acme/app:1.0")})
	fleettest.Eventually(t, 10*time.Second, func() error {
		if st := s.agent.Stats(); st.Version != 1 || !st.ReportPending {
			return fmt.Errorf("stats %+v: want version 1 with a pending report", st)
		}
		return nil
	})
	s.agent.Offer(wire.DeviceTarget{Version: 2, Apps: fleettest.Images("acme/app:2.0")})
	fleettest.Eventually(t, 10*time.Second, func() error {
		if st := s.agent.Stats(); st.Version != 2 || !st.ReportPending {
			return fmt.Errorf("stats %+v: want version 2 with a pending report", st)
		}
		return nil
	})
	if n := len(srv.Reports(s.uuid)); n != 0 {
		t.Fatalf("%d reports got through while the server was down", n)
	}
	srv.HTTPDown.Store(false)
	fleettest.Eventually(t, 10*time.Second, func() error { return reportedImage(srv, s.uuid, 2, "acme/app:2.0") })
	for _, r := range srv.Reports(s.uuid) {
		if r.Report.Version < 2 {
			t.Fatalf("an outdated report (version %d) was sent after the link returned", r.Report.Version)
		}
	}
}

func TestHealthChecksGoIntoTheReport(t *testing.T) {
	t.Parallel()
	srv := fleettest.New(t, fleettest.Options{NoNATS: true})
	s := start(t, srv, func(c *device.Config) { c.DisableNATS = true })
	apps := fleettest.Images("acme/good:1", "acme/bad:1")
	app := apps["1"]
	app.Services[0].HealthCheck = []byte(`{"type":"command","command":["true"],"interval_seconds":0.01}`)
	app.Services[1].HealthCheck = []byte(`{"type":"command","command":["false"],"retries":2,"interval_seconds":0.01}`)
	apps["1"] = app
	srv.SetTarget(s.uuid, apps)
	fleettest.Eventually(t, 10*time.Second, func() error {
		r, ok := srv.LastReport(s.uuid)
		if !ok || len(r.Report.Apps["1"].Services) != 2 {
			return errors.New("no report with both services")
		}
		svcs := r.Report.Apps["1"].Services
		if svcs[0].Health == nil || svcs[0].Health.Status != wire.Healthy {
			return fmt.Errorf("good service health %+v", svcs[0].Health)
		}
		if svcs[1].Health == nil || svcs[1].Health.Status != wire.Unhealthy {
			return fmt.Errorf("bad service health %+v", svcs[1].Health)
		}
		return nil
	})
}

func TestAppliedVersionSurvivesRestart(t *testing.T) {
	t.Parallel()
	srv := fleettest.New(t, fleettest.Options{NoNATS: true})
	uuid, key := srv.AddDevice("restart")
	dir := t.TempDir()
	srv.SetTarget(uuid, fleettest.Images("acme/app:1.0"))
	{
		ctx, cancel := context.WithCancel(context.Background())
		api, _ := client.New(srv.HTTP.URL, nil)
		rt := &memRuntime{}
		a, err := device.New(device.Config{Identity: client.Identity{UUID: uuid, APIKey: key}, HTTP: api, Runtime: rt, StateDir: dir, PollInterval: 20 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- a.Run(ctx) }()
		fleettest.Eventually(t, 10*time.Second, func() error { return reportedImage(srv, uuid, 1, "acme/app:1.0") })
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	s := startAs(t, srv, uuid, key, func(c *device.Config) { c.StateDir = dir; c.DisableNATS = true })
	before := srv.Gets.Load()
	fleettest.Eventually(t, 10*time.Second, func() error {
		if srv.Gets.Load() < before+3 {
			return errors.New("waiting for polls")
		}
		return nil
	})
	if got := s.rt.Applied(); len(got) != 0 {
		t.Fatalf("restarted agent re-applied %v; version 1 was already applied", got)
	}
}

func TestProvisionRegistersOnceAndKeepsIdentityPrivate(t *testing.T) {
	t.Parallel()
	srv := fleettest.New(t, fleettest.Options{NoNATS: true})
	api, _ := client.New(srv.HTTP.URL, nil)
	dir := filepath.Join(t.TempDir(), "state")
	ctx := context.Background()
	if _, err := device.Provision(ctx, dir, api, "wrong", "d", nil); !client.IsStatus(err, 401) {
		t.Fatalf("wrong provisioning key: err %v, want 401", err)
	}
	id, err := device.Provision(ctx, dir, api, fleettest.ProvisioningKey, "d", []string{"x"})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, device.IdentityFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("identity file mode %v, want 0600", fi.Mode().Perm())
	}
	again, err := device.Provision(ctx, dir, api, "", "d", nil)
	if err != nil {
		t.Fatal(err)
	}
	if again != id || srv.Registrations.Load() != 1 {
		t.Fatalf("second start registered again (%d registrations) or changed identity", srv.Registrations.Load())
	}
}

func TestPollBacksOffExponentiallyOnErrors(t *testing.T) {
	t.Parallel()
	srv := fleettest.New(t, fleettest.Options{NoNATS: true})
	srv.HTTPDown.Store(true)
	began := time.Now()
	s := start(t, srv, func(c *device.Config) {
		c.DisableNATS = true
		c.PollInterval = 10 * time.Millisecond
		c.MaxBackoff = 160 * time.Millisecond
	})
	fleettest.Eventually(t, 10*time.Second, func() error {
		if n := s.agent.Stats().Polls; n < 7 {
			return fmt.Errorf("%d polls", n)
		}
		return nil
	})
	// Waits after failures 1..6: 20, 40, 80, 160, 160, 160 ms (±20% jitter) = at least 496ms; without
	// backoff the 7 polls would take about 60ms.
	if took := time.Since(began); took < 490*time.Millisecond {
		t.Fatalf("7 failing polls took %s: no exponential backoff", took)
	}
	// The server returns: polling converges.
	srv.HTTPDown.Store(false)
	srv.SetTarget(s.uuid, fleettest.Images("acme/app:1.0"))
	fleettest.Eventually(t, 10*time.Second, func() error { return reportedImage(srv, s.uuid, 1, "acme/app:1.0") })
}

func TestHeartbeatReportsWithoutChanges(t *testing.T) {
	t.Parallel()
	srv := fleettest.New(t, fleettest.Options{NoNATS: true})
	s := start(t, srv, func(c *device.Config) {
		c.DisableNATS = true
		c.PollInterval = time.Hour
		c.Heartbeat = 10 * time.Millisecond
	})
	fleettest.Eventually(t, 10*time.Second, func() error {
		if n := len(srv.Reports(s.uuid)); n < 5 {
			return fmt.Errorf("%d reports", n)
		}
		return nil
	})
}
