package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/fleetshift/fleetshift/streams"
)

// TestFlagsAreKebabCase: every flag of every operator verb is kebab-case.
func TestFlagsAreKebabCase(t *testing.T) {
	kebab := regexp.MustCompile(`^[a-z][a-z0-9]*(-[a-z0-9]+)*$`)
	var walk func(*cobra.Command)
	n := 0
	walk = func(c *cobra.Command) {
		c.Flags().VisitAll(func(f *pflag.Flag) {
			n++
			if !kebab.MatchString(f.Name) {
				t.Errorf("%s: flag --%s is not kebab-case", c.CommandPath(), f.Name)
			}
		})
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	root := &cobra.Command{Use: "fleetshift"}
	root.AddCommand(CommandsTo(io.Discard)...)
	walk(root)
	if n < 30 {
		t.Fatalf("only %d flags seen", n)
	}
}

// TestBarShowsFailuresApart: a batch with a failed or rolled-back device is never drawn as a full bar of
// completed cells, however few fail; an unfinished batch is never full either.
func TestBarShowsFailuresApart(t *testing.T) {
	for _, b := range []batchState{
		{Devices: 1000, Completed: 999, Failed: 1},
		{Devices: 1000, Completed: 999, RolledBack: 1},
		{Devices: 1000, Completed: 999, InProgress: 1},
		{Devices: 1000, Completed: 999, Pending: 1},
		{Devices: 3, Completed: 1, Failed: 2},
	} {
		for _, w := range []int{5, 17, 40} {
			cells := string(barCells(b, w))
			if utf8.RuneCountInString(cells) != w {
				t.Fatalf("%+v width %d: %q", b, w, cells)
			}
			if strings.Count(cells, "#") == w {
				t.Fatalf("%+v drawn as a full bar: %q", b, cells)
			}
			if b.Failed > 0 && !strings.Contains(cells, "X") || b.RolledBack > 0 && !strings.Contains(cells, "R") {
				t.Fatalf("%+v: failures not shown: %q", b, cells)
			}
		}
	}
	if cells := string(barCells(batchState{Devices: 4, Completed: 4}, 8)); cells != "########" {
		t.Fatalf("complete batch: %q", cells)
	}
	// A finished batch fills its bar: no cell looks pending.
	for w := 3; w <= 60; w++ {
		if cells := string(barCells(batchState{Devices: 3, Completed: 2, Failed: 1}, w)); strings.Contains(cells, ".") {
			t.Fatalf("finished batch, width %d: %q", w, cells)
		}
	}
}

// TestBarLinesFitTheTerminal: at any width every line (escape codes aside) fits in width-1 columns.
func TestBarLinesFitTheTerminal(t *testing.T) {
	ansi := regexp.MustCompile(`\x1b\[[0-9;]*m`)
	st := watchState{Image: "registry.example.test/some/very/long/repository/name", OldTag: "1.0.0-rc1", NewTag: "2.0.0-rc7",
		Status: "in_progress", AutoPaused: true, Devices: 100000, Updated: 50000, Failed: 1234, RolledBack: 99,
		Batches: []batchState{{Batch: 1, Devices: 10000, Completed: 9000, Failed: 1000}, {Batch: 2, Devices: 90000, Completed: 40000, Failed: 234, RolledBack: 99, InProgress: 10}}}
	for w := 1; w <= 200; w++ {
		for _, color := range []bool{false, true} {
			for _, l := range barLines(st, w, color) {
				if n := utf8.RuneCountInString(ansi.ReplaceAllString(l, "")); n > max(w, 10)-1 {
					t.Fatalf("width %d colour %v: %d columns: %q", w, color, n, l)
				}
				if !color && strings.Contains(l, "\x1b") {
					t.Fatalf("escape code without colour: %q", l)
				}
			}
		}
	}
}

// TestTableCellsNeverRawJSON: nested values become counts or comma lists, long text is cut.
func TestTableCellsNeverRawJSON(t *testing.T) {
	for _, c := range []struct {
		in   any
		want string
	}{
		{map[string]any{"a": 1.0, "b": "x"}, "(2 fields)"},
		{[]any{map[string]any{"a": 1.0}}, "(1 item)"},
		{[]any{10.0, 50.0, 100.0}, "10,50,100"},
		{[]any{}, "-"},
		{"line one\nline two", "line one line two"},
		{strings.Repeat("x", 100), strings.Repeat("x", 59) + "…"},
		{0.25, "0.25"},
		{nil, "-"},
	} {
		if got := str(c.in); got != c.want {
			t.Errorf("str(%v) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestExitCode(t *testing.T) {
	if ExitCode(nil) != 0 || ExitCode(errors.New("x")) != ExitError {
		t.Fatal("plain errors")
	}
	err := fmt.Errorf("wrapped: %w", &ExitCodeError{Code: ExitRolloutPaused, Err: errors.New("paused")})
	if ExitCode(err) != ExitRolloutPaused {
		t.Fatal("wrapped exit code lost")
	}
}

// TestTailPrintsBatchScheduledDevices: an image.batch_devices_scheduled event prints its line and then
// every device it names, a few per indented line; JSON output is the message as is.
func TestTailPrintsBatchScheduledDevices(t *testing.T) {
	devs := []string{"dev-1", "dev-2", "dev-3", "dev-4", "dev-5", "dev-6"}
	data, err := json.Marshal(streams.BatchDevicesScheduledV1{Batch: 2, NewImage: "acme/app:2", Chunk: 1, Chunks: 1,
		Count: len(devs), Devices: devs})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := json.Marshal(streams.EventV1{ID: "e1", Type: streams.EventBatchDevicesScheduled, RolloutID: "r1",
		Message: "batch 2: 6 devices scheduled for acme/app:2 (1 of 1)", Data: data})
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	if err := printEvent(&globals{out: &out, output: FormatTable}, ev); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 3 || !strings.Contains(lines[0], "image.batch_devices_scheduled r1 - batch 2: 6 devices") ||
		strings.TrimSpace(lines[1]) != "scheduled: dev-1 dev-2 dev-3 dev-4" || strings.TrimSpace(lines[2]) != "scheduled: dev-5 dev-6" {
		t.Fatalf("printed:\n%s", out.String())
	}
	out.Reset()
	if err := printEvent(&globals{out: &out, output: FormatJSON}, ev); err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(out.String()) != string(ev) {
		t.Fatalf("json output %s", out.String())
	}
}

// TestDeviceReasonColumn: the REASON of `rollouts devices` is the failure reason, else the message of a
// skipped or rolled-back device, else a download ahead that keeps failing; nothing once downloaded.
func TestDeviceReasonColumn(t *testing.T) {
	for _, tc := range []struct {
		dev  map[string]any
		want string
	}{
		{map[string]any{"failure_reason": "service web: exited", "error_message": "x"}, "service web: exited"},
		{map[string]any{"failure_reason": nil, "error_message": "rolled back to acme/app:1.0"}, "rolled back to acme/app:1.0"},
		{map[string]any{"failure_reason": "", "error_message": nil, "download_error": "pull access denied"}, "download failed: pull access denied"},
		{map[string]any{"download_error": "pull access denied", "downloaded_at": "2026-11-30T20:00:00Z"}, "-"},
		{map[string]any{}, "-"},
	} {
		if got := str(reason(tc.dev)); got != tc.want {
			t.Errorf("%v: %q, want %q", tc.dev, got, tc.want)
		}
	}
}
