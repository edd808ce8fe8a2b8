package bench

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/valyala/fasthttp"
)

// pollEntry is one device's target as the poll baseline serves it.
type pollEntry struct {
	etag string // quoted
	body []byte
}

// loadPollEntries reads the stored targets of the fleet's devices: the same ETag and body the
// server's poll path answers with.
func (r *Runner) loadPollEntries(ctx context.Context, f Fleet) (map[string]pollEntry, error) {
	rows, err := r.db.Pool.Query(ctx, `SELECT device_uuid, etag, apps::text, config::text, version
		FROM device_target_state WHERE device_uuid LIKE $1`, f.Prefix+"-%")
	if err != nil {
		return nil, fmt.Errorf("read targets: %w", err)
	}
	defer rows.Close()
	out := make(map[string]pollEntry, f.N)
	for rows.Next() {
		var uuid, etag, apps, cfg string
		var version int64
		if err := rows.Scan(&uuid, &etag, &apps, &cfg, &version); err != nil {
			return nil, fmt.Errorf("read targets: %w", err)
		}
		body := fmt.Sprintf(`{%q:{"apps":%s,"config":%s,"version":%d}}`, uuid, apps, cfg, version)
		out[uuid] = pollEntry{etag: `"` + etag + `"`, body: []byte(body)}
	}
	return out, rows.Err()
}

// pollRequests writes the requests of one pass over the fleet: each device's own key and, when
// match, its current ETag (304 expected), else a stale one (200 expected).
func (r *Runner) pollRequests(f Fleet, entries map[string]pollEntry, match bool, name string) (string, error) {
	reqs := make([]Request, 0, f.N)
	for _, d := range f.Devices() {
		etag := `"stale"`
		if match {
			etag = entries[d.UUID].etag
		}
		reqs = append(reqs, Request{Path: "/api/v1/device/" + d.UUID + "/state",
			Headers: [][2]string{{"X-Device-API-Key", d.Key}, {"If-None-Match", etag}}})
	}
	file := filepath.Join(r.tmp, name)
	fh, err := os.Create(file)
	if err != nil {
		return "", fmt.Errorf("write requests: %w", err)
	}
	defer fh.Close()
	if err := WriteRequests(fh, reqs); err != nil {
		return "", err
	}
	return file, fh.Close()
}

// load runs the load generator child once.
func (r *Runner) load(ctx context.Context, spec LoadSpec, file string) (LoadResult, error) {
	out, err := RunChild(ctx, "load", append([]string{"load"}, LoadArgs(spec, file)...), r.loadEnv())
	if err != nil {
		return LoadResult{}, err
	}
	res, err := ParseLoadResult(out)
	if err != nil {
		return res, err
	}
	return res, res.OK()
}

// loadReps runs the load generator reps times after one warm-up run and returns the median req/s and
// the median p99 (ms).
func (r *Runner) loadReps(ctx context.Context, spec LoadSpec, file string) (rps, p99ms float64, err error) {
	warm := spec
	warm.Duration = max(spec.Duration/4, 500*time.Millisecond)
	if _, err := r.load(ctx, warm, file); err != nil {
		return 0, 0, fmt.Errorf("warm-up: %w", err)
	}
	var rates, p99s []float64
	for range r.o.Sizes.Reps {
		res, err := r.load(ctx, spec, file)
		if err != nil {
			return 0, 0, err
		}
		rates = append(rates, res.RPS)
		p99s = append(p99s, res.P99/1000)
	}
	return Median(rates), Median(p99s), nil
}

// pinHarness pins this process to CPU 0 while a baseline server runs in it (with -pin), and returns
// the function that undoes it.
func (r *Runner) pinHarness() func() {
	if !r.o.Pin {
		return func() {}
	}
	_ = PinSelf([]int{0})
	return func() {
		all := make([]int, runtime.NumCPU())
		for i := range all {
			all[i] = i
		}
		_ = PinSelf(all)
	}
}

// serveInHarness serves h on a free local port until the returned stop is called.
func serveInHarness(h fasthttp.RequestHandler) (addr string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, fmt.Errorf("listen: %w", err)
	}
	srv := &fasthttp.Server{Handler: h, NoDefaultServerHeader: true}
	go func() { _ = srv.Serve(ln) }()
	return ln.Addr().String(), func() { _ = srv.Shutdown() }, nil
}

// baselinePollApp is the poll baseline: a bare Fiber handler answering from a map.
func baselinePollApp(entries map[string]pollEntry) *fiber.App {
	app := fiber.New(fiber.Config{DisableStartupMessage: true})
	app.Get("/api/v1/device/:uuid/state", func(c *fiber.Ctx) error {
		e, ok := entries[c.Params("uuid")]
		if !ok {
			return c.SendStatus(fiber.StatusNotFound)
		}
		c.Set(fiber.HeaderETag, e.etag)
		if c.Get(fiber.HeaderIfNoneMatch) == e.etag {
			return c.SendStatus(fiber.StatusNotModified)
		}
		c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
		return c.Send(e.body)
	})
	return app
}

func (r *Runner) poll(ctx context.Context) []Row {
	sz := r.o.Sizes
	f := Fleet{Prefix: "poll", Fleet: "bench-poll", N: sz.PollDevices, Image: "bench/poll:1.0"}
	if err := r.seed(ctx, f); err != nil {
		return failRows("poll", err)
	}
	entries, err := r.loadPollEntries(ctx, f)
	if err != nil {
		return failRows("poll", err)
	}
	file304, err := r.pollRequests(f, entries, true, "poll304")
	if err != nil {
		return failRows("poll", err)
	}
	file200, err := r.pollRequests(f, entries, false, "poll200")
	if err != nil {
		return failRows("poll", err)
	}
	spec := LoadSpec{Conns: 64, Duration: sz.PollDuration}
	rows := []Row{}

	// The generator's own ceiling: the same requests against a handler that does nothing.
	unpin := r.pinHarness()
	addr, stop, err := serveInHarness(func(c *fasthttp.RequestCtx) { c.SetStatusCode(fasthttp.StatusNoContent) })
	var ceiling, ceilingP99 float64
	if err == nil {
		s := spec
		s.Addr, s.Expect = addr, 204
		ceiling, ceilingP99, err = r.loadReps(ctx, s, file304)
		stop()
	}
	ceilRow := Row{Name: "loadgen_ceiling", Value: ceiling, Unit: "req/s", NoGoal: true, Err: err,
		Note: fmt.Sprintf("the load generator (own process, fasthttp HostClient, 64 connections, the poll_304 requests) against a bare fasthttp handler answering 204: its ceiling on this machine (p99 %.2f ms).", ceilingP99)}
	rows = append(rows, ceilRow)

	// Baselines: a bare Fiber app answering 304 / 200 from a map, in the harness process.
	app := baselinePollApp(entries)
	var base304, base200 float64
	addr, stop, err = serveInHarness(app.Handler())
	if err == nil {
		s := spec
		s.Addr, s.Expect = addr, 304
		if base304, _, err = r.loadReps(ctx, s, file304); err == nil {
			s.Expect = 200
			base200, _, err = r.loadReps(ctx, s, file200)
		}
		stop()
	}
	unpin()
	if err != nil {
		return append(rows, Row{Name: "poll_304", Err: fmt.Errorf("baseline: %w", err)}, Row{Name: "poll_200", Err: fmt.Errorf("baseline: %w", err)})
	}

	srv, err := r.startServer(ctx, "poll")
	if err != nil {
		return append(rows, Row{Name: "poll_304", Err: err}, Row{Name: "poll_200", Err: err})
	}
	defer r.stopServer(srv)
	s := spec
	s.Addr, s.Expect, s.Passes = srv.Addr(), 304, 1
	// Warm-up: one pass over every device fills the server's poll cache.
	var v304, p304, v200, p200 float64
	if _, err = r.load(ctx, s, file304); err == nil {
		s.Passes = 0
		if v304, p304, err = r.loadReps(ctx, s, file304); err == nil {
			s.Expect = 200
			v200, p200, err = r.loadReps(ctx, s, file200)
		}
	}
	if err != nil {
		return append(rows, Row{Name: "poll_304", Err: err}, Row{Name: "poll_200", Err: err})
	}
	note := fmt.Sprintf("%s devices, each GET /api/v1/device/:uuid/state with its own X-Device-API-Key, 64 connections, %s per repetition; baseline a bare Fiber handler answering from a map in the harness process.",
		FormatValue(float64(f.N), ""), sz.PollDuration)
	rows = append(rows,
		Row{Name: "poll_304", Value: v304, Unit: "req/s", Text: fmt.Sprintf("%s req/s (p99 %.2f ms)", FormatValue(v304, ""), p304),
			Baseline: base304, Goal: ">= 50% of baseline and >= 40,000 req/s", Pass: v304 >= 0.5*base304 && v304 >= 40_000, Note: note},
		Row{Name: "poll_200", Value: v200, Unit: "req/s", Text: fmt.Sprintf("%s req/s (p99 %.2f ms)", FormatValue(v200, ""), p200),
			Baseline: base200, Goal: ">= 40% of baseline", Pass: v200 >= 0.4*base200, Note: "as poll_304 with a stale If-None-Match: the full body."})
	return rows
}

// pollPinned is poll_304 with the server (and, for the baseline, the harness serving bare Fiber) on CPU
// 0 and the load generator on CPU 1, whatever -pin says: both sides get one core, so the ratio compares
// the handlers, not how they share the machine with the generator.
func (r *Runner) pollPinned(ctx context.Context) Row {
	sz := r.o.Sizes
	row := Row{Name: "poll_304_pinned", Unit: "req/s", Goal: ">= 70% of baseline",
		Note: fmt.Sprintf("as poll_304 (%s devices, 64 connections, %s per repetition), with the server under test, or the harness serving the bare Fiber baseline, pinned to CPU 0 and the load generator to CPU 1 (sched_setaffinity); PostgreSQL unpinned (not on the 304 path).",
			FormatValue(float64(sz.PollDevices), ""), sz.PollDuration)}
	if runtime.NumCPU() < 2 {
		row.Err = fmt.Errorf("needs at least 2 CPUs, have %d", runtime.NumCPU())
		return row
	}
	pinned := *r
	pinned.o.Pin = true
	f := Fleet{Prefix: "poll", Fleet: "bench-poll", N: sz.PollDevices, Image: "bench/poll:1.0"}
	if err := r.seed(ctx, f); err != nil {
		row.Err = err
		return row
	}
	entries, err := r.loadPollEntries(ctx, f)
	if err != nil {
		row.Err = err
		return row
	}
	file, err := r.pollRequests(f, entries, true, "poll304pinned")
	if err != nil {
		row.Err = err
		return row
	}
	spec := LoadSpec{Conns: 64, Duration: sz.PollDuration, Expect: 304}
	unpin := pinned.pinHarness()
	addr, stop, err := serveInHarness(baselinePollApp(entries).Handler())
	var base float64
	if err == nil {
		s := spec
		s.Addr = addr
		base, _, err = pinned.loadReps(ctx, s, file)
		stop()
	}
	unpin()
	if err != nil {
		row.Err = fmt.Errorf("baseline: %w", err)
		return row
	}
	srv, err := pinned.startServer(ctx, "poll_pinned")
	if err != nil {
		row.Err = err
		return row
	}
	defer r.stopServer(srv)
	s := spec
	s.Addr, s.Passes = srv.Addr(), 1
	var v, p99 float64
	if _, err = pinned.load(ctx, s, file); err == nil { // warm-up: fills the poll cache
		s.Passes = 0
		v, p99, err = pinned.loadReps(ctx, s, file)
	}
	if err != nil {
		row.Err = err
		return row
	}
	row.Value, row.Baseline = v, base
	row.Text = fmt.Sprintf("%s req/s (p99 %.2f ms)", FormatValue(v, ""), p99)
	row.Pass = v >= 0.7*base
	return row
}
