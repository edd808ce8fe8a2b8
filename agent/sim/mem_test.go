package sim

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleetshift/fleetshift/agent/client"
	"github.com/fleetshift/fleetshift/agent/wire"
)

// envNATSChild makes this test binary a NATS server (see TestMain) instead of running the tests.
const envNATSChild = "SIM_TEST_NATS_SERVER"

func TestMain(m *testing.M) {
	if os.Getenv(envNATSChild) == "1" {
		if err := natsChild(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// natsChild runs a JetStream server with the targets and reports streams (no auth), prints its url and
// serves until stdin closes.
func natsChild() error {
	dir, err := os.MkdirTemp("", "sim-nats-child-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true})
	if err != nil {
		return err
	}
	ns.Start()
	defer ns.Shutdown()
	if !ns.ReadyForConnections(10 * time.Second) {
		return fmt.Errorf("nats not ready")
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	for _, cfg := range []jetstream.StreamConfig{
		{Name: "FLEET_TARGETS", Subjects: []string{"fleet.device.*.target"}, MaxMsgsPerSubject: 1, AllowDirect: true, Storage: jetstream.MemoryStorage},
		{Name: "FLEET_REPORTS", Subjects: []string{"fleet.device.*.state"}, Storage: jetstream.MemoryStorage},
	} {
		if _, err := js.CreateOrUpdateStream(context.Background(), cfg); err != nil {
			return err
		}
	}
	fmt.Println(ns.ClientURL())
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}

// startNATSChild runs natsChild in a child process and returns its url.
func startNATSChild(t *testing.T) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envNATSChild+"=1")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("nats child: %v", err)
	}
	return strings.TrimSpace(line)
}

// liveBytes is this process's heap in use plus goroutine stacks, after collecting twice (stacks shrink
// at a collection).
func liveBytes() (uint64, int) {
	var ms runtime.MemStats
	for range 3 {
		runtime.GC()
	}
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc + ms.StackInuse, runtime.NumGoroutine()
}

// measureDevices starts n simulated NATS devices with natsClient against url, has each apply and report a
// target, and returns the heap and stack bytes and goroutines each costs in this process.
func measureDevices(t *testing.T, url, natsClient string, n int) (bytesPerDevice, goroutinesPerDevice float64) {
	t.Helper()
	s, err := New(Config{Server: "http://127.0.0.1:9", ProvisioningKey: "unused", Devices: n, NATSURL: url, NATSClient: natsClient,
		PollInterval: time.Hour, Heartbeat: time.Hour, PullMin: time.Millisecond, PullMax: time.Millisecond, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	before, g0 := liveBytes()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	for i := range n {
		d, err := s.newDevice(i, client.Identity{UUID: fmt.Sprintf("%s-%08d", strings.ReplaceAll(natsClient, ".", ""), i), APIKey: "key"})
		if err != nil {
			t.Fatal(err)
		}
		s.start(ctx, &wg, d)
	}
	waitDevices(t, s, func(d Device) bool { return d.Status.ReportsSent >= 1 })
	for _, d := range s.Devices() {
		b, err := json.Marshal(wire.Target{d.UUID: {Apps: TargetApps([]string{"acme/app:1.0"}), Config: json.RawMessage(`{}`), Version: 1}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := js.Publish(ctx, "fleet.device."+d.UUID+".target", b); err != nil {
			t.Fatal(err)
		}
	}
	waitDevices(t, s, func(d Device) bool {
		return d.Images == "acme/app:1.0" && d.Status.Version == 1 && d.Status.ReportsSent >= 2 && !d.Status.ReportPending
	})
	if c := s.Counters(); c.Updating != 0 {
		t.Fatalf("still updating: %s", c)
	}
	after, g1 := liveBytes()
	return float64(int64(after)-int64(before)) / float64(n), float64(g1-g0) / float64(n)
}

func waitDevices(t *testing.T, s *Sim, ok func(Device) bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		var bad *Device
		for _, d := range s.Devices() {
			if !ok(d) {
				bad = &d
				break
			}
		}
		if bad == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("device %d not there within a minute: %+v", bad.Index, *bad)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// maxLightBytesPerDevice bounds a simulated NATS device's heap and stacks in the simulator process:
// about 17 KiB measured (9 of heap, 8 of stacks: 4 KiB each for the engine's and the connection's
// goroutine), where the same device over nats.go takes about 77 KiB.
const maxLightBytesPerDevice = 32 << 10

// TestSimulatedDeviceMemory guards the simulator's memory per device: the real engine over the light
// connection, its target applied and reported, stays under maxLightBytesPerDevice of heap and stacks
// and two goroutines (the engine's and the connection's), and under half the same device over nats.go. The NATS server runs in a child process, so only the devices are counted.
func TestSimulatedDeviceMemory(t *testing.T) {
	url := startNATSChild(t)
	const n = 300
	light, lightG := measureDevices(t, url, NATSClientLight, n)
	full, fullG := measureDevices(t, url, NATSClientGo, n)
	t.Logf("per device: light %.1f KiB, %.2f goroutines; nats.go %.1f KiB, %.2f goroutines", light/1024, lightG, full/1024, fullG)
	if light > maxLightBytesPerDevice {
		t.Errorf("a simulated device costs %.1f KiB of heap and stacks, bound %d KiB", light/1024, maxLightBytesPerDevice>>10)
	}
	if lightG > 2.05 { // the margin: a goroutine or two of the test's own
		t.Errorf("a simulated device keeps %.2f goroutines, want at most 2", lightG)
	}
	if light*2 > full {
		t.Errorf("light device %.1f KiB is not well below nats.go's %.1f KiB", light/1024, full/1024)
	}
}

// TestSetGCUnlessGOGCIsSet: a simulator process collects at GCPercent, unless GOGC says otherwise.
func TestSetGCUnlessGOGCIsSet(t *testing.T) {
	prev := debug.SetGCPercent(100)
	defer debug.SetGCPercent(prev)
	t.Setenv("GOGC", "")
	SetGC()
	if got := debug.SetGCPercent(100); got != GCPercent {
		t.Fatalf("GC percent %d, want %d", got, GCPercent)
	}
	t.Setenv("GOGC", "100")
	SetGC()
	if got := debug.SetGCPercent(100); got != 100 {
		t.Fatalf("GOGC=100 set, GC percent changed to %d", got)
	}
}
