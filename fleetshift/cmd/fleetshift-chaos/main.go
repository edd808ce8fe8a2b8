// Command fleetshift-chaos is fleetshift's fault-injection harness (docs/reliability.md, "Chaos"):
//
//	fleetshift-chaos [-runs 50] [-seed 1] [-devices 2000] [-sims 4] [-timeout 6m] [-mode serve|services|cluster]
//
// Each seeded run starts fleetshift (all-in-one `serve`, or separate planner, dispatcher and healthwatch
// replicas, over the core's embedded NATS or a 3-node NATS cluster) over a PostgreSQL cluster it owns,
// 2,000 simulated devices in their own processes, pushes an image and injects seeded faults while the
// staged rollout runs, then checks the invariants. It prints a table per run and `chaos: N runs, V
// violations`, and exits non-zero on any violation. The hidden subcommands `server`, `sim` and `nats`
// (a nats-server node of cluster mode) are its child processes.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/fleetshift/fleetshift/agent/sim"
	"github.com/fleetshift/fleetshift/fleetshift/internal/bench"
	"github.com/fleetshift/fleetshift/fleetshift/internal/chaos"
	"github.com/fleetshift/fleetshift/fleetshift/internal/server"
	"github.com/fleetshift/fleetshift/shared/config"
	"github.com/fleetshift/fleetshift/shared/logging"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch {
	case len(os.Args) > 1 && os.Args[1] == "server":
		err = runServer(ctx)
	case len(os.Args) > 1 && os.Args[1] == "sim":
		err = runSim(ctx, os.Args[2:])
	case len(os.Args) > 1 && os.Args[1] == "nats":
		err = runNATS(ctx, os.Args[2:])
	default:
		err = runChaos(ctx, os.Args[1:])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleetshift-chaos:", err)
		os.Exit(1)
	}
}

func runChaos(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("fleetshift-chaos", flag.ContinueOnError)
	o := chaos.Options{Out: os.Stdout, Progress: os.Stderr}
	fs.IntVar(&o.Runs, "runs", 50, "number of seeded runs")
	fs.Uint64Var(&o.Seed, "seed", 1, "seed of the first run (run i uses seed+i)")
	fs.IntVar(&o.Devices, "devices", 2000, "simulated devices per run")
	fs.IntVar(&o.Sims, "sims", 4, "simulator processes the devices are spread over")
	fs.DurationVar(&o.Timeout, "timeout", 6*time.Minute, "longest a run's rollout may take to settle")
	fs.StringVar(&o.Mode, "mode", "", "force every run's mode: "+strings.Join(chaos.Modes, ", ")+" (default: seeded)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.Runs < 1 || o.Devices < o.Sims || o.Sims < 1 {
		return fmt.Errorf("-runs must be >= 1 and -devices >= -sims >= 1")
	}
	if o.Mode != "" && !slices.Contains(chaos.Modes, o.Mode) {
		return fmt.Errorf("-mode %q: want one of %s", o.Mode, strings.Join(chaos.Modes, ", "))
	}
	results, err := chaos.Run(ctx, o)
	if err != nil {
		return err
	}
	for _, r := range results {
		if len(r.Violation) > 0 {
			return fmt.Errorf("violations found (see the tables above)")
		}
	}
	if len(results) < o.Runs {
		return fmt.Errorf("interrupted after %d of %d runs", len(results), o.Runs)
	}
	return nil
}

// runServer is a fleetshift process: the roles of FLEETSHIFT_CHAOS_ROLES (all when empty) configured
// from the environment, with embedded NATS when NATS_URL is empty. It announces its URLs on stdout and
// stops when stdin closes (or dies by SIGKILL, which is the point).
func runServer(ctx context.Context) error {
	cfg, err := config.FromEnv()
	if err != nil {
		return err
	}
	var roles []string
	if r := os.Getenv(chaos.EnvRoles); r != "" {
		roles = strings.Split(r, ",")
	}
	log := logging.New(os.Stderr, cfg.LogLevel, cfg.LogFormat)
	srv, err := server.Start(ctx, server.Options{Config: cfg, Log: log, Roles: roles, EmbedNATS: cfg.NATSURL == "",
		Tune: server.Tuning{TickInterval: 250 * time.Millisecond}})
	if err != nil {
		return err
	}
	defer srv.Shutdown()
	if err := bench.PrintHello(chaos.Hello{HTTPURL: srv.HTTPURL, NATSURL: srv.NATSURL}); err != nil {
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

// runNATS is a nats-server node of cluster mode, from the configuration file of -config.
func runNATS(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("nats", flag.ContinueOnError)
	conf := fs.String("config", "", "nats-server configuration file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *conf == "" {
		return fmt.Errorf("nats: -config is required")
	}
	return chaos.RunNATSNode(ctx, *conf)
}

// runSim is a simulator process (agent/sim) running until stdin closes.
func runSim(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("sim", flag.ContinueOnError)
	var a chaos.SimArgs
	fs.StringVar(&a.Server, "server", "", "fleetshift HTTP url")
	fs.StringVar(&a.Key, "key", "", "provisioning key")
	fs.StringVar(&a.Admin, "admin", "", "admin token")
	fs.StringVar(&a.Fleet, "fleet", "", "fleet id")
	fs.StringVar(&a.Image, "image", "", "image the devices start on")
	fs.StringVar(&a.FailRate, "fail-rate", "", "GLOB=P")
	fs.StringVar(&a.Prefix, "prefix", "", "device name prefix")
	fs.IntVar(&a.Devices, "devices", 0, "number of devices")
	fs.Uint64Var(&a.Seed, "seed", 1, "failure seed")
	if err := fs.Parse(args); err != nil {
		return err
	}
	rate, err := sim.ParseRate(a.FailRate)
	if err != nil {
		return err
	}
	s, err := sim.New(sim.Config{Server: a.Server, ProvisioningKey: a.Key, AdminToken: a.Admin, Fleet: a.Fleet,
		Devices: a.Devices, Images: []string{a.Image}, FailRates: []sim.Rate{rate}, Seed: a.Seed, NamePrefix: a.Prefix,
		PullMin: 50 * time.Millisecond, PullMax: 500 * time.Millisecond, PollInterval: 5 * time.Second,
		Heartbeat: 5 * time.Second, RegisterConcurrency: 8, Log: logging.New(os.Stderr, "error", "console")})
	if err != nil {
		return err
	}
	if err := bench.PrintHello(map[string]any{"devices": a.Devices}); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { bench.WaitStdinClosed(); cancel() }()
	return s.Run(ctx)
}
