package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
)

// Options configure one run of the harness.
type Options struct {
	Set   string
	Sizes Sizes
	// Groups to run (ParseOnly); empty: all.
	Groups []string
	// DatabaseURL names the PostgreSQL server; a fresh database is created on it.
	DatabaseURL string
	// Pin puts the server on CPU 0 and load generators and the simulator on CPU 1 (needs >= 2 CPUs).
	Pin bool
	// ProfileDir, when set, receives one CPU profile of the server per measurement group.
	ProfileDir string
	// Command is the exact command line, for the report.
	Command string
	// Progress receives one line per step.
	Progress io.Writer
}

// Runner runs measurements and collects rows.
type Runner struct {
	o    Options
	db   *Database
	tmp  string
	rows map[string]Row
	// parts are per-device costs measured on the way, for rollout_10k's "sum of its parts" baseline.
	planPerDevice, dispatchRate, reportRate float64
	// reportP99 is the last report measurement's median p99 (s).
	reportP99 float64
}

// Run executes the selected measurements and returns the report. Measurement failures become failed
// rows; only a failure to set up the run (database, temp dir) is an error.
func Run(ctx context.Context, o Options) (Report, error) {
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if len(o.Groups) == 0 {
		o.Groups, _ = ParseOnly("")
	}
	rep := Report{Date: time.Now(), Set: o.Set, Command: o.Command, Machine: LocalMachine()}
	rep.Machine.NATS = "NATS server " + natsserver.VERSION + " (embedded)"
	db, err := CreateDatabase(ctx, o.DatabaseURL)
	if err != nil {
		return rep, err
	}
	defer func() {
		if err := db.Drop(ctx); err != nil {
			fmt.Fprintln(o.Progress, "warning:", err)
		}
	}()
	rep.Machine.PostgreSQL = db.Version(ctx)
	rep.Machine.Layout = "server, load generators and simulator in separate processes sharing all cores (unpinned)"
	if o.Pin {
		if runtime.NumCPU() < 2 {
			return rep, errors.New("-pin needs at least 2 CPUs")
		}
		rep.Machine.Layout = "server pinned to CPU 0, load generators and simulator to CPU 1; PostgreSQL unpinned"
	}
	tmp, err := os.MkdirTemp("", "fleetshift-bench-run-")
	if err != nil {
		return rep, fmt.Errorf("temp dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	r := &Runner{o: o, db: db, tmp: tmp, rows: map[string]Row{}}
	for _, g := range o.Groups {
		if ctx.Err() != nil {
			break
		}
		r.progress("== %s", g)
		start := time.Now()
		rows := r.group(ctx, g)
		for _, row := range rows {
			r.rows[row.Name] = row
			cells := row.Cells()
			r.progress("   %s", strings.Join(cells[:], " | "))
		}
		r.progress("   (%s)", time.Since(start).Round(time.Second))
	}
	for _, g := range groups {
		for _, n := range g.names {
			if row, ok := r.rows[n]; ok {
				rep.Rows = append(rep.Rows, row)
			}
		}
	}
	rep.Notes = append(rep.Notes, "Goals are judged on the full set; the quick set runs the same measurements at smaller sizes "+
		"and its pass column is only indicative. Load generators and the device simulator run as separate processes "+
		"(the bench binary re-executed with a hidden subcommand); so does the server under test, whose memory is read "+
		"from /proc/<pid>/status. Baselines run in the harness process.")
	return rep, ctx.Err()
}

func (r *Runner) progress(format string, args ...any) {
	fmt.Fprintf(r.o.Progress, format+"\n", args...)
}

func (r *Runner) group(ctx context.Context, g string) []Row {
	if err := r.db.Reset(ctx); err != nil {
		return failRows(g, err)
	}
	switch g {
	case "poll":
		return r.poll(ctx)
	case "plan_100k":
		return r.plan(ctx, "plan_100k", r.o.Sizes.PlanSmall, 2, false)
	case "plan_1m":
		return r.plan(ctx, "plan_1m", r.o.Sizes.PlanLarge, 20, true)
	case "dispatch":
		return []Row{r.dispatch(ctx)}
	case "first_notify":
		return []Row{r.firstNotify(ctx)}
	case "report_ingest":
		return []Row{r.reportIngest(ctx)}
	case "report_ingest_500k":
		return []Row{r.reportIngestLarge(ctx)}
	case "heartbeat":
		return []Row{r.heartbeat(ctx)}
	case "rollout_10k":
		return []Row{r.rollout(ctx)}
	case "rollout_100k":
		return r.rolloutLarge(ctx)
	case "poll_pinned":
		return []Row{r.pollPinned(ctx)}
	case "pause_reaction":
		return []Row{r.pause(ctx)}
	}
	return failRows(g, fmt.Errorf("unknown group %q", g))
}

func failRows(g string, err error) []Row {
	var out []Row
	for _, gr := range groups {
		if gr.name == g {
			for _, n := range gr.names {
				out = append(out, Row{Name: n, Err: err})
			}
		}
	}
	return out
}

// startServer starts the server child for group g.
func (r *Runner) startServer(ctx context.Context, g string) (*Server, error) {
	o := ServerOptions{DatabaseURL: r.db.URL}
	if r.o.Pin {
		o.CPUs = "0"
	}
	if r.o.ProfileDir != "" {
		o.CPUProfile = filepath.Join(r.o.ProfileDir, g+".pprof")
	}
	return StartServer(ctx, o)
}

// loadCPUs is the environment pinning load generators and the simulator.
func (r *Runner) loadEnv() []string {
	if r.o.Pin {
		return []string{EnvCPUs + "=1"}
	}
	return nil
}

// seed inserts a fleet and reports how long it took.
func (r *Runner) seed(ctx context.Context, f Fleet) error {
	start := time.Now()
	if err := Seed(ctx, r.db.Pool, f); err != nil {
		return err
	}
	r.progress("   seeded %d devices in %s", f.N, time.Since(start).Round(100*time.Millisecond))
	return nil
}

// poll calls check every interval until it returns true, an error, or timeout passes.
func poll(ctx context.Context, timeout, interval time.Duration, what string, check func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := check()
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not within %s", what, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}

// waitFor waits for ch to close within timeout.
func waitFor(ctx context.Context, ch <-chan struct{}, timeout time.Duration, what string) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-ch:
		return nil
	case <-t.C:
		return fmt.Errorf("%s: not within %s", what, timeout)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// stopServer stops the server child and logs a failure to stop cleanly.
func (r *Runner) stopServer(s *Server) {
	if err := s.Stop(); err != nil {
		r.progress("   warning: %v", err)
	}
}
