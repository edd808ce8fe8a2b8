package sim_test

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetshift/fleetshift/agent/internal/fleettest"
	"github.com/fleetshift/fleetshift/agent/sim"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startSim(t testing.TB, srv *fleettest.Server, mutate func(*sim.Config)) *sim.Sim {
	t.Helper()
	cfg := sim.Config{
		Server:          srv.HTTP.URL,
		ProvisioningKey: fleettest.ProvisioningKey,
		AdminToken:      fleettest.AdminToken,
		Devices:         20,
		Transport:       sim.TransportHTTP,
		Images:          []string{"acme/app:1.0"},
		PullMin:         time.Millisecond,
		PullMax:         20 * time.Millisecond,
		Seed:            7,
		PollInterval:    50 * time.Millisecond,
		Heartbeat:       time.Hour,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	s, err := sim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("sim run: %v", err)
		}
	})
	return s
}

// allOn waits until every device runs images, none updating, and the server got that report.
func allOn(t testing.TB, srv *fleettest.Server, s *sim.Sim, n int, images string) {
	t.Helper()
	fleettest.Eventually(t, 30*time.Second, func() error {
		c := s.Counters()
		if c.ByImage[images] != n || c.Updating != 0 {
			return fmt.Errorf("counters %s", c)
		}
		for _, d := range s.Devices() {
			r, ok := srv.LastReport(d.UUID)
			var got []string
			for _, svc := range r.Report.Apps["1"].Services {
				got = append(got, svc.ImageName)
			}
			if !ok || strings.Join(got, ",") != images {
				return fmt.Errorf("device %d: server has no report of %s: %d reports, last %+v, stats %+v", d.Index, images, len(srv.Reports(d.UUID)), r, d.Status)
			}
		}
		return nil
	})
}

func setAll(srv *fleettest.Server, s *sim.Sim, images ...string) {
	for _, d := range s.Devices() {
		srv.SetTarget(d.UUID, sim.TargetApps(images))
	}
}

func failedIndexes(s *sim.Sim, srv *fleettest.Server) []int {
	var out []int
	for _, d := range s.Devices() {
		r, _ := srv.LastReport(d.UUID)
		svc := r.Report.Apps["1"].Services[0]
		if svc.Status != "running" || (svc.Health != nil && svc.Health.Status == "unhealthy") {
			out = append(out, d.Index)
		}
	}
	slices.Sort(out)
	return out
}

func rollout(t *testing.T, seed uint64, n int) []int {
	t.Helper()
	srv := fleettest.New(t, fleettest.Options{NoNATS: true})
	s := startSim(t, srv, func(c *sim.Config) {
		c.Devices = n
		c.Seed = seed
		c.FailRates = []sim.Rate{{Glob: "acme/app:2.*", P: 0.3}}
	})
	allOn(t, srv, s, n, "acme/app:1.0")
	if c := s.Counters(); c.Healthy != n {
		t.Fatalf("before the update: %s", c)
	}
	setAll(srv, s, "acme/app:2.0")
	allOn(t, srv, s, n, "acme/app:2.0")
	failed := failedIndexes(s, srv)
	if c := s.Counters(); c.Failed != len(failed) || c.Healthy != n-len(failed) {
		t.Fatalf("counters %s disagree with the reports (%d failed)", c, len(failed))
	}
	// Fails predicts exactly these devices (what the chaos harness relies on).
	var predicted []int
	for i := range n {
		if sim.Fails([]sim.Rate{{Glob: "acme/app:2.*", P: 0.3}}, seed, i, "acme/app:2.0") {
			predicted = append(predicted, i)
		}
	}
	if !slices.Equal(failed, predicted) {
		t.Fatalf("sim.Fails predicts %v, the devices failed %v", predicted, failed)
	}
	// Rolling back to the old image makes them healthy again.
	setAll(srv, s, "acme/app:1.0")
	allOn(t, srv, s, n, "acme/app:1.0")
	if c := s.Counters(); c.Healthy != n || len(failedIndexes(s, srv)) != 0 {
		t.Fatalf("after rollback: %s", c)
	}
	return failed
}

func TestFailRateIsAboutRightAndReproducible(t *testing.T) {
	t.Parallel()
	const n = 200
	a := rollout(t, 42, n)
	if len(a) < 40 || len(a) > 80 {
		t.Fatalf("%d of %d failed with fail rate 0.3", len(a), n)
	}
	b := rollout(t, 42, n)
	if !slices.Equal(a, b) {
		t.Fatalf("same seed, different failures:\n%v\n%v", a, b)
	}
	c := rollout(t, 43, n)
	if slices.Equal(a, c) {
		t.Fatal("a different seed failed exactly the same devices")
	}
}

func TestNATSTransportWithFleetDefault(t *testing.T) {
	t.Parallel()
	for _, client := range []string{sim.NATSClientLight, sim.NATSClientGo} {
		t.Run(client, func(t *testing.T) {
			t.Parallel()
			testNATSTransport(t, client)
		})
	}
}

func testNATSTransport(t *testing.T, client string) {
	srv := fleettest.New(t, fleettest.Options{})
	var summary syncBuf
	s := startSim(t, srv, func(c *sim.Config) {
		c.Transport = sim.TransportNATS
		c.NATSClient = client
		c.Devices = 15
		c.PollInterval = time.Hour // NATS must do it alone
		c.Summary = &summary
		c.SummaryEvery = 20 * time.Millisecond
	})
	allOn(t, srv, s, 15, "acme/app:1.0")
	setAll(srv, s, "acme/app:2.0", "acme/sidecar:1")
	allOn(t, srv, s, 15, "acme/app:2.0,acme/sidecar:1")
	for _, d := range s.Devices() {
		if r, _ := srv.LastReport(d.UUID); r.Via != "nats" {
			t.Fatalf("device %d reported over %s", d.Index, r.Via)
		}
		if d.Status.Polls != 0 {
			t.Fatalf("device %d polled HTTP %d times with NATS up", d.Index, d.Status.Polls)
		}
	}
	fleettest.Eventually(t, 10*time.Second, func() error {
		if !strings.Contains(summary.String(), "acme/app:2.0,acme/sidecar:1=15") {
			return fmt.Errorf("summary so far: %q", summary.String())
		}
		return nil
	})
}

func TestSilentDevicesNeverReportAgain(t *testing.T) {
	t.Parallel()
	srv := fleettest.New(t, fleettest.Options{NoNATS: true})
	s := startSim(t, srv, func(c *sim.Config) {
		c.Devices = 10
		c.SilentRates = []sim.Rate{{Glob: "acme/app:2.*", P: 1}}
	})
	allOn(t, srv, s, 10, "acme/app:1.0")
	setAll(srv, s, "acme/app:2.0")
	fleettest.Eventually(t, 10*time.Second, func() error {
		if c := s.Counters(); c.Silent != 10 || c.ByImage["acme/app:2.0"] != 10 {
			return fmt.Errorf("counters %s", c)
		}
		return nil
	})
	for _, d := range s.Devices() {
		r, _ := srv.LastReport(d.UUID)
		if got := r.Report.Apps["1"].Services[0].ImageName; got != "acme/app:1.0" {
			t.Fatalf("silent device %d reported %s", d.Index, got)
		}
	}
}

func TestDevicesReusedFromStateDir(t *testing.T) {
	t.Parallel()
	srv := fleettest.New(t, fleettest.Options{NoNATS: true})
	dir := t.TempDir()
	func() {
		s := startSim(t, srv, func(c *sim.Config) { c.Devices = 5; c.StateDir = dir })
		allOn(t, srv, s, 5, "acme/app:1.0")
	}()
	s := startSim(t, srv, func(c *sim.Config) { c.Devices = 5; c.StateDir = dir })
	allOn(t, srv, s, 5, "acme/app:1.0")
	if n := srv.Registrations.Load(); n != 5 {
		t.Fatalf("%d registrations, want 5 (identities reused)", n)
	}
}

func TestParsers(t *testing.T) {
	t.Parallel()
	r, err := sim.ParseRate("acme/app:2.*=0.3")
	if err != nil || r.Glob != "acme/app:2.*" || r.P != 0.3 {
		t.Fatalf("ParseRate: %+v %v", r, err)
	}
	for _, bad := range []string{"acme", "x=2", "=0.1", "[=0.1"} {
		if _, err := sim.ParseRate(bad); err == nil {
			t.Errorf("ParseRate(%q) accepted", bad)
		}
	}
	if _, err := sim.New(sim.Config{Server: "http://x", ProvisioningKey: "k", Devices: 1, NATSClient: "grpc"}); err == nil || !strings.Contains(err.Error(), "nats client") {
		t.Errorf("an unknown NATS client: %v", err)
	}
	lo, hi, err := sim.ParsePullTime("200ms-2s")
	if err != nil || lo != 200*time.Millisecond || hi != 2*time.Second {
		t.Fatalf("ParsePullTime: %v %v %v", lo, hi, err)
	}
	if _, _, err := sim.ParsePullTime("2s-1s"); err == nil {
		t.Error("inverted range accepted")
	}
}

// BenchmarkRollout measures how long a simulated fleet takes to follow a new image after its targets
// change (SIM_DEVICES devices, default 1000; SIM_TRANSPORT nats or http, default http). Run with
// -benchtime=1x; `SIM_DEVICES=10000 go test -run x -bench Rollout -benchtime=1x ./sim/` is the
// 10,000-device check.
func BenchmarkRollout(b *testing.B) {
	n, _ := strconv.Atoi(os.Getenv("SIM_DEVICES"))
	n = cmp.Or(n, 1000)
	tr := cmp.Or(os.Getenv("SIM_TRANSPORT"), sim.TransportHTTP)
	for i := range b.N {
		b.StopTimer()
		srv := fleettest.New(b, fleettest.Options{NoNATS: tr != sim.TransportNATS})
		s := startSim(b, srv, func(c *sim.Config) {
			c.Devices = n
			c.Transport = tr
			c.Seed = uint64(i)
			c.PollInterval = 10 * time.Second
			c.Heartbeat = 30 * time.Second
			c.PullMin, c.PullMax = 200*time.Millisecond, 2*time.Second
		})
		allOn(b, srv, s, n, "acme/app:1.0")
		b.StartTimer()
		start := time.Now()
		setAll(srv, s, "acme/app:2.0")
		allOn(b, srv, s, n, "acme/app:2.0")
		b.ReportMetric(time.Since(start).Seconds(), "s/rollout")
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		b.ReportMetric(float64(ms.Sys>>20), "MB-sys")
	}
}
