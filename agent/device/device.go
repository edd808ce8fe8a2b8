// Package device is the agent's engine for one device: it receives target states (NATS push plus a
// JetStream read of the latest on every (re)connect, or HTTP polling with If-None-Match while NATS is
// unreachable), applies each newer one through a runtime.Runtime, runs the services' health checks,
// and reports the current state after every change and on a heartbeat.
//
// Guarantees: a target whose version is not newer than the newest one taken is ignored, whichever path
// brought it (so duplicates and stale messages change nothing, and NATS and HTTP converge on the same
// version); applies are serialised; a report that cannot be sent is kept (only the newest: a report is
// a whole snapshot) and sent when a link returns.
package device

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/fleetshift/fleetshift/agent/client"
	"github.com/fleetshift/fleetshift/agent/health"
	"github.com/fleetshift/fleetshift/agent/runtime"
	"github.com/fleetshift/fleetshift/agent/wire"
)

// DefaultPrefix is the NATS subject prefix unless configured otherwise.
const DefaultPrefix = "fleet"

// Config configures one device's agent.
type Config struct {
	// Identity is the registered device (see Provision).
	Identity client.Identity
	// HTTP is the server's HTTP API; nil leaves the device without the HTTP path.
	HTTP *client.Client
	// NATSURL overrides the NATS url handed out at registration; DisableNATS turns NATS off.
	NATSURL     string
	DisableNATS bool
	// NATSOptions are appended to the agent's own nats.go connection options (when Dial is unset).
	NATSOptions []nats.Option
	// Dial opens the NATS connection (default: NATSGoDialer(NATSOptions...)).
	Dial Dialer
	// Prefix is the subject prefix (default "fleet").
	Prefix string
	// Runtime runs the device's apps (required).
	Runtime runtime.Runtime
	// StateDir keeps the last applied target across restarts; empty keeps nothing.
	StateDir string
	// PollInterval is the HTTP poll period while NATS is unreachable (default 30s); PollJitter is the
	// fraction each wait is randomised by (default 0.2); MaxBackoff caps the exponential backoff after
	// errors (default 5m).
	PollInterval time.Duration
	PollJitter   float64
	MaxBackoff   time.Duration
	// Heartbeat is the period of unconditional reports (default 60s).
	Heartbeat time.Duration
	// RequestTimeout bounds one NATS or HTTP exchange (default 10s).
	RequestTimeout time.Duration
	// Silent, when it returns true, makes the device send nothing (the simulator's device gone dark).
	Silent func() bool
	// Seed seeds the jitter (default: derived from the uuid).
	Seed uint64
	Log  zerolog.Logger
}

// Stats are a device's counters, safe to read while it runs.
type Stats struct {
	// Version is the newest target version applied successfully.
	Version int64
	// Ignored counts offered targets that were not newer than the newest taken.
	Ignored int64
	// Applies counts applies started; ApplyErrors those that failed.
	Applies, ApplyErrors int64
	// ReportsSent counts reports delivered; ReportPending says one is waiting for a link.
	ReportsSent   int64
	ReportPending bool
	// Polls counts HTTP polls made.
	Polls int64
	// Pulls counts prefetch pulls started (each image of a target's prefetch, retries included).
	Pulls int64
}

// Agent is one device's engine.
type Agent struct {
	cfg          Config
	targetSubj   string
	stateSubj    string
	directGet    string
	inboxPrefix  string
	rng          *rand.Rand
	boot         int64
	mu           sync.Mutex
	offered      *wire.DeviceTarget
	wake         chan struct{}
	linkUp       chan struct{}
	version      atomic.Int64
	ignored      atomic.Int64
	applies      atomic.Int64
	applyErrors  atomic.Int64
	reportsSent  atomic.Int64
	pendingFlag  atomic.Bool
	polls        atomic.Int64
	subDenied    atomic.Bool
	nc           Conn
	seen         int64
	current      wire.DeviceTarget
	failed       *wire.DeviceTarget
	etag         string
	pending      []byte
	reportSeq    int64
	healthByName map[string]*wire.Health
	// want are the prefetch images of the newest target taken; downloaded those pulled, pullErrs why
	// the last pull of the others failed. Only the Run goroutine touches them.
	want       []string
	downloaded map[string]bool
	pullErrs   map[string]string
	pulls      atomic.Int64
}

// StreamName returns the JetStream stream holding the latest targets under prefix.
func StreamName(prefix string) string {
	return strings.ToUpper(strings.ReplaceAll(prefix, ".", "_")) + "_TARGETS"
}

// New validates cfg and returns an agent; Run starts it.
func New(cfg Config) (*Agent, error) {
	if cfg.Identity.UUID == "" || cfg.Identity.APIKey == "" {
		return nil, errors.New("device agent: identity needs uuid and api_key")
	}
	if cfg.Runtime == nil {
		return nil, errors.New("device agent: Runtime is required")
	}
	cfg.Prefix = cmp.Or(cfg.Prefix, DefaultPrefix)
	cfg.NATSURL = cmp.Or(cfg.NATSURL, cfg.Identity.NATSURL)
	if cfg.NATSURL == "" {
		cfg.DisableNATS = true
	}
	if cfg.DisableNATS && cfg.HTTP == nil {
		return nil, errors.New("device agent: neither NATS nor HTTP configured")
	}
	cfg.PollInterval = cmp.Or(cfg.PollInterval, 30*time.Second)
	if cfg.PollJitter <= 0 {
		cfg.PollJitter = 0.2
	}
	cfg.PollJitter = min(cfg.PollJitter, 0.9)
	cfg.MaxBackoff = cmp.Or(cfg.MaxBackoff, 5*time.Minute)
	cfg.Heartbeat = cmp.Or(cfg.Heartbeat, 60*time.Second)
	cfg.RequestTimeout = cmp.Or(cfg.RequestTimeout, 10*time.Second)
	if cfg.Seed == 0 {
		h := fnv.New64a()
		h.Write([]byte(cfg.Identity.UUID))
		cfg.Seed = h.Sum64()
	}
	uuid := cfg.Identity.UUID
	a := &Agent{
		cfg:          cfg,
		targetSubj:   cfg.Prefix + ".device." + uuid + ".target",
		stateSubj:    cfg.Prefix + ".device." + uuid + ".state",
		inboxPrefix:  "_INBOX_" + uuid,
		rng:          rand.New(rand.NewPCG(cfg.Seed, uint64(time.Now().UnixNano()))),
		boot:         time.Now().UnixNano(),
		wake:         make(chan struct{}, 1),
		linkUp:       make(chan struct{}, 1),
		healthByName: map[string]*wire.Health{},
		downloaded:   map[string]bool{},
		pullErrs:     map[string]string{},
	}
	a.directGet = "$JS.API.DIRECT.GET." + StreamName(cfg.Prefix) + "." + a.targetSubj
	return a, nil
}

// Stats returns the device's counters.
func (a *Agent) Stats() Stats {
	return Stats{
		Version:       a.version.Load(),
		Ignored:       a.ignored.Load(),
		Applies:       a.applies.Load(),
		ApplyErrors:   a.applyErrors.Load(),
		ReportsSent:   a.reportsSent.Load(),
		ReportPending: a.pendingFlag.Load(),
		Polls:         a.polls.Load(),
		Pulls:         a.pulls.Load(),
	}
}

// Offer hands the agent a target from any source; it is applied only if newer than the newest taken.
// It is safe to call from any goroutine.
func (a *Agent) Offer(t wire.DeviceTarget) {
	a.mu.Lock()
	if a.offered == nil || t.Version > a.offered.Version {
		a.offered = &t
	} else {
		a.ignored.Add(1)
	}
	a.mu.Unlock()
	signal(a.wake)
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

type persisted struct {
	Version int64             `json:"version"`
	Target  wire.DeviceTarget `json:"target"`
}

func (a *Agent) statePath() string { return filepath.Join(a.cfg.StateDir, "target.json") }

func (a *Agent) load() error {
	if a.cfg.StateDir == "" {
		return nil
	}
	b, err := os.ReadFile(a.statePath())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load applied target: %w", err)
	}
	var p persisted
	if err := json.Unmarshal(b, &p); err != nil {
		return fmt.Errorf("load applied target: %w", err)
	}
	a.current = p.Target
	a.seen = p.Version
	a.version.Store(p.Version)
	return nil
}

func (a *Agent) save() error {
	if a.cfg.StateDir == "" {
		return nil
	}
	b, err := json.Marshal(persisted{Version: a.current.Version, Target: a.current})
	if err != nil {
		return fmt.Errorf("save applied target: %w", err)
	}
	if err := os.MkdirAll(a.cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("save applied target: %w", err)
	}
	tmp := a.statePath() + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("save applied target: %w", err)
	}
	return os.Rename(tmp, a.statePath())
}

func (a *Agent) jitter(d time.Duration) time.Duration {
	f := 1 + a.cfg.PollJitter*(2*a.rng.Float64()-1)
	return time.Duration(float64(d) * f)
}

func (a *Agent) connectNATS() error {
	dial := a.cfg.Dial
	if dial == nil {
		dial = NATSGoDialer(a.cfg.NATSOptions...)
	}
	nc, err := dial(ConnSpec{
		URL:         a.cfg.NATSURL,
		Name:        "fleetshift-agent " + a.cfg.Identity.UUID,
		User:        a.cfg.Identity.UUID,
		Password:    a.cfg.Identity.APIKey,
		InboxPrefix: a.inboxPrefix,
		Subject:     a.targetSubj,
		OnMessage: func(data []byte) {
			dt, err := wire.ParseTarget(data, a.cfg.Identity.UUID)
			if err != nil {
				a.cfg.Log.Warn().Err(err).Msg("ignoring unreadable target message")
				return
			}
			a.Offer(dt)
		},
		OnConnect: func() { signal(a.linkUp) },
		OnDisconnect: func(err error) {
			a.cfg.Log.Debug().Err(err).Msg("nats disconnected")
		},
		OnError: func(err error) {
			if errors.Is(err, nats.ErrPermissionViolation) {
				// Pushes cannot reach us: keep the HTTP poll going.
				a.subDenied.Store(true)
			}
			a.cfg.Log.Warn().Err(err).Msg("nats error")
		},
	})
	if err != nil {
		return fmt.Errorf("connect to nats %s: %w", a.cfg.NATSURL, err)
	}
	a.nc = nc
	return nil
}

// fetchLatest reads the newest target message kept in JetStream for this device.
func (a *Agent) fetchLatest(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.RequestTimeout)
	defer cancel()
	m, err := a.nc.Request(ctx, a.directGet, nil, nil)
	if err != nil {
		return fmt.Errorf("read latest target: %w", err)
	}
	switch st := m.Header.Get("Status"); st {
	case "":
	case "404":
		return nil // nothing published yet
	default:
		return fmt.Errorf("read latest target: status %s %s", st, m.Header.Get("Description"))
	}
	dt, err := wire.ParseTarget(m.Data, a.cfg.Identity.UUID)
	if err != nil {
		return fmt.Errorf("read latest target: %w", err)
	}
	a.Offer(dt)
	return nil
}

func (a *Agent) natsUp() bool { return a.nc != nil && a.nc.Connected() && !a.subDenied.Load() }

type applyResult struct {
	target wire.DeviceTarget
	err    error
}

// pullResult is what one round of prefetch pulls did: per image, nil or why it failed.
type pullResult struct {
	errs map[string]error
}

// setWant takes the prefetch images of a target just taken; what was pulled for images no longer
// asked for is forgotten (a later prefetch of one pulls it again, which is cheap when it is there).
func (a *Agent) setWant(t wire.DeviceTarget) {
	a.want = t.PrefetchImages()
	for img := range a.downloaded {
		if !slices.Contains(a.want, img) {
			delete(a.downloaded, img)
		}
	}
	for img := range a.pullErrs {
		if !slices.Contains(a.want, img) {
			delete(a.pullErrs, img)
		}
	}
}

// toPull are the wanted images not pulled yet.
func (a *Agent) toPull() []string {
	var out []string
	for _, img := range a.want {
		if !a.downloaded[img] {
			out = append(out, img)
		}
	}
	return out
}

type healthResult struct {
	version int64
	results map[string]*wire.Health
}

// Run runs the device until ctx ends; it returns nil on a clean stop.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.load(); err != nil {
		return err
	}
	if !a.cfg.DisableNATS {
		if err := a.connectNATS(); err != nil {
			return err
		}
		defer a.nc.Close()
	}
	l := a.newLoop(ctx)
	defer l.stop()
	a.setWant(a.current)
	a.report(ctx)
	l.startPulls()
	// The work is in l's methods, so this frame stays small: a device waiting here keeps a small
	// goroutine stack, which a simulator holding 100,000 devices multiplies.
	for {
		select {
		case <-ctx.Done():
			return nil
		case r := <-l.pullDone:
			l.pulled(r)
		case <-l.pullTimer.C:
			l.startPulls()
		case <-a.linkUp:
			l.linkUp()
		case <-a.wake:
			l.takeOffer()
		case <-l.pollTimer.C:
			l.pollTick()
		case <-l.hbTimer.C:
			l.heartbeat()
		case <-l.retryTimer.C:
			l.retry()
		case r := <-l.applyDone:
			l.applied(r)
		case h := <-l.healthDone:
			l.healthChecked(h)
		}
	}
}

// loop is the state of Run's event loop.
type loop struct {
	a                              *Agent
	ctx                            context.Context
	natsSynced                     bool
	pollTimer, hbTimer, retryTimer *time.Timer
	pollFails, applyFails          int
	applyDone                      chan *applyResult
	healthDone                     chan *healthResult
	applying                       bool
	healthCancel                   context.CancelFunc
	// Prefetch pulls: one round at a time beside any apply (a pull changes no container).
	pullTimer *time.Timer
	pullFails int
	pullDone  chan pullResult
	pulling   bool
	puller    runtime.Puller // nil when the runtime cannot pull ahead
}

func (a *Agent) newLoop(ctx context.Context) *loop {
	firstPoll := time.Duration(0)
	if !a.cfg.DisableNATS {
		// Give NATS a moment before falling back to HTTP; spread a fleet's first polls.
		firstPoll = time.Duration(a.rng.Float64() * float64(a.cfg.PollInterval))
	}
	l := &loop{a: a, ctx: ctx,
		pollTimer:    time.NewTimer(firstPoll),
		hbTimer:      time.NewTimer(a.jitter(a.cfg.Heartbeat)),
		retryTimer:   time.NewTimer(time.Hour),
		applyDone:    make(chan *applyResult, 1),
		healthDone:   make(chan *healthResult, 1),
		healthCancel: func() {},
		pullTimer:    time.NewTimer(time.Hour),
		pullDone:     make(chan pullResult, 1),
	}
	l.retryTimer.Stop()
	l.pullTimer.Stop()
	l.puller, _ = a.cfg.Runtime.(runtime.Puller)
	return l
}

func (l *loop) stop() {
	l.pollTimer.Stop()
	l.hbTimer.Stop()
	l.retryTimer.Stop()
	l.pullTimer.Stop()
	l.healthCancel()
}

// startPulls pulls the wanted images not pulled yet, one at a time, beside any apply: a pull changes no
// container. A failed pull is retried later; it never fails the device.
func (l *loop) startPulls() {
	a := l.a
	if l.pulling {
		return
	}
	todo := a.toPull()
	if len(todo) == 0 {
		return
	}
	if l.puller == nil {
		if _, logged := a.pullErrs[todo[0]]; !logged {
			a.cfg.Log.Warn().Strs("images", todo).Msg("this runtime cannot pull images ahead; they download when applied")
		}
		for _, img := range todo {
			a.pullErrs[img] = "this runtime cannot pull ahead"
		}
		return
	}
	l.pulling = true
	ctx, done, puller := l.ctx, l.pullDone, l.puller
	go func() {
		res := pullResult{errs: make(map[string]error, len(todo))}
		for _, img := range todo {
			a.pulls.Add(1)
			res.errs[img] = puller.Pull(ctx, img)
		}
		done <- res
	}()
}

// pulled records a round of pulls, reports what is downloaded, and retries failures with backoff.
func (l *loop) pulled(r pullResult) {
	a := l.a
	l.pulling = false
	failed := 0
	for img, err := range r.errs {
		if !slices.Contains(a.want, img) {
			continue // no longer asked for
		}
		if err != nil {
			failed++
			a.pullErrs[img] = err.Error()
			a.cfg.Log.Warn().Err(err).Str("image", img).Msg("pull ahead failed; will retry")
			continue
		}
		a.downloaded[img] = true
		delete(a.pullErrs, img)
		a.cfg.Log.Info().Str("image", img).Msg("image downloaded ahead")
	}
	a.report(l.ctx)
	if failed > 0 {
		l.pullFails++
		l.pullTimer.Reset(a.jitter(min(a.cfg.PollInterval<<min(l.pullFails, 20), a.cfg.MaxBackoff)))
		return
	}
	l.pullFails = 0
	l.startPulls() // the target may have asked for more meanwhile
}

func (l *loop) linkUp() {
	a := l.a
	l.natsSynced = false
	if err := a.fetchLatest(l.ctx); err != nil {
		a.cfg.Log.Warn().Err(err).Msg("nats connected but latest target unreadable; HTTP polling continues")
	} else {
		l.natsSynced = true
	}
	a.flush(l.ctx)
}

func (l *loop) startApply(t wire.DeviceTarget) {
	a := l.a
	l.applying = true
	a.applies.Add(1)
	l.healthCancel()
	// Results of the previous target's checks must not be reported for the containers this apply
	// starts (a report during the apply would otherwise call a new, unchecked image healthy); until
	// the new checks finish, reports carry Docker's own health.
	clear(a.healthByName)
	ctx, done := l.ctx, l.applyDone
	go func() {
		err := a.cfg.Runtime.Apply(ctx, t)
		done <- &applyResult{t, err}
	}()
}

func (l *loop) takeOffer() {
	a := l.a
	if l.applying {
		return
	}
	a.mu.Lock()
	t := a.offered
	a.offered = nil
	a.mu.Unlock()
	if t == nil {
		return
	}
	if t.Version <= a.seen {
		a.ignored.Add(1)
		return
	}
	a.seen = t.Version
	a.failed = nil
	a.cfg.Log.Info().Int64("version", t.Version).Msg("applying target")
	l.startApply(*t)
	a.setWant(*t)
	l.startPulls()
}

func (l *loop) pollTick() {
	a := l.a
	next := a.jitter(a.cfg.PollInterval)
	if a.cfg.HTTP != nil && !(l.natsSynced && a.natsUp()) {
		if err := a.poll(l.ctx); err != nil {
			l.pollFails++
			next = a.jitter(min(a.cfg.PollInterval<<min(l.pollFails, 20), a.cfg.MaxBackoff))
			if se := (*client.StatusError)(nil); errors.As(err, &se) && se.RetryAfter > next {
				next = a.jitter(se.RetryAfter) // the server said when to come back
			}
			a.cfg.Log.Debug().Err(err).Dur("next", next).Msg("poll failed; backing off")
		} else {
			l.pollFails = 0
			a.flush(l.ctx) // the link is back: send what waited
		}
	}
	l.pollTimer.Reset(next)
}

func (l *loop) heartbeat() {
	l.a.report(l.ctx)
	l.hbTimer.Reset(l.a.jitter(l.a.cfg.Heartbeat))
}

func (l *loop) retry() {
	if !l.applying && l.a.failed != nil {
		l.startApply(*l.a.failed)
	}
}

func (l *loop) applied(r *applyResult) {
	a := l.a
	l.applying = false
	if r.err != nil {
		a.applyErrors.Add(1)
		l.applyFails++
		a.failed = &r.target
		l.retryTimer.Reset(a.jitter(min(a.cfg.PollInterval<<min(l.applyFails, 20), a.cfg.MaxBackoff)))
		a.cfg.Log.Warn().Err(r.err).Int64("version", r.target.Version).Msg("apply failed; will retry")
	} else {
		l.applyFails = 0
		a.failed = nil
		a.current = r.target
		a.version.Store(r.target.Version)
		if err := a.save(); err != nil {
			a.cfg.Log.Warn().Err(err).Msg("keep applied target")
		}
		hctx, cancel := context.WithCancel(l.ctx)
		l.healthCancel = cancel
		a.startHealth(hctx, r.target, l.healthDone)
	}
	a.report(l.ctx)
	l.takeOffer()
}

func (l *loop) healthChecked(h *healthResult) {
	if h.version == l.a.current.Version {
		maps.Copy(l.a.healthByName, h.results)
		l.a.report(l.ctx)
	}
}

func (a *Agent) poll(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.RequestTimeout)
	defer cancel()
	a.polls.Add(1)
	st, err := a.cfg.HTTP.GetState(ctx, a.cfg.Identity.UUID, a.cfg.Identity.APIKey, a.etag)
	if err != nil {
		return err
	}
	if st.NotModified {
		return nil
	}
	dt, err := wire.ParseTarget(st.Body, a.cfg.Identity.UUID)
	if err != nil {
		return fmt.Errorf("poll target: %w", err)
	}
	a.etag = st.ETag
	a.Offer(dt)
	return nil
}

// startHealth runs the health checks of target's services, reporting "starting" until they finish.
func (a *Agent) startHealth(ctx context.Context, t wire.DeviceTarget, done chan<- *healthResult) {
	clear(a.healthByName)
	type job struct {
		key  string
		cfg  health.Config
		app  string
		name string
	}
	var jobs []job
	for _, appID := range slices.Sorted(maps.Keys(t.Apps)) {
		for _, s := range t.Apps[appID].Services {
			raw := s.HealthCheckJSON()
			if raw == nil {
				continue
			}
			key := appID + "/" + s.ServiceName
			c, err := health.Parse(raw)
			if err != nil {
				a.healthByName[key] = &wire.Health{Status: wire.Unhealthy, Details: map[string]any{"detail": err.Error()}}
				continue
			}
			a.healthByName[key] = &wire.Health{Status: wire.Starting}
			jobs = append(jobs, job{key, c, appID, s.ServiceName})
		}
	}
	if len(jobs) == 0 {
		return
	}
	go func() {
		var mu sync.Mutex
		var wg sync.WaitGroup
		results := map[string]*wire.Health{}
		for _, j := range jobs {
			wg.Go(func() {
				probe := func(ctx context.Context) (string, string, error) { return a.containerState(ctx, j.app, j.name) }
				r := health.Run(ctx, j.cfg, probe)
				mu.Lock()
				results[j.key] = r.Health()
				mu.Unlock()
			})
		}
		wg.Wait()
		if ctx.Err() != nil {
			return // superseded by a newer apply
		}
		select {
		case done <- &healthResult{version: t.Version, results: results}:
		case <-ctx.Done():
		}
	}()
}

func (a *Agent) containerState(ctx context.Context, app, service string) (string, string, error) {
	apps, err := a.cfg.Runtime.State(ctx)
	if err != nil {
		return "", "", err
	}
	for _, s := range apps[app].Services {
		if s.ServiceName == service {
			h := ""
			if s.Health != nil {
				h = s.Health.Status
			}
			return s.Status, h, nil
		}
	}
	return "missing", "", nil
}

// report builds the current state and sends it (or keeps it until a link returns).
func (a *Agent) report(ctx context.Context) {
	apps, err := a.cfg.Runtime.State(ctx)
	if err != nil {
		a.cfg.Log.Warn().Err(err).Msg("read runtime state")
		return
	}
	for appID, ra := range apps {
		for i, s := range ra.Services {
			if h, ok := a.healthByName[appID+"/"+s.ServiceName]; ok {
				ra.Services[i].Health = h
			}
		}
		apps[appID] = ra
	}
	rep := wire.DeviceReport{Apps: apps, Version: a.current.Version}
	for _, img := range a.want {
		if a.downloaded[img] {
			rep.Downloaded = append(rep.Downloaded, img)
		} else if e, ok := a.pullErrs[img]; ok {
			if rep.DownloadErrors == nil {
				rep.DownloadErrors = map[string]string{}
			}
			rep.DownloadErrors[img] = boundError(e)
		}
	}
	body, err := json.Marshal(wire.Report{a.cfg.Identity.UUID: rep})
	if err != nil {
		a.cfg.Log.Warn().Err(err).Msg("encode report")
		return
	}
	a.pending = body
	a.reportSeq++
	a.pendingFlag.Store(true)
	a.flush(ctx)
}

// flush sends the pending report over NATS (acknowledged by JetStream) or else HTTP.
func (a *Agent) flush(ctx context.Context) {
	if a.pending == nil {
		return
	}
	if a.cfg.Silent != nil && a.cfg.Silent() {
		a.pending = nil
		a.pendingFlag.Store(false)
		return
	}
	sent := false
	if a.natsUp() {
		if err := a.publish(ctx); err != nil {
			a.cfg.Log.Debug().Err(err).Msg("report over nats failed")
		} else {
			sent = true
		}
	}
	if !sent && a.cfg.HTTP != nil {
		hctx, cancel := context.WithTimeout(ctx, a.cfg.RequestTimeout)
		err := a.cfg.HTTP.PatchState(hctx, a.cfg.Identity.APIKey, a.pending)
		cancel()
		if err != nil {
			a.cfg.Log.Debug().Err(err).Msg("report over http failed; kept for later")
		} else {
			sent = true
		}
	}
	if sent {
		a.pending = nil
		a.pendingFlag.Store(false)
		a.reportsSent.Add(1)
	}
}

func (a *Agent) publish(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.RequestTimeout)
	defer cancel()
	hdr := nats.Header{"Nats-Msg-Id": {fmt.Sprintf("%s-%d-%d", a.cfg.Identity.UUID, a.boot, a.reportSeq)}}
	resp, err := a.nc.Request(ctx, a.stateSubj, hdr, a.pending)
	if err != nil {
		return fmt.Errorf("publish report: %w", err)
	}
	var ack struct {
		Error *struct {
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(resp.Data, &ack); err == nil && ack.Error != nil {
		return fmt.Errorf("publish report: %s", ack.Error.Description)
	}
	return nil
}

// boundError keeps a pull error short enough for a report (its end says most: the registry's answer).
func boundError(e string) string {
	const limit = 512
	if len(e) <= limit {
		return e
	}
	e = e[len(e)-limit:]
	for len(e) > 0 && !utf8.RuneStart(e[0]) {
		e = e[1:]
	}
	return e
}
