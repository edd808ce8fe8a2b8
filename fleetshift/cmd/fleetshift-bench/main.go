// Command fleetshift-bench is fleetshift's benchmark harness (docs/benchmarks.md):
//
//	fleetshift-bench -set quick|full [-out docs/benchmarks.md] [-only name,...] [-pin] [-cpuprofile dir] [-sim-devices N]
//
// It creates a fresh database on the server of DATABASE_URL (or TEST_DATABASE_URL), runs fleetshift and
// its load generators as separate processes, and prints the name | fleetshift | baseline | ratio | goal |
// pass table. The hidden subcommands `server`, `load` and `sim` are those child processes.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/fleetshift/fleetshift/fleetshift/internal/bench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "server":
			err = runServer(ctx)
		case "load":
			err = runLoad(ctx, os.Args[2:])
		case "sim":
			err = runSim(ctx, os.Args[2:])
		default:
			err = runBench(ctx, os.Args[1:])
		}
	} else {
		err = runBench(ctx, nil)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleetshift-bench:", err)
		os.Exit(1)
	}
}

func runBench(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("fleetshift-bench", flag.ContinueOnError)
	set := fs.String("set", "quick", "quick (under 3 minutes, smaller sizes) or full (the goal sizes)")
	out := fs.String("out", "", "write the report (Markdown) to this file, e.g. ../docs/benchmarks.md")
	only := fs.String("only", "", "comma-separated measurements to run: "+strings.Join(bench.Names(), ", "))
	pin := fs.Bool("pin", false, "pin the server to CPU 0 and load generators to CPU 1")
	profiles := fs.String("cpuprofile", "", "write a CPU profile of the server per measurement group (and a heap profile of the simulator) into this directory")
	simDevices := fs.Int("sim-devices", 0, "run rollout_100k and rss_sim_100k at this many simulated devices instead of the set's size")
	if err := fs.Parse(args); err != nil {
		return err
	}
	sizes, err := bench.SetSizes(*set)
	if err != nil {
		return err
	}
	if *simDevices > 0 {
		sizes.RolloutLarge = *simDevices
	}
	groups, err := bench.ParseOnly(*only)
	if err != nil {
		return err
	}
	dbURL := os.Getenv("DATABASE_URL")
	if dbURL == "" {
		dbURL = os.Getenv("TEST_DATABASE_URL")
	}
	if dbURL == "" {
		dbURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	}
	if *profiles != "" {
		if *profiles, err = filepath.Abs(*profiles); err != nil {
			return err
		}
		if err := os.MkdirAll(*profiles, 0o755); err != nil {
			return err
		}
	}
	command := "cd fleetshift && go run ./cmd/fleetshift-bench " + strings.Join(args, " ")
	rep, err := bench.Run(ctx, bench.Options{Set: *set, Sizes: sizes, Groups: groups, DatabaseURL: dbURL, Pin: *pin,
		ProfileDir: *profiles, Command: strings.TrimSpace(command), Progress: os.Stderr})
	fmt.Println()
	fmt.Println("machine:", rep.Machine.String())
	fmt.Print(bench.RenderTable(rep.Rows))
	if err != nil {
		return err
	}
	if *out != "" {
		f, err := os.Create(*out)
		if err != nil {
			return fmt.Errorf("write report: %w", err)
		}
		if err := rep.WriteMarkdown(f); err != nil {
			f.Close()
			return fmt.Errorf("write report: %w", err)
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("write report: %w", err)
		}
		fmt.Println("wrote", *out)
	}
	if !rep.Passed() {
		fmt.Println("some goals are not met (see the pass column)")
	}
	for _, r := range rep.Rows {
		if r.Err != nil {
			return errors.New("some measurements failed")
		}
	}
	return nil
}

func runLoad(ctx context.Context, args []string) error {
	if err := bench.PinFromEnv(); err != nil {
		return err
	}
	spec, err := bench.ParseLoadArgs(args)
	if err != nil {
		return err
	}
	return bench.PrintHello(bench.RunLoad(ctx, spec))
}
