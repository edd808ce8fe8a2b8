package chaos

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"
)

// printRun writes one run's table: the run, then one line per fault, then its violations.
func printRun(w io.Writer, r Result) {
	fmt.Fprintf(w, "\nrun %d  seed %d  mode %s  fail rate %.2f  auto rollback %v  -> %s in %s\n",
		r.Run, r.Seed, r.Mode, r.FailP, r.Rollback, r.Status, r.Duration.Round(time.Second))
	var rows []string
	for _, k := range slices.Sorted(maps.Keys(r.Rows)) {
		rows = append(rows, fmt.Sprintf("%s=%d", k, r.Rows[k]))
	}
	fmt.Fprintf(w, "  devices: %s\n", strings.Join(rows, " "))
	if r.NATS != "" {
		fmt.Fprintf(w, "  nats: %s\n", r.NATS)
	}
	fmt.Fprintf(w, "  | fault | target | at | down | recovery | note |\n")
	for _, f := range r.Faults {
		rec := "-"
		if f.Recovery > 0 {
			rec = f.Recovery.Round(10 * time.Millisecond).String()
		}
		fmt.Fprintf(w, "  | %s | %s | %s | %s | %s | %s |\n", f.Kind, f.Target, f.At, f.Down, rec, f.Note)
	}
	if len(r.Violation) == 0 {
		fmt.Fprintf(w, "  violations: none\n")
	}
	for _, v := range r.Violation {
		fmt.Fprintf(w, "  VIOLATION: %s\n", v)
	}
}

// printSummary writes the per-fault table over all runs (Markdown): runs with the fault, violations in
// those runs, recovery times.
func printSummary(w io.Writer, results []Result) {
	type agg struct {
		runs, violations int
		rec              []time.Duration
	}
	by := map[string]*agg{}
	for _, r := range results {
		kinds := map[string]bool{}
		for _, f := range r.Faults {
			a := by[f.Kind]
			if a == nil {
				a = &agg{}
				by[f.Kind] = a
			}
			if !kinds[f.Kind] {
				a.runs++
				a.violations += len(r.Violation)
				kinds[f.Kind] = true
			}
			if f.Recovery > 0 {
				a.rec = append(a.rec, f.Recovery)
			}
		}
	}
	fmt.Fprintf(w, "\n| fault | runs with it | violations in those runs | recovery median | recovery max |\n|---|---|---|---|---|\n")
	for _, k := range slices.Sorted(maps.Keys(by)) {
		a := by[k]
		med, mx := "-", "-"
		if len(a.rec) > 0 {
			slices.Sort(a.rec)
			med = a.rec[len(a.rec)/2].Round(10 * time.Millisecond).String()
			mx = a.rec[len(a.rec)-1].Round(10 * time.Millisecond).String()
		}
		fmt.Fprintf(w, "| %s | %d | %d | %s | %s |\n", k, a.runs, a.violations, med, mx)
	}
}
