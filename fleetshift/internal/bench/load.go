package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// Request is one HTTP request the load generator sends: a GET of Path with Headers.
type Request struct {
	Path    string
	Headers [][2]string
}

// WriteRequests writes reqs in the format ParseRequests reads: one request a line, the path then each
// header as "Name: value", separated by tabs.
func WriteRequests(w io.Writer, reqs []Request) error {
	bw := bufio.NewWriter(w)
	for _, r := range reqs {
		if err := writeRequest(bw, r); err != nil {
			return err
		}
	}
	return bw.Flush()
}

func writeRequest(w *bufio.Writer, r Request) error {
	if r.Path == "" || strings.ContainsAny(r.Path, "\t\n") {
		return fmt.Errorf("request path %q: must be non-empty without tabs or newlines", r.Path)
	}
	w.WriteString(r.Path)
	for _, h := range r.Headers {
		if strings.ContainsAny(h[0]+h[1], "\t\n") || h[0] == "" || strings.Contains(h[0], ":") {
			return fmt.Errorf("request header %q: invalid", h[0])
		}
		w.WriteByte('\t')
		w.WriteString(h[0])
		w.WriteString(": ")
		w.WriteString(h[1])
	}
	return w.WriteByte('\n')
}

// ParseRequests reads requests written by WriteRequests. Blank lines are skipped; a line whose path does
// not start with "/" or whose header has no colon is an error naming the line.
func ParseRequests(r io.Reader) ([]Request, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var out []Request
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimRight(sc.Text(), "\r")
		if strings.TrimSpace(line) == "" {
			continue
		}
		fields := strings.Split(line, "\t")
		if !strings.HasPrefix(fields[0], "/") {
			return nil, fmt.Errorf("requests line %d: path %q must start with /", n, fields[0])
		}
		req := Request{Path: fields[0]}
		for _, f := range fields[1:] {
			k, v, ok := strings.Cut(f, ":")
			if !ok || strings.TrimSpace(k) == "" {
				return nil, fmt.Errorf("requests line %d: header %q: want Name: value", n, f)
			}
			req.Headers = append(req.Headers, [2]string{strings.TrimSpace(k), strings.TrimSpace(v)})
		}
		out = append(out, req)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read requests: %w", err)
	}
	if len(out) == 0 {
		return nil, errors.New("read requests: none")
	}
	return out, nil
}

// LoadSpec says what the load generator does.
type LoadSpec struct {
	// Addr is the server's host:port.
	Addr string
	// Conns is the number of connections, each driven by one worker (default 64).
	Conns int
	// Duration bounds the run; Passes, when > 0, instead sends every request exactly Passes times.
	Duration time.Duration
	Passes   int
	// Expect is the status every response must have; others are counted as Unexpected.
	Expect int
	// Requests are cycled through in order, shared by all workers.
	Requests []Request
}

// LoadResult is what a load run measured. Latencies are in microseconds.
type LoadResult struct {
	Requests   int64   `json:"requests"`
	Errors     int64   `json:"errors"`     // transport errors
	Unexpected int64   `json:"unexpected"` // responses with another status than Expect
	Seconds    float64 `json:"seconds"`
	RPS        float64 `json:"rps"`
	P50        float64 `json:"p50_us"`
	P90        float64 `json:"p90_us"`
	P99        float64 `json:"p99_us"`
	Max        float64 `json:"max_us"`
	// FirstFailure describes the first error or unexpected status, for diagnosis.
	FirstFailure string `json:"first_failure,omitempty"`
}

// OK reports whether every request got the expected status.
func (r LoadResult) OK() error {
	if r.Errors > 0 || r.Unexpected > 0 {
		return fmt.Errorf("%d transport errors, %d unexpected statuses of %d requests (first: %s)",
			r.Errors, r.Unexpected, r.Requests, r.FirstFailure)
	}
	if r.Requests == 0 {
		return errors.New("no request completed")
	}
	return nil
}

// ParseLoadResult decodes the JSON line a load child prints.
func ParseLoadResult(b []byte) (LoadResult, error) {
	var r LoadResult
	if err := json.Unmarshal(b, &r); err != nil {
		return LoadResult{}, fmt.Errorf("decode load result %q: %w", strings.TrimSpace(string(b)), err)
	}
	return r, nil
}

// ParseLoadArgs reads the load subcommand's flags: -addr, -requests (a file in WriteRequests format),
// -conns, -duration, -passes, -expect.
func ParseLoadArgs(args []string) (LoadSpec, error) {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var s LoadSpec
	var file string
	fs.StringVar(&s.Addr, "addr", "", "server host:port")
	fs.StringVar(&file, "requests", "", "requests file")
	fs.IntVar(&s.Conns, "conns", 64, "connections")
	fs.DurationVar(&s.Duration, "duration", 5*time.Second, "how long to send")
	fs.IntVar(&s.Passes, "passes", 0, "send every request this many times instead of for a duration")
	fs.IntVar(&s.Expect, "expect", 200, "expected status")
	if err := fs.Parse(args); err != nil {
		return LoadSpec{}, fmt.Errorf("load: %w", err)
	}
	switch {
	case s.Addr == "":
		return LoadSpec{}, errors.New("load: -addr is required")
	case file == "":
		return LoadSpec{}, errors.New("load: -requests is required")
	case s.Conns < 1:
		return LoadSpec{}, errors.New("load: -conns must be >= 1")
	case s.Passes == 0 && s.Duration <= 0:
		return LoadSpec{}, errors.New("load: -duration must be > 0")
	case s.Expect < 100 || s.Expect > 599:
		return LoadSpec{}, fmt.Errorf("load: -expect %d is not an HTTP status", s.Expect)
	}
	f, err := os.Open(file)
	if err != nil {
		return LoadSpec{}, fmt.Errorf("load: %w", err)
	}
	defer f.Close()
	if s.Requests, err = ParseRequests(f); err != nil {
		return LoadSpec{}, fmt.Errorf("load: %w", err)
	}
	return s, nil
}

// LoadArgs renders spec (with requests stored in file) as ParseLoadArgs reads it.
func LoadArgs(spec LoadSpec, file string) []string {
	args := []string{"-addr", spec.Addr, "-requests", file, "-conns", fmt.Sprint(max(spec.Conns, 1)),
		"-expect", fmt.Sprint(spec.Expect)}
	if spec.Passes > 0 {
		return append(args, "-passes", fmt.Sprint(spec.Passes))
	}
	return append(args, "-duration", spec.Duration.String())
}

// RunLoad drives spec against its server with a fasthttp HostClient of spec.Conns connections and
// measures throughput and latency. It runs in the load generator's own process (the `load` subcommand).
func RunLoad(ctx context.Context, spec LoadSpec) LoadResult {
	conns := max(spec.Conns, 1)
	client := &fasthttp.HostClient{
		Addr:                          spec.Addr,
		MaxConns:                      conns,
		MaxIdleConnDuration:           time.Minute,
		ReadTimeout:                   10 * time.Second,
		WriteTimeout:                  10 * time.Second,
		NoDefaultUserAgentHeader:      true,
		DisableHeaderNamesNormalizing: true,
		MaxConnWaitTimeout:            10 * time.Second,
	}
	total := int64(len(spec.Requests)) * int64(spec.Passes)
	var (
		next              atomic.Int64
		nErr, nUnexpected atomic.Int64
		firstMu           sync.Mutex
		firstFailure      string
		wg                sync.WaitGroup
		lat               = make([][]float64, conns)
		deadline          = time.Now().Add(spec.Duration)
		stop              atomic.Bool
	)
	fail := func(s string) {
		firstMu.Lock()
		if firstFailure == "" {
			firstFailure = s
		}
		firstMu.Unlock()
	}
	if spec.Passes == 0 {
		t := time.AfterFunc(spec.Duration, func() { stop.Store(true) })
		defer t.Stop()
	}
	start := time.Now()
	for w := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := fasthttp.AcquireRequest()
			res := fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(res)
			mine := make([]float64, 0, 4096)
			for !stop.Load() && ctx.Err() == nil {
				i := next.Add(1) - 1
				if total > 0 && i >= total {
					break
				}
				r := spec.Requests[i%int64(len(spec.Requests))]
				req.Reset()
				req.SetRequestURI(r.Path)
				req.Header.SetHost(spec.Addr)
				for _, h := range r.Headers {
					req.Header.Set(h[0], h[1])
				}
				t0 := time.Now()
				err := client.Do(req, res)
				d := time.Since(t0)
				switch {
				case err != nil:
					nErr.Add(1)
					fail(err.Error())
				case res.StatusCode() != spec.Expect:
					nUnexpected.Add(1)
					fail(fmt.Sprintf("GET %s: status %d, want %d: %.200s", r.Path, res.StatusCode(), spec.Expect, res.Body()))
				}
				mine = append(mine, float64(d.Microseconds()))
				if spec.Passes == 0 && len(mine)&1023 == 0 && time.Now().After(deadline) {
					break
				}
			}
			lat[w] = mine
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	var all []float64
	for _, l := range lat {
		all = append(all, l...)
	}
	res := LoadResult{
		Requests:     int64(len(all)),
		Errors:       nErr.Load(),
		Unexpected:   nUnexpected.Load(),
		Seconds:      elapsed.Seconds(),
		FirstFailure: firstFailure,
	}
	if elapsed > 0 {
		res.RPS = float64(len(all)) / elapsed.Seconds()
	}
	if len(all) > 0 {
		slices.Sort(all)
		res.P50, res.P90, res.P99 = percentileSorted(all, 50), percentileSorted(all, 90), percentileSorted(all, 99)
		res.Max = all[len(all)-1]
	}
	return res
}
