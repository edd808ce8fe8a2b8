package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"

	natsserver "github.com/nats-io/nats-server/v2/server"

	"github.com/fleetshift/fleetshift/agent/sim"
	"github.com/fleetshift/fleetshift/fleetshift/internal/bench"
	"github.com/fleetshift/fleetshift/fleetshift/internal/server"
	"github.com/fleetshift/fleetshift/shared/config"
	"github.com/fleetshift/fleetshift/shared/logging"
)

// runServer is the server-under-test child: all-in-one fleetshift configured from the environment the
// harness sets, announcing its URLs on stdout and stopping when stdin closes.
func runServer(ctx context.Context) error {
	if err := bench.PinFromEnv(); err != nil {
		return err
	}
	if path := os.Getenv(bench.EnvCPUProfile); path != "" {
		f, err := os.Create(path)
		if err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}
	cfg, err := config.FromEnv()
	if err != nil {
		return err
	}
	log := logging.New(os.Stderr, cfg.LogLevel, cfg.LogFormat)
	srv, err := server.Start(ctx, server.Options{Config: cfg, Log: log, EmbedNATS: true})
	if err != nil {
		return err
	}
	defer srv.Shutdown()
	if err := bench.PrintHello(bench.ServerHello{HTTPURL: srv.HTTPURL, NATSURL: srv.NATSURL, NATS: natsserver.VERSION}); err != nil {
		return err
	}
	stdin := make(chan struct{})
	go func() { bench.WaitStdinClosed(); close(stdin) }()
	select {
	case <-ctx.Done():
	case <-stdin:
	case <-srv.Done():
	}
	srv.Shutdown()
	return srv.Err()
}

// runSim is the device simulator child (agent/sim), running until stdin closes.
func runSim(ctx context.Context, args []string) error {
	if err := bench.PinFromEnv(); err != nil {
		return err
	}
	fs := flag.NewFlagSet("sim", flag.ContinueOnError)
	var a bench.SimArgs
	fs.StringVar(&a.Server, "server", "", "fleetshift HTTP url")
	fs.StringVar(&a.ProvisioningKey, "key", "", "provisioning key")
	fs.StringVar(&a.AdminToken, "admin", "", "admin token")
	fs.StringVar(&a.Fleet, "fleet", "", "fleet id")
	fs.StringVar(&a.Image, "image", "", "comma-separated images the devices start on")
	fs.StringVar(&a.Transport, "transport", sim.TransportNATS, "nats or http")
	fs.IntVar(&a.Devices, "devices", 0, "number of devices")
	fs.StringVar(&a.Pull, "pull", "10ms-50ms", "simulated pull time")
	if err := fs.Parse(args); err != nil {
		return err
	}
	sim.SetGC() // as `fleetshift-agent sim` does
	lo, hi, err := sim.ParsePullTime(a.Pull)
	if err != nil {
		return err
	}
	s, err := sim.New(sim.Config{Server: a.Server, ProvisioningKey: a.ProvisioningKey, AdminToken: a.AdminToken,
		Fleet: a.Fleet, Devices: a.Devices, Transport: a.Transport, Images: strings.Split(a.Image, ","),
		PullMin: lo, PullMax: hi, Seed: 1, NamePrefix: "sim", Log: logging.New(os.Stderr, "warn", "console")})
	if err != nil {
		return err
	}
	if err := bench.PrintHello(map[string]any{"devices": a.Devices}); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		bench.WaitStdinClosed()
		if path := os.Getenv(bench.EnvSimHeapProfile); path != "" {
			if err := writeHeapProfile(path, a.Devices); err != nil {
				fmt.Fprintln(os.Stderr, err)
			}
		}
		cancel()
	}()
	return s.Run(ctx)
}

// writeHeapProfile writes the simulator's heap profile while its devices still run, and one line of
// where its memory is.
func writeHeapProfile(path string, devices int) error {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	fmt.Fprintf(os.Stderr, "%d devices: %d goroutines, heap in use %d MiB, stacks %d MiB, runtime total %d MiB\n",
		devices, runtime.NumGoroutine(), ms.HeapInuse>>20, ms.StackInuse>>20, ms.Sys>>20)
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("heap profile: %w", err)
	}
	if err := pprof.WriteHeapProfile(f); err != nil {
		f.Close()
		return fmt.Errorf("heap profile: %w", err)
	}
	return f.Close()
}
