package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
)

func TestMedianAndPercentile(t *testing.T) {
	t.Parallel()
	require.True(t, math.IsNaN(Median(nil)))
	require.Equal(t, 2.0, Median([]float64{3, 1, 2}))
	require.Equal(t, 2.5, Median([]float64{4, 1, 3, 2}))
	in := []float64{5, 1, 4}
	Median(in)
	require.Equal(t, []float64{5, 1, 4}, in, "Median must not reorder its input")

	xs := make([]float64, 100)
	for i := range xs {
		xs[i] = float64(100 - i) // 100..1
	}
	require.Equal(t, 50.0, Percentile(xs, 50))
	require.Equal(t, 99.0, Percentile(xs, 99))
	require.Equal(t, 100.0, Percentile(xs, 100))
	require.Equal(t, 1.0, Percentile(xs, 0.1))
	require.True(t, math.IsNaN(Percentile(nil, 50)))
	require.Equal(t, []float64{1.5}, Seconds([]time.Duration{1500 * time.Millisecond}))
	require.Equal(t, []float64{2.5}, Millis([]time.Duration{2500 * time.Microsecond}))
}

func TestFormatValue(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		v    float64
		unit string
		want string
	}{
		{41250.4, "req/s", "41,250 req/s"},
		{1234567, "", "1,234,567"},
		{1.844, "s", "1.84 s"},
		{12.34, "ms", "12.3 ms"},
		{512.4, "MiB", "512 MiB"},
		{math.NaN(), "s", "n/a"},
	} {
		require.Equal(t, c.want, FormatValue(c.v, c.unit))
	}
}

func TestRenderTable(t *testing.T) {
	t.Parallel()
	rows := []Row{
		{Name: "poll_304", Value: 45000, Unit: "req/s", Baseline: 60000, Goal: ">= 50%", Pass: true},
		{Name: "plan_1m", Value: 25, Unit: "s", Goal: "< 20 s"},
		{Name: "loadgen_ceiling", Value: 90000, Unit: "req/s", NoGoal: true},
		{Name: "dispatch", Err: errors.New("boom | with\nnewline")},
		{Name: "first_notify", Text: "p50 12.0 ms, p99 40.0 ms", Goal: "p50 < 100 ms", Pass: true},
	}
	got := RenderTable(rows)
	lines := strings.Split(strings.TrimSpace(got), "\n")
	require.Len(t, lines, 2+len(rows))
	require.Equal(t, "| name | fleetshift | baseline | ratio | goal | pass |", lines[0])
	require.Equal(t, "| poll_304 | 45,000 req/s | 60,000 req/s | 0.75x | >= 50% | yes |", lines[2])
	require.Equal(t, "| plan_1m | 25.0 s | - | - | < 20 s | no |", lines[3])
	require.Equal(t, "| loadgen_ceiling | 90,000 req/s | - | - | - | - |", lines[4])
	require.Equal(t, "| dispatch | error: boom / with newline | - | - | - | no |", lines[5])
	require.Contains(t, lines[6], "| p50 12.0 ms, p99 40.0 ms |")
	for _, l := range lines {
		require.Equal(t, 7, strings.Count(l, "|"), "every line has six cells: %s", l)
	}
}

func TestReportMarkdown(t *testing.T) {
	t.Parallel()
	rep := Report{Date: time.Date(2025, 1, 2, 3, 4, 0, 0, time.UTC), Set: "full", Command: "make bench",
		Machine: Machine{Cores: 2, MemoryBytes: 4 << 30, GoVersion: "go1.26", PostgreSQL: "PostgreSQL 15.2", NATS: "NATS server 2.15.2"},
		Rows:    []Row{{Name: "plan_100k", Value: 1.5, Unit: "s", Baseline: 0.5, Goal: "< 2 s", Pass: true, Note: "100,000 devices"}},
		Notes:   []string{"a closing note"}}
	var b bytes.Buffer
	require.NoError(t, rep.WriteMarkdown(&b))
	s := b.String()
	for _, want := range []string{"2025-01-02 03:04 UTC", "2 cores", "4.0 GiB memory", "go1.26", "PostgreSQL 15.2",
		"NATS server 2.15.2", "`make bench`", "| plan_100k | 1.50 s | 0.50 s | 3.00x | < 2 s | yes |", "`plan_100k`: 100,000 devices", "a closing note"} {
		require.Contains(t, s, want)
	}
	require.True(t, rep.Passed())
	rep.Rows = append(rep.Rows, Row{Name: "x", Goal: "y"})
	require.False(t, rep.Passed())
}

func TestRequestsRoundTrip(t *testing.T) {
	t.Parallel()
	reqs := []Request{
		{Path: "/api/v1/device/a/state", Headers: [][2]string{{"X-Device-API-Key", "k1"}, {"If-None-Match", `"1-abc"`}}},
		{Path: "/healthz"},
	}
	var b bytes.Buffer
	require.NoError(t, WriteRequests(&b, reqs))
	got, err := ParseRequests(&b)
	require.NoError(t, err)
	require.Equal(t, reqs[0], got[0])
	require.Equal(t, "/healthz", got[1].Path)
	require.Empty(t, got[1].Headers)

	_, err = ParseRequests(strings.NewReader("nopath\n"))
	require.ErrorContains(t, err, "line 1")
	_, err = ParseRequests(strings.NewReader("/a\tbad-header\n"))
	require.ErrorContains(t, err, "Name: value")
	_, err = ParseRequests(strings.NewReader("\n\n"))
	require.Error(t, err)
	require.Error(t, WriteRequests(&b, []Request{{Path: "/a\tb"}}))
}

func TestLoadArgsRoundTrip(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "reqs")
	require.NoError(t, os.WriteFile(file, []byte("/a\tX-K: v\n"), 0o600))
	spec, err := ParseLoadArgs(LoadArgs(LoadSpec{Addr: "127.0.0.1:1", Conns: 8, Duration: 3 * time.Second, Expect: 304}, file))
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:1", spec.Addr)
	require.Equal(t, 8, spec.Conns)
	require.Equal(t, 3*time.Second, spec.Duration)
	require.Equal(t, 304, spec.Expect)
	require.Equal(t, []Request{{Path: "/a", Headers: [][2]string{{"X-K", "v"}}}}, spec.Requests)

	spec, err = ParseLoadArgs(LoadArgs(LoadSpec{Addr: "h:1", Passes: 2, Expect: 200}, file))
	require.NoError(t, err)
	require.Equal(t, 2, spec.Passes)

	for _, bad := range [][]string{
		{"-requests", file},
		{"-addr", "h:1"},
		{"-addr", "h:1", "-requests", file, "-expect", "42"},
		{"-addr", "h:1", "-requests", file, "-conns", "0"},
		{"-addr", "h:1", "-requests", filepath.Join(t.TempDir(), "missing")},
	} {
		_, err := ParseLoadArgs(bad)
		require.Error(t, err, "%v", bad)
	}
}

func TestParseLoadResult(t *testing.T) {
	t.Parallel()
	r, err := ParseLoadResult([]byte(`{"requests":10,"errors":0,"unexpected":0,"seconds":1,"rps":10,"p50_us":5,"p90_us":6,"p99_us":7,"max_us":8}` + "\n"))
	require.NoError(t, err)
	require.Equal(t, LoadResult{Requests: 10, Seconds: 1, RPS: 10, P50: 5, P90: 6, P99: 7, Max: 8}, r)
	require.NoError(t, r.OK())
	r.Unexpected, r.FirstFailure = 2, "status 500"
	require.ErrorContains(t, r.OK(), "status 500")
	require.Error(t, LoadResult{}.OK())
	_, err = ParseLoadResult([]byte("garbage"))
	require.Error(t, err)
}

// TestRunLoad drives a local handler: every request of a pass is sent exactly once with its headers,
// and responses with another status are counted, never hidden.
func TestRunLoad(t *testing.T) {
	t.Parallel()
	seen := make(chan string, 100)
	addr, stop, err := serveInHarness(func(c *fasthttp.RequestCtx) {
		seen <- string(c.Path()) + " " + string(c.Request.Header.Peek("X-Key"))
		if string(c.Path()) == "/bad" {
			c.SetStatusCode(500)
			return
		}
		c.SetStatusCode(304)
	})
	require.NoError(t, err)
	defer stop()
	var reqs []Request
	for i := range 20 {
		reqs = append(reqs, Request{Path: fmt.Sprintf("/d/%d", i), Headers: [][2]string{{"X-Key", fmt.Sprint(i)}}})
	}
	res := RunLoad(context.Background(), LoadSpec{Addr: addr, Conns: 4, Passes: 2, Expect: 304, Requests: reqs})
	require.NoError(t, res.OK())
	require.EqualValues(t, 40, res.Requests)
	got := map[string]int{}
	for range 40 {
		got[<-seen]++
	}
	for i := range 20 {
		require.Equal(t, 2, got[fmt.Sprintf("/d/%d %d", i, i)])
	}
	require.LessOrEqual(t, res.P50, res.P99)
	require.LessOrEqual(t, res.P99, res.Max)

	res = RunLoad(context.Background(), LoadSpec{Addr: addr, Conns: 2, Passes: 1, Expect: 304,
		Requests: []Request{{Path: "/bad"}, {Path: "/ok"}}})
	require.EqualValues(t, 1, res.Unexpected)
	require.Contains(t, res.FirstFailure, "status 500")
	require.Error(t, res.OK())
}

func TestProcParsing(t *testing.T) {
	t.Parallel()
	status := "Name:\tfleetshift\nVmPeak:\t  999 kB\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n"
	require.Equal(t, ProcStatus{RSS: 1024 * 1024, PeakRSS: 2048 * 1024}, ParseProcStatus([]byte(status)))
	require.EqualValues(t, 16*1024*1024, ParseMeminfo([]byte("MemTotal:       16384 kB\nMemFree: 1 kB\n")))
	require.Zero(t, ParseMeminfo([]byte("nothing")))
	mem, err := ReadProcStatus(os.Getpid())
	require.NoError(t, err)
	require.Positive(t, mem.RSS)
	require.GreaterOrEqual(t, mem.PeakRSS, mem.RSS)
}

func TestParseCPUList(t *testing.T) {
	t.Parallel()
	got, err := ParseCPUList("0,2-3")
	require.NoError(t, err)
	require.Equal(t, []int{0, 2, 3}, got)
	for _, bad := range []string{"", "x", "3-1", "-1"} {
		_, err := ParseCPUList(bad)
		require.Error(t, err, bad)
	}
}

func TestSetsAndOnly(t *testing.T) {
	t.Parallel()
	full, err := SetSizes("full")
	require.NoError(t, err)
	require.Equal(t, 50_000, full.PollDevices)
	require.Equal(t, 1_000_000, full.PlanLarge)
	require.Equal(t, 100_000, full.Dispatch)
	require.Equal(t, 200, full.NotifyPushes)
	require.Equal(t, 10_000, full.Rollout)
	require.GreaterOrEqual(t, full.Reps, 3)
	quick, err := SetSizes("quick")
	require.NoError(t, err)
	require.GreaterOrEqual(t, quick.Reps, 3)
	require.Less(t, quick.PlanLarge, full.PlanLarge)
	_, err = SetSizes("medium")
	require.Error(t, err)

	all, err := ParseOnly("")
	require.NoError(t, err)
	require.Len(t, all, len(groups))
	got, err := ParseOnly("rss_poll_cache, poll_200,dispatch")
	require.NoError(t, err)
	require.Equal(t, []string{"poll", "plan_1m", "dispatch"}, got, "groups in run order")
	_, err = ParseOnly("poll_999")
	require.ErrorContains(t, err, "unknown")
	require.Contains(t, Names(), "pause_reaction")
}

func TestStagedBatch(t *testing.T) {
	t.Parallel()
	counts := map[int]int{}
	for i := range 20 {
		counts[stagedBatch(i, 20)]++
	}
	require.Equal(t, map[int]int{1: 2, 2: 8, 3: 10}, counts) // docs/contract.md: 20 devices -> 2, 8, 10
}

func TestPrefixWriter(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	w := &prefixWriter{prefix: "server: ", w: &b}
	_, _ = w.Write([]byte("one\ntw"))
	_, _ = w.Write([]byte("o\n"))
	require.Equal(t, "server: one\nserver: two\n", b.String())
}

// TestSimMemoryRow: measured at the full size the row is the peak itself; measured at fewer devices (the
// open-file limit) it is a projection, labelled so in its text and note, judged on the projection.
func TestSimMemoryRow(t *testing.T) {
	t.Parallel()
	full := simMemoryRow(1000, 1000, ProcStatus{PeakRSS: 100 << 20}, nil)
	require.NoError(t, full.Err)
	require.Equal(t, 100.0, full.Value)
	require.Equal(t, "100 MiB (102 KiB per device)", full.Text)
	require.NotContains(t, full.Note, "PROJECTION")
	require.True(t, full.Pass)

	proj := simMemoryRow(100_000, 15_000, ProcStatus{PeakRSS: 15_000 * 30 << 10}, nil) // 30 KiB per device
	require.NoError(t, proj.Err)
	require.InDelta(t, 100_000*30.0/1024, proj.Value, 0.01)
	require.Equal(t, "projected 2,930 MiB at 100,000 devices (measured 439 MiB at 15,000 devices: 30.0 KiB per device)", proj.Text)
	require.Contains(t, proj.Note, "PROJECTION")
	require.Contains(t, proj.Note, "15,000 devices, the most RLIMIT_NOFILE allows")
	require.True(t, proj.Pass)
	require.False(t, simMemoryRow(100_000, 15_000, ProcStatus{PeakRSS: 15_000 * 50 << 10}, nil).Pass)

	partial := simMemoryRow(100_000, 15_000, ProcStatus{PeakRSS: 15_000 * 30 << 10}, errors.New("rollout x covered 15001 devices"))
	require.NoError(t, partial.Err)
	require.Contains(t, partial.Note, "did not finish (rollout x covered 15001 devices)")

	none := simMemoryRow(100_000, 15_000, ProcStatus{}, errors.New("registration failed"))
	require.ErrorContains(t, none.Err, "no simulator: registration failed")
}

// TestMaxFileLimitDevices: the hard limit less the margin, in thousands, and CheckFileLimit accepts it.
func TestMaxFileLimitDevices(t *testing.T) {
	n, err := MaxFileLimitDevices()
	require.NoError(t, err)
	require.Zero(t, n%1000)
	if n < 1<<30 {
		require.NoError(t, CheckFileLimit(n))
		require.Error(t, CheckFileLimit(n+1000+fileMargin))
	}
}
