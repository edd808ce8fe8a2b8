package sim

import (
	"context"
	"fmt"
	"hash/fnv"
	"maps"
	"math"
	"math/rand/v2"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fleetshift/fleetshift/agent/wire"
)

// Rate is a --fail-rate or --silent-rate rule: images matching Glob (path.Match over "repo:tag", also
// tried without docker.io/ and docker.io/library/, digest ignored) are affected with probability P.
type Rate struct {
	Glob string
	P    float64
}

// ParseRate reads "GLOB=P".
func ParseRate(s string) (Rate, error) {
	i := strings.LastIndex(s, "=")
	if i <= 0 {
		return Rate{}, fmt.Errorf("rate %q: want GLOB=P", s)
	}
	var p float64
	if _, err := fmt.Sscanf(s[i+1:], "%g", &p); err != nil || p < 0 || p > 1 {
		return Rate{}, fmt.Errorf("rate %q: P must be a number in [0,1]", s)
	}
	if _, err := path.Match(s[:i], ""); err != nil {
		return Rate{}, fmt.Errorf("rate %q: %w", s, err)
	}
	return Rate{Glob: s[:i], P: p}, nil
}

func imageForms(image string) []string {
	if i := strings.Index(image, "@"); i >= 0 {
		image = image[:i]
	}
	forms := []string{image}
	for _, p := range []string{"docker.io/library/", "docker.io/", "index.docker.io/library/", "index.docker.io/"} {
		if rest, ok := strings.CutPrefix(image, p); ok {
			forms = append(forms, rest)
		}
	}
	return forms
}

func matchRate(rates []Rate, image string) (float64, bool) {
	for _, r := range rates {
		for _, f := range imageForms(image) {
			if ok, _ := path.Match(r.Glob, f); ok {
				return r.P, true
			}
		}
	}
	return 0, false
}

// draw returns a reproducible number in [0,1) for (seed, device index, salt, image).
func draw(seed uint64, index int, salt, image string) float64 {
	h := fnv.New64a()
	fmt.Fprintf(h, "%d/%d/%s/%s", seed, index, salt, image)
	return float64(h.Sum64()>>11) / float64(1<<53)
}

type simService struct {
	name, image, status, health string
	// retry is the target's retry counter the service was started for; reason and log say why it failed.
	retry       int
	reason, log string
}

// deviceRuntime is the simulator's in-memory runtime.Runtime for one device: pulling takes a random
// time in the configured range, then the image runs; images matching a fail rule end unhealthy, and one
// matching a silent rule silences the device for good.
type deviceRuntime struct {
	sim     *Sim
	index   int
	silent  atomic.Bool
	mu      sync.Mutex
	apps    map[string][]simService
	pulling int
	// attempts counts the starts of each image (a retry starts it again).
	attempts map[string]int
	// pulled are the images downloaded ahead (Pull): starting one of them takes no pull time.
	pulled map[string]bool
}

// Pull implements runtime.Puller: a simulated download of image (the configured pull time), changing
// nothing that runs; a later Apply naming image starts it without pulling.
func (r *deviceRuntime) Pull(ctx context.Context, image string) error {
	r.mu.Lock()
	done := r.pulled[image]
	r.mu.Unlock()
	if done {
		return nil
	}
	t := time.NewTimer(r.pullTime(image))
	select {
	case <-ctx.Done():
		t.Stop()
		return fmt.Errorf("simulated pull of %s: %w", image, ctx.Err())
	case <-t.C:
	}
	r.mu.Lock()
	if r.pulled == nil {
		r.pulled = map[string]bool{}
	}
	r.pulled[image] = true
	r.mu.Unlock()
	return nil
}

// pulledImages lists the images downloaded ahead on this device.
func (r *deviceRuntime) pulledImages() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Collect(maps.Keys(r.pulled))
}

// Fails reports whether the device of index ends unhealthy on image under rates and seed: the
// simulator's own decision, so a harness knows which devices are healthy without asking them.
func Fails(rates []Rate, seed uint64, index int, image string) bool {
	p, ok := matchRate(rates, image)
	return ok && draw(seed, index, "fail", image) < p
}

// outcome decides how attempt (from 1) of image ends on this device. A failing service carries a
// reason and a fabricated log tail, as a real agent's failed container would.
func (r *deviceRuntime) outcome(image string, attempt int) simService {
	cfg := &r.sim.cfg
	if Fails(cfg.FailRates, cfg.Seed, r.index, image) && (cfg.FailAttempts <= 0 || attempt <= cfg.FailAttempts) {
		// Its health check fails (or, for one in four of them, its container exits).
		if draw(cfg.Seed, r.index, "exit", image) < 0.25 {
			return simService{image: image, status: "exited", reason: "container exited with code 1",
				log: fabricatedLog(image, attempt, "fatal: listen tcp :8080: bind: address already in use")}
		}
		return simService{image: image, status: "running", health: wire.Unhealthy,
			reason: "GET http://127.0.0.1:8080/healthz answered 500 Internal Server Error",
			log:    fabricatedLog(image, attempt, "error: database connection refused; /healthz answers 500")}
	}
	return simService{image: image, status: "running", health: wire.Healthy}
}

// fabricatedLog is a failed container's log as the simulator makes it up: more lines than a report
// carries, ending in last, bounded like a real agent's tail (wire.TailLog).
func fabricatedLog(image string, attempt int, last string) string {
	var b strings.Builder
	for i := 1; i <= wire.LogTailLines+10; i++ {
		fmt.Fprintf(&b, "%s attempt %d: starting worker %d\n", image, attempt, i)
	}
	b.WriteString(last)
	return wire.TailLog(b.String())
}

func (r *deviceRuntime) pullTime(image string) time.Duration {
	cfg := &r.sim.cfg
	span := cfg.PullMax - cfg.PullMin
	if span <= 0 {
		return cfg.PullMin
	}
	u := rand.Float64() // pull times need not be reproducible, outcomes are
	return cfg.PullMin + time.Duration(math.Floor(u*float64(span)))
}

// Apply implements runtime.Runtime.
func (r *deviceRuntime) Apply(ctx context.Context, t wire.DeviceTarget) error {
	r.mu.Lock()
	old := r.apps
	var wait time.Duration
	next := map[string][]simService{}
	for appID, app := range t.Apps {
		prev := map[string]simService{}
		for _, s := range old[appID] {
			prev[s.name] = s
		}
		for _, s := range app.Services {
			img := s.Image()
			if p, ok := prev[s.ServiceName]; ok && p.image == img && p.retry == s.Retry {
				next[appID] = append(next[appID], p)
				continue
			}
			if !r.pulled[img] {
				wait = max(wait, r.pullTime(img))
			}
			if r.attempts == nil {
				r.attempts = map[string]int{}
			}
			r.attempts[img]++
			svc := r.outcome(img, r.attempts[img])
			svc.name, svc.retry = s.ServiceName, s.Retry
			next[appID] = append(next[appID], svc)
			if p, ok := matchRate(r.sim.cfg.SilentRates, img); ok && draw(r.sim.cfg.Seed, r.index, "silent", img) < p {
				defer r.silent.Store(true)
			}
		}
	}
	r.pulling++
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.pulling--
		r.mu.Unlock()
	}()
	if wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("simulated pull: %w", ctx.Err())
		case <-t.C:
		}
	}
	r.mu.Lock()
	r.apps = next
	r.mu.Unlock()
	return nil
}

// State implements runtime.Runtime.
func (r *deviceRuntime) State(context.Context) (map[string]wire.ReportedApp, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]wire.ReportedApp, len(r.apps))
	for appID, svcs := range r.apps {
		ra := wire.ReportedApp{AppName: "sim", Services: make([]wire.ReportedService, 0, len(svcs))}
		for _, s := range svcs {
			rs := wire.ReportedService{ServiceName: s.name, ImageName: s.image, Status: s.status, Error: s.reason, LogTail: s.log}
			if s.health != "" {
				rs.Health = &wire.Health{Status: s.health}
			}
			ra.Services = append(ra.Services, rs)
		}
		out[appID] = ra
	}
	return out, nil
}

// snapshot summarises the device for the counters.
func (r *deviceRuntime) snapshot() (images string, healthy, failed, updating bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var imgs []string
	healthy = len(r.apps) > 0
	for _, appID := range slices.Sorted(maps.Keys(r.apps)) {
		for _, s := range r.apps[appID] {
			imgs = append(imgs, s.image)
			if s.status != "running" || s.health == wire.Unhealthy {
				failed = true
				healthy = false
			}
		}
	}
	return strings.Join(imgs, ","), healthy, failed, r.pulling > 0
}
