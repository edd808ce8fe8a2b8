// Package chaos is fleetshift's fault-injection harness (`make chaos`). Each run is seeded: it starts
// fleetshift as separate processes over a PostgreSQL cluster the harness owns, 2,000 simulated devices
// (agent/sim, in their own processes) with a seeded failure mix, pushes one image, and while the staged
// rollout runs injects seeded faults: kill -9 of `serve` or of one replica of a service, PostgreSQL
// stopped for 10-30 s, a quarter of the devices cut off (SIGSTOP) and brought back, and poison messages.
// In cluster mode NATS is a 3-node JetStream cluster with R3 streams (natscluster.go), and a node is
// killed (kill -9) or cut off from the others and the clients. After the rollout settles it checks the
// invariants (check.go) and prints a table row per run.
package chaos

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/fleetshift/fleetshift/fleetshift/internal/secrets"
	"github.com/fleetshift/fleetshift/shared/broker"
	"github.com/fleetshift/fleetshift/shared/natsauth"
	"github.com/fleetshift/fleetshift/shared/pg"
	"github.com/fleetshift/fleetshift/streams"
)

// Modes.
const (
	ModeServe    = "serve"
	ModeServices = "services"
	// ModeCluster is mode services over a 3-node NATS cluster instead of the core's embedded NATS.
	ModeCluster = "cluster"
)

// Modes lists the modes a run may have.
var Modes = []string{ModeServe, ModeServices, ModeCluster}

// Fault kinds.
const (
	FaultKill   = "kill-9"
	FaultPG     = "pg-stop"
	FaultCutoff = "devices-cut"
	FaultPoison = "poison"
	// FaultNATSKill and FaultNATSCut happen in cluster mode only.
	FaultNATSKill = "nats-kill-9"
	FaultNATSCut  = "nats-cut"
	fleet         = "chaos"
	repoName      = "chaos/app"
	repository    = "docker.io/chaos/app"
	oldTag        = "1.0"
	newTag        = "2.0"
	poisonRepo    = "chaos/poison"
	failRateGlob  = "chaos/app:2.*"
)

// Options configure Run.
type Options struct {
	Runs int
	// Seed of the first run; run i uses Seed+i.
	Seed    uint64
	Devices int
	// Sims is the number of simulator processes the devices are spread over.
	Sims int
	// Mode forces every run's mode (one of Modes); empty means the seeded choice.
	Mode string
	// Timeout bounds one rollout (push to settled).
	Timeout time.Duration
	// Out receives the tables; Progress one line per step.
	Out, Progress io.Writer
}

// Fault is one injected fault and what it cost.
type Fault struct {
	Kind, Target string
	// At is when it started after the push; Down how long the component was away; Recovery from its
	// return until the system answered again (readyz, or the restarted process serving).
	At, Down, Recovery time.Duration
	Note               string
}

// Result is one run.
type Result struct {
	Run  int
	Seed uint64
	Mode string
	// NATS describes cluster mode's nodes (empty in the other modes).
	NATS      string
	FailP     float64
	Rollback  bool
	Faults    []Fault
	Status    string
	Rows      map[string]int
	Duration  time.Duration
	Violation []string
}

// Run executes o.Runs seeded runs, printing a table per run and the summary line; it returns the
// results (an error only when the harness itself cannot start).
func Run(ctx context.Context, o Options) ([]Result, error) {
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	tmp, err := os.MkdirTemp("", "fs-chaos-")
	if err != nil {
		return nil, fmt.Errorf("chaos: temp dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	progress(o, "starting PostgreSQL in %s", tmp)
	cluster, err := startPG(ctx, filepath.Join(tmp, "pg"))
	if err != nil {
		return nil, fmt.Errorf("chaos: %w", err)
	}
	defer func() { _ = cluster.down() }()
	var results []Result
	for i := range o.Runs {
		if ctx.Err() != nil {
			break
		}
		seed := o.Seed + uint64(i)
		r := runOne(ctx, o, cluster, filepath.Join(tmp, fmt.Sprintf("run%d", i)), i+1, seed)
		results = append(results, r)
		printRun(o.Out, r)
	}
	v := 0
	for _, r := range results {
		v += len(r.Violation)
	}
	fmt.Fprintf(o.Out, "chaos: %d runs, %d violations\n", len(results), v)
	printSummary(o.Out, results)
	return results, nil
}

func progress(o Options, format string, args ...any) {
	fmt.Fprintf(o.Progress, time.Now().Format("15:04:05")+" "+format+"\n", args...)
}

// plan is the seeded choice of a run.
type plan struct {
	mode     string
	failP    float64
	maxRate  float64
	rollback bool
	delay    int
	// cutNode is the index of the NATS node that runs in the network namespace (cluster mode).
	cutNode int
	faults  []Fault
}

// choose draws run seed's plan; force, when not empty, sets the mode. A third of the seeds are cluster
// mode, by a draw of their own: the others keep the plan they had before cluster mode existed.
func choose(seed uint64, force string) plan {
	rng := rand.New(rand.NewPCG(seed, 0xc4a05))
	mode := []string{ModeServe, ModeServices}[rng.IntN(2)]
	if rand.New(rand.NewPCG(seed, 0xc1057e4)).IntN(3) == 0 {
		mode = ModeCluster
	}
	if force != "" {
		mode = force
	}
	p := plan{mode: mode, failP: []float64{0, 0.02, 0.05, 0.3}[rng.IntN(4)],
		maxRate: 0.15, rollback: rng.IntN(2) == 0, delay: rng.IntN(3)}
	sec := func(lo, hi int) time.Duration { return time.Duration(lo+rng.IntN(hi-lo+1)) * time.Second }
	kinds := []string{FaultKill, FaultPG, FaultCutoff}
	rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
	kinds = kinds[:1+rng.IntN(len(kinds))]
	if p.mode == ModeCluster {
		// At least one NATS fault: what cluster mode is for.
		nk := []string{FaultNATSKill, FaultNATSCut}
		rng.Shuffle(len(nk), func(i, j int) { nk[i], nk[j] = nk[j], nk[i] })
		kinds = append(kinds, nk[:1+rng.IntN(len(nk))]...)
		p.cutNode = rng.IntN(natsNodes)
	}
	kinds = append(kinds, FaultPoison)
	for _, k := range kinds {
		f := Fault{Kind: k, At: sec(1, 20)}
		switch k {
		case FaultNATSKill:
			f.Down = sec(0, 3)
			f.Target = fmt.Sprintf("nats-%d", 1+rng.IntN(natsNodes))
		case FaultNATSCut:
			f.Down = sec(5, 20)
			f.Target = fmt.Sprintf("nats-%d", 1+p.cutNode)
		case FaultKill:
			f.Down = sec(0, 3)
			if p.mode != ModeServe {
				f.Target = fmt.Sprintf("%s-%d", []string{"planner", "dispatcher", "healthwatch"}[rng.IntN(3)], rng.IntN(2))
			} else {
				f.Target = "serve"
			}
		case FaultPG:
			f.Down = sec(10, 30)
			f.Target = "postgres"
		case FaultCutoff:
			f.Down = sec(5, 20)
			f.Target = fmt.Sprintf("s%d", rng.IntN(4))
		case FaultPoison:
			f.Target = "report NUL, dispatch batch > int4, webhook pusher NUL"
		}
		p.faults = append(p.faults, f)
	}
	slices.SortFunc(p.faults, func(a, b Fault) int { return int(a.At - b.At) })
	return p
}

// env is one run's running system and the harness's connections to it.
type env struct {
	o   Options
	pgc *pgCluster
	dep *deployment
	// nats is the run's NATS cluster (cluster mode; nil otherwise).
	nats    *natsCluster
	sims    []*simProc
	db      *pgxpool.Pool
	dbURL   string
	nc      *nats.Conn
	js      jetstream.JetStream
	subj    streams.Subjects
	api     *api
	rollout string
	// poisoned: the poison messages were sent; poisonErr: the system's answer to one was wrong.
	poisoned  bool
	poisonErr string
}

func runOne(ctx context.Context, o Options, cluster *pgCluster, dir string, n int, seed uint64) Result {
	p := choose(seed, o.Mode)
	res := Result{Run: n, Seed: seed, Mode: p.mode, FailP: p.failP, Rollback: p.rollback, Rows: map[string]int{}}
	fail := func(format string, args ...any) Result {
		res.Violation = append(res.Violation, fmt.Sprintf(format, args...))
		return res
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fail("harness: %v", err)
	}
	defer os.RemoveAll(dir)
	progress(o, "run %d seed %d: mode %s, fail rate %.2f, auto rollback %v", n, seed, p.mode, p.failP, p.rollback)
	scratch, err := pg.CreateScratch(ctx, cluster.url(), "chaos_")
	if err != nil {
		return fail("harness: %v", err)
	}
	defer func() { _ = scratch.Drop(ctx) }()
	svc, err := secrets.Ensure(dir, "nats-service-password", "")
	if err != nil {
		return fail("harness: %v", err)
	}
	e := &env{o: o, pgc: cluster, dbURL: scratch.URL, subj: streams.New("")}
	var ext *externalNATS
	if p.mode == ModeCluster {
		if ext, err = e.startNATS(ctx, dir, n, p, svc.Secret); err != nil {
			return fail("harness: %v", err)
		}
		defer e.nats.stop()
		res.NATS = e.nats.describe()
	}
	admin, webhook := secrets.New(), secrets.New()
	e.dep, err = startDeployment(ctx, p.mode, scratch.URL, dir, admin, webhook, svc.Secret, ext)
	if err != nil {
		return fail("harness: %v", err)
	}
	defer e.dep.stop()
	e.api = &api{base: e.dep.core.hello.HTTPURL, admin: admin, webhook: webhook}
	if e.db, err = pgxpool.New(ctx, scratch.URL); err != nil {
		return fail("harness: %v", err)
	}
	defer e.db.Close()
	if e.nc, err = broker.Connect(e.dep.core.hello.NATSURL, "fleetshift-chaos", broker.Credentials{User: broker.ServiceUser, Password: svc.Secret}); err != nil {
		return fail("harness: %v", err)
	}
	defer e.nc.Close()
	if e.js, err = jetstream.New(e.nc); err != nil {
		return fail("harness: %v", err)
	}
	if err := e.setup(ctx, p, seed); err != nil {
		return fail("harness: %v", err)
	}
	defer func() {
		for _, s := range e.sims {
			s.stop()
		}
	}()
	start := time.Now()
	if err := e.api.push(ctx, repoName, newTag, "chaos"); err != nil {
		return fail("push: %v", err)
	}
	// The registry redelivers the same delivery: still one rollout.
	if err := e.api.push(ctx, repoName, newTag, "chaos"); err != nil {
		return fail("push again: %v", err)
	}
	var wg sync.WaitGroup
	faults := make([]Fault, len(p.faults))
	wg.Go(func() {
		for i, f := range p.faults {
			if d := time.Until(start.Add(f.At)); d > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(d):
				}
			}
			faults[i] = e.inject(ctx, f)
		}
	})
	status, err := e.waitSettled(ctx, start, o.Timeout)
	wg.Wait()
	res.Faults = faults
	res.Duration = time.Since(start)
	res.Status = status
	if err != nil {
		res.Violation = append(res.Violation, err.Error())
	}
	if e.rollout != "" {
		res.Violation = append(res.Violation, e.waitDevicesRun(ctx)...)
	}
	// The devices go offline, so their heartbeats stop and the consumers can drain.
	for _, s := range e.sims {
		s.stop()
	}
	res.Violation = append(res.Violation, e.check(ctx, p, seed, &res)...)
	progress(o, "run %d: %s in %s, %d violations", n, status, res.Duration.Round(time.Second), len(res.Violation))
	return res
}

// startNATS starts the run's 3-node cluster, trusting a new auth-callout issuer.
func (e *env) startNATS(ctx context.Context, dir string, run int, p plan, svcPass string) (*externalNATS, error) {
	seed, err := natsauth.NewIssuer()
	if err != nil {
		return nil, err
	}
	kp, err := nkeys.FromSeed([]byte(seed))
	if err != nil {
		return nil, err
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return nil, err
	}
	if e.nats, err = startNATSCluster(ctx, filepath.Join(dir, "nats"), run, p.cutNode, svcPass, pub); err != nil {
		return nil, err
	}
	progress(e.o, "   nats cluster up: %s; %s", e.nats.urls(), e.nats.describe())
	return &externalNATS{urls: e.nats.urls(), issuerSeed: seed}, nil
}

// natsRecovered waits (3 min at most) until node n is healthy again (its /healthz: meta leader known,
// its replicas current) and every stream has its leader and all its replicas current; it returns the
// time since t and a note when that did not happen.
func (e *env) natsRecovered(ctx context.Context, n *natsNode, t time.Time) (time.Duration, string) {
	var last []string
	err := poll(ctx, 3*time.Minute, 200*time.Millisecond, n.name+" rejoined with current replicas", func() (bool, error) {
		if !n.healthy(ctx) {
			last = []string{n.name + " /healthz not ok"}
			return false, nil
		}
		probs, err := replicaProblems(ctx, e.js, natsReplicas, false)
		if err != nil {
			last = []string{err.Error()}
			return false, nil
		}
		last = probs
		return len(probs) == 0, nil
	})
	if err != nil {
		return 0, fmt.Sprintf("%v (last: %s)", err, strings.Join(last, "; "))
	}
	return time.Since(t), ""
}

// setup creates the fleet's policy and starts the simulated devices on the old image.
func (e *env) setup(ctx context.Context, p plan, seed uint64) error {
	key, err := e.api.provisioningKey(ctx, fleet)
	if err != nil {
		return err
	}
	batches := []int{5, 20, 50, 100}
	if err := e.api.policy(ctx, map[string]any{"image_pattern": repoName, "update_strategy": "staged",
		"staged_batches": len(batches), "batch_percentages": batches, "batch_delay_seconds": p.delay,
		"health_check_enabled": true, "health_check_timeout_seconds": 120, "max_failure_rate": p.maxRate,
		"min_sample_size": 20, "auto_rollback_enabled": p.rollback, "fleet_id": fleet, "description": "chaos"}); err != nil {
		return err
	}
	per := e.o.Devices / e.o.Sims
	for k := range e.o.Sims {
		n := per
		if k == e.o.Sims-1 {
			n = e.o.Devices - per*(e.o.Sims-1)
		}
		s, err := startSim(ctx, SimArgs{Server: e.dep.core.hello.HTTPURL, Key: key, Admin: e.api.admin, Fleet: fleet,
			Image: repoName + ":" + oldTag, FailRate: fmt.Sprintf("%s=%g", failRateGlob, p.failP), Prefix: fmt.Sprintf("s%d", k),
			Devices: n, Seed: seed*100 + uint64(k)})
		if err != nil {
			return err
		}
		e.sims = append(e.sims, s)
	}
	started := time.Now()
	err = poll(ctx, 4*time.Minute, 250*time.Millisecond, fmt.Sprintf("%d devices registered on %s", e.o.Devices, oldTag), func() (bool, error) {
		var running int
		err := e.db.QueryRow(ctx, `SELECT count(*) FROM device_images WHERE repository = $1 AND tag = $2`, repository, oldTag).Scan(&running)
		return running >= e.o.Devices, err
	})
	if err != nil {
		return err
	}
	progress(e.o, "   %d devices up in %s", e.o.Devices, time.Since(started).Round(time.Second))
	return nil
}

// waitSettled waits for the rollout to end (completed, or stopped: paused, rolled back, failed) with no
// device in flight.
func (e *env) waitSettled(ctx context.Context, start time.Time, timeout time.Duration) (string, error) {
	var status string
	err := poll(ctx, timeout-time.Since(start), 250*time.Millisecond, "rollout settled", func() (bool, error) {
		var id string
		var inFlight int
		err := e.db.QueryRow(ctx, `SELECT r.rollout_id::text, r.status,
				(SELECT count(*) FROM device_rollout_status s WHERE s.rollout_id = r.rollout_id
					AND s.status IN ('scheduled', 'updating', 'health_checking'))
			FROM image_rollouts r WHERE r.repository = $1 ORDER BY r.created_at LIMIT 1`, repository).Scan(&id, &status, &inFlight)
		if err != nil {
			return false, nil // not planned yet, or the database is away
		}
		e.rollout = id
		switch status {
		case "completed", "rolled_back", "failed", "cancelled":
			return inFlight == 0, nil
		case "paused":
			return inFlight == 0, nil
		}
		return false, nil
	})
	if status == "" {
		status = "none"
	}
	return status, err
}

// inject runs one fault to its end and measures it.
func (e *env) inject(ctx context.Context, f Fault) Fault {
	progress(e.o, "   fault %s %s at %s (down %s)", f.Kind, f.Target, f.At, f.Down)
	sleep := func(d time.Duration) {
		select {
		case <-ctx.Done():
		case <-time.After(d):
		}
	}
	switch f.Kind {
	case FaultKill:
		var p *proc
		for _, q := range e.dep.all() {
			if q.name == f.Target {
				p = q
			}
		}
		if p == nil {
			f.Note = "no such process"
			return f
		}
		p.kill()
		sleep(f.Down)
		t := time.Now()
		// As a supervisor does: start it again until it stays up (a start may fail while the embedded
		// JetStream recovers its store on a loaded machine).
		var err error
		for attempt := 1; attempt <= 5; attempt++ {
			if err = p.start(ctx); err == nil {
				break
			}
			f.Note = fmt.Sprintf("%d failed starts (last: %v)", attempt, err)
		}
		if err != nil {
			f.Note = "restart failed: " + err.Error()
			return f
		}
		if err := e.dep.ready(ctx, time.Minute); err != nil {
			f.Note = err.Error()
		}
		f.Recovery = time.Since(t)
	case FaultPG:
		if err := e.pgc.down(); err != nil {
			f.Note = err.Error()
			return f
		}
		sleep(f.Down)
		t := time.Now()
		if err := e.pgc.up(ctx); err != nil {
			f.Note = "restart failed: " + err.Error()
			return f
		}
		if err := e.dep.ready(ctx, time.Minute); err != nil {
			f.Note = err.Error()
		}
		f.Recovery = time.Since(t)
	case FaultCutoff:
		var s *simProc
		for _, q := range e.sims {
			if q.prefix == f.Target {
				s = q
			}
		}
		if s == nil {
			f.Note = "no such simulator"
			return f
		}
		if err := s.cut(); err != nil {
			f.Note = err.Error()
			return f
		}
		f.Target = fmt.Sprintf("%s (%d devices)", s.prefix, s.devices)
		sleep(f.Down)
		if err := s.restore(); err != nil {
			f.Note = err.Error()
		}
	case FaultNATSKill, FaultNATSCut:
		var n *natsNode
		if e.nats != nil {
			n = e.nats.node(f.Target)
		}
		if n == nil {
			f.Note = "no such NATS node"
			return f
		}
		if f.Kind == FaultNATSCut {
			how, err := e.nats.cut(n)
			if err != nil {
				f.Note = err.Error()
				return f
			}
			f.Note = how
			cutAt := time.Now()
			// The cut must be one: the node's monitoring port, reached from outside, stops answering.
			if poll(ctx, 5*time.Second, 100*time.Millisecond, "cut", func() (bool, error) { return !n.healthy(ctx), nil }) != nil {
				f.Note += " (yet the node still answered /healthz)"
			}
			sleep(f.Down - time.Since(cutAt))
			t := time.Now()
			if err := e.nats.restore(n); err != nil {
				f.Note += "; restore failed: " + err.Error()
				return f
			}
			var note string
			f.Recovery, note = e.natsRecovered(ctx, n, t)
			f.Note = strings.TrimSuffix(f.Note+"; "+note, "; ")
			return f
		}
		n.kill()
		sleep(f.Down)
		t := time.Now()
		var err error
		for attempt := 1; attempt <= 5; attempt++ {
			if err = n.start(ctx); err == nil {
				break
			}
			f.Note = fmt.Sprintf("%d failed starts (last: %v)", attempt, err)
		}
		if err != nil {
			f.Note = "restart failed: " + err.Error()
			return f
		}
		var note string
		f.Recovery, note = e.natsRecovered(ctx, n, t)
		f.Note = strings.TrimPrefix(f.Note+"; "+note, "; ")
		f.Note = strings.TrimSuffix(f.Note, "; ")
	case FaultPoison:
		f.Note = e.poison(ctx)
	}
	return f
}

func (r Result) faultNames() string {
	var out []string
	for _, f := range r.Faults {
		out = append(out, f.Kind)
	}
	return strings.Join(out, "+")
}
