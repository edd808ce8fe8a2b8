// Package healthwatch drives rollouts from device reports: it moves each dispatched device through
// updating, health_checking, completed or failed as the device reports, keeps the rollout counters equal
// to the device rows, completes batches and starts the next one after the batch delay (a durable timer),
// pauses a rollout whose failure rate breaks its policy (rolling failed devices back when the policy
// says so), fails devices whose health check timed out, and completes rollouts.
//
// Every step is one PostgreSQL transaction of conditional, set-based statements; messages it sends
// (DispatchV1 commands, device targets, events) go through the outbox in the same transaction. Several
// replicas may run at once: they share the REPORTS durable consumer and claim timers with SKIP LOCKED.
package healthwatch

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/fleetshift/fleetshift/shared/consume"
	"github.com/fleetshift/fleetshift/streams"
)

// Config configures a Service.
type Config struct {
	Pool     *pgxpool.Pool
	JS       jetstream.JetStream
	NC       *nats.Conn // not used; part of the service convention
	Subjects streams.Subjects
	// Log is the service's logger; the caller names it (logging.Component), once.
	Log zerolog.Logger

	// FetchBatch is the most reports applied in one transaction (default 500).
	FetchBatch int
	// FetchWait is how long a fetch waits for a batch to fill (default 250ms).
	FetchWait time.Duration
	// TickInterval is how often the timers run: due batches, health timeouts, the sweep (default 500ms).
	TickInterval time.Duration
	// AckWait is the consumer's ack wait (default 30s); a batch must commit within it.
	AckWait time.Duration
	// DispatchRetryAfter is how long a requested batch may stay unstarted before the command is
	// repeated (default 1 minute).
	DispatchRetryAfter time.Duration
	// Now is the clock maintenance windows are judged by (default time.Now); tests inject one.
	Now func() time.Time
	// Workers is how many transactions one fetched batch of reports is applied in at once, split by
	// rollout (default 2): reports of different rollouts do not wait for each other.
	Workers int
	// DeadLetterCount is called for every report dead-lettered (fleetshift_deadletter_total); optional.
	DeadLetterCount func(consumer, reason string)
	// Heartbeat is the report period devices keep (default 30s); a device is offline after
	// OfflineAfterMissed (default 3) heartbeats without a sign of life.
	Heartbeat          time.Duration
	OfflineAfterMissed int
	// SystemNC, when set, is a connection to the NATS system account: devices go offline at once when
	// their connection closes and online when it opens (connect and disconnect advisories).
	SystemNC *nats.Conn
}

// Service is the healthwatch service. Run it; it serves no HTTP.
type Service struct {
	pool       *pgxpool.Pool
	js         jetstream.JetStream
	subj       streams.Subjects
	log        zerolog.Logger
	fetchBatch int
	fetchWait  time.Duration
	tick       time.Duration
	ackWait    time.Duration
	retryAfter time.Duration
	now        func() time.Time
	workers    int
	settler    *consume.Settler
	// reports is the REPORTS stream, for a device's last report (set by Run).
	reports jetstream.Stream
	// offlineAfter is how long an online device may go unseen; seenEvery is how often last_seen_at is
	// rewritten for a device that keeps reporting (a third of offlineAfter, at most 30 s).
	offlineAfter, seenEvery time.Duration
	systemNC                *nats.Conn
	// targets is the TARGETS stream, to send devices that come online their newest target (set by Run).
	targets jetstream.Stream
	// renotifyRan is when renotifyUnstarted last scanned; renotifyMark the scheduled_at up to which it
	// has sent targets again (the timers run in one goroutine).
	renotifyRan, renotifyMark time.Time
}

// New validates cfg and fills its defaults.
func New(cfg Config) (*Service, error) {
	if cfg.Pool == nil {
		return nil, errors.New("healthwatch: Config.Pool is required")
	}
	if cfg.JS == nil {
		return nil, errors.New("healthwatch: Config.JS is required")
	}
	subj := cfg.Subjects
	if subj.Prefix == "" {
		subj = streams.New("")
	}
	s := &Service{
		pool:       cfg.Pool,
		js:         cfg.JS,
		subj:       subj,
		log:        cfg.Log,
		fetchBatch: cmp.Or(cfg.FetchBatch, 500),
		fetchWait:  cmp.Or(cfg.FetchWait, 250*time.Millisecond),
		tick:       cmp.Or(cfg.TickInterval, 500*time.Millisecond),
		ackWait:    cmp.Or(cfg.AckWait, 30*time.Second),
		retryAfter: cmp.Or(cfg.DispatchRetryAfter, time.Minute),
		now:        cfg.Now,
		workers:    cmp.Or(cfg.Workers, 2),
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.offlineAfter = cmp.Or(cfg.Heartbeat, 30*time.Second) * time.Duration(cmp.Or(cfg.OfflineAfterMissed, 3))
	s.seenEvery = min(30*time.Second, s.offlineAfter/3)
	s.systemNC = cfg.SystemNC
	if s.offlineAfter <= 0 {
		return nil, fmt.Errorf("healthwatch: bad config (Heartbeat %s, OfflineAfterMissed %d)", cfg.Heartbeat, cfg.OfflineAfterMissed)
	}
	if s.fetchBatch < 1 || s.fetchWait <= 0 || s.tick <= 0 || s.ackWait <= s.fetchWait || s.retryAfter <= 0 || s.workers < 1 {
		return nil, fmt.Errorf("healthwatch: bad config (FetchBatch %d, FetchWait %s, TickInterval %s, AckWait %s, Workers %d)",
			s.fetchBatch, s.fetchWait, s.tick, s.ackWait, s.workers)
	}
	settler, err := consume.New(consume.Config{JS: cfg.JS, Subjects: subj, Consumer: streams.ConsumerHealthwatch,
		Log: s.log, Count: cfg.DeadLetterCount, Ping: cfg.Pool.Ping})
	if err != nil {
		return nil, fmt.Errorf("healthwatch: %w", err)
	}
	s.settler = settler
	return s, nil
}

// Run consumes device reports and runs the timers until ctx ends, then finishes the batch in hand
// and returns nil. It returns an error only when the consumer cannot be set up.
func (s *Service) Run(ctx context.Context) error {
	cons, err := s.js.CreateOrUpdateConsumer(ctx, s.subj.ReportsStream(),
		streams.ConsumerConfig(streams.ConsumerHealthwatch, s.subj.DeviceStateAll(), s.ackWait))
	if err != nil {
		return fmt.Errorf("healthwatch: create consumer %s: %w", streams.ConsumerHealthwatch, err)
	}
	if s.reports, err = s.js.Stream(ctx, s.subj.ReportsStream()); err != nil {
		return fmt.Errorf("healthwatch: open stream %s: %w", s.subj.ReportsStream(), err)
	}
	if s.targets, err = s.js.Stream(ctx, s.subj.TargetsStream()); err != nil {
		return fmt.Errorf("healthwatch: open stream %s: %w", s.subj.TargetsStream(), err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { s.runTimers(ctx) })
	if s.systemNC != nil {
		wg.Go(func() {
			if err := s.followAdvisories(ctx, s.systemNC); err != nil {
				s.log.Error().Err(err).Msg("device presence from connect advisories is off")
			}
		})
	}
	s.consume(ctx, cons)
	wg.Wait()
	return nil
}

func (s *Service) consume(ctx context.Context, cons jetstream.Consumer) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		batch, err := cons.Fetch(s.fetchBatch, jetstream.FetchMaxWait(s.fetchWait))
		if err != nil {
			s.log.Warn().Err(err).Msg("fetch reports failed; retrying")
			if !sleep(ctx, backoff) {
				return
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		var msgs []jetstream.Msg
		for m := range batch.Messages() {
			msgs = append(msgs, m)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			s.log.Debug().Err(err).Msg("fetch reports ended early")
		}
		if len(msgs) == 0 {
			continue
		}
		backoff = 100 * time.Millisecond
		s.handle(ctx, msgs)
	}
}

// item is one fetched message and, once decoded, its report.
type item struct {
	msg jetstream.Msg
	rep report
}

// handle settles one fetched batch: a report that can never be applied (unreadable, on a foreign
// subject, not storable as jsonb) is dead-lettered at once; the others are applied grouped by rollout,
// the groups in parallel, each acknowledged after its commit. A group that fails is split until the
// failing report is alone (see applyIsolated), so one bad report never holds back the others. The work
// is finished even if ctx ends meanwhile, within the ack wait.
func (s *Service) handle(ctx context.Context, msgs []jetstream.Msg) {
	items := make([]item, 0, len(msgs))
	for _, m := range msgs {
		if !s.settler.Admit(ctx, m) {
			continue
		}
		rep, ok, err := s.decode(m)
		switch {
		case err != nil:
			s.settler.DeadLetter(ctx, m, reasonOf(err), err)
		case !ok:
			_ = m.Ack() // nothing to apply (a report in another device's name)
		default:
			items = append(items, item{msg: m, rep: rep})
		}
	}
	if len(items) == 0 {
		return
	}
	gctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	groups := s.groupByRollout(gctx, items)
	cancel()
	sem := make(chan struct{}, s.workers)
	var wg sync.WaitGroup
	for _, g := range groups {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			s.applyIsolated(ctx, g)
		})
	}
	wg.Wait()
}

// applyIsolated applies items in one transaction and acks them after commit. While the database is
// unreachable it holds them (in progress) and tries again once it answers. Any other failure splits
// items in two halves applied in order (a device's reports keep their order), down to a single report,
// which is then settled by its error: dead-lettered when it can never succeed, redelivered with backoff
// otherwise.
func (s *Service) applyIsolated(ctx context.Context, items []item) {
	for {
		// Each attempt may take the ack wait: the messages were just fetched or marked in progress.
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.ackWait-s.fetchWait)
		err := s.applyReports(wctx, reportsOf(items))
		cancel()
		if err == nil {
			for _, it := range items {
				_ = it.msg.Ack()
			}
			return
		}
		if _, permanent := consume.Classify(err); !permanent && consume.Unavailable(err) {
			msgs := make([]jetstream.Msg, len(items))
			for i, it := range items {
				msgs[i] = it.msg
			}
			if ctx.Err() == nil && s.settler.Hold(ctx, msgs...) {
				continue
			}
			for _, m := range msgs {
				_ = m.NakWithDelay(time.Second)
			}
			return
		}
		if len(items) == 1 {
			s.settler.Fail(ctx, items[0].msg, err)
			return
		}
		s.log.Warn().Err(err).Int("reports", len(items)).Msg("apply reports failed; applying them in halves to isolate the failing one")
		for _, it := range items {
			_ = it.msg.InProgress()
		}
		half := len(items) / 2
		s.applyIsolated(ctx, items[:half])
		s.applyIsolated(ctx, items[half:])
		return
	}
}

func reportsOf(items []item) []report {
	out := make([]report, len(items))
	for i, it := range items {
		out[i] = it.rep
	}
	return out
}

func reasonOf(err error) string {
	if r, ok := consume.Classify(err); ok {
		return r
	}
	return consume.ReasonInvalid
}

// groupByRollout splits items so that reports of devices in different rollouts land in different
// groups (one indexed query): devices in flight in the same rollout, or linked through a device in
// several rollouts, share a group; devices in none form one more group. A device's reports stay in one
// group, in stream order. If the lookup fails, everything is one group.
func (s *Service) groupByRollout(ctx context.Context, items []item) [][]item {
	if s.workers == 1 || len(items) == 1 {
		return [][]item{items}
	}
	uuids := make([]string, 0, len(items))
	seen := make(map[string]bool, len(items))
	for _, it := range items {
		if !seen[it.rep.device] {
			seen[it.rep.device] = true
			uuids = append(uuids, it.rep.device)
		}
	}
	rows, err := s.pool.Query(ctx, `SELECT device_uuid, rollout_id::text FROM device_rollout_status
		WHERE device_uuid = ANY($1) AND status = ANY($2)`, uuids, inFlight)
	if err != nil {
		return [][]item{items}
	}
	type pair struct{ device, rollout string }
	pairs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (pair, error) {
		var p pair
		return p, r.Scan(&p.device, &p.rollout)
	})
	if err != nil {
		return [][]item{items}
	}
	// Union-find over rollout ids; each device joins its rollouts' set.
	parent := map[string]string{}
	var find func(string) string
	find = func(x string) string {
		if p, ok := parent[x]; ok && p != x {
			r := find(p)
			parent[x] = r
			return r
		}
		parent[x] = x
		return x
	}
	deviceRollout := map[string]string{}
	for _, p := range pairs {
		if first, ok := deviceRollout[p.device]; ok {
			parent[find(p.rollout)] = find(first)
		} else {
			deviceRollout[p.device] = p.rollout
			find(p.rollout)
		}
	}
	index := map[string]int{}
	var groups [][]item
	for _, it := range items {
		key := ""
		if r, ok := deviceRollout[it.rep.device]; ok {
			key = find(r)
		}
		k, ok := index[key]
		if !ok {
			k = len(groups)
			index[key] = k
			groups = append(groups, nil)
		}
		groups[k] = append(groups[k], it)
	}
	return groups
}

// reportDoc is one device's entry in a report message, decoded in the same pass that keeps its raw bytes.
type reportDoc struct {
	rep streams.DeviceReport
	raw json.RawMessage
}

func (d *reportDoc) UnmarshalJSON(b []byte) error {
	d.raw = append(json.RawMessage(nil), b...)
	return json.Unmarshal(b, &d.rep)
}

// decode reads the report of the device named by the message subject, in one json.Unmarshal. A report
// body naming another device is ignored (false): a device speaks only for itself. A report that can
// never be stored is an error marked consume.Permanent: a foreign subject, unreadable JSON, or text
// PostgreSQL refuses (a NUL character, invalid UTF-8), checked before any SQL.
func (s *Service) decode(m jetstream.Msg) (report, bool, error) {
	at := time.Now()
	if md, err := m.Metadata(); err == nil {
		at = md.Timestamp
	}
	return s.parseReport(m.Subject(), m.Data(), at)
}

// parseReport is decode for a report published to subject with payload data, stored at at.
func (s *Service) parseReport(subject string, data []byte, at time.Time) (report, bool, error) {
	device, ok := s.subj.DeviceFromSubject(subject)
	if !ok {
		return report{}, false, consume.Permanent(consume.ReasonInvalid, fmt.Errorf("report on unexpected subject %q", subject))
	}
	if err := consume.CheckText("device uuid", device); err != nil {
		return report{}, false, err
	}
	var body map[string]*reportDoc
	if err := json.Unmarshal(data, &body); err != nil {
		return report{}, false, consume.Permanent(consume.ReasonDecode, fmt.Errorf("decode report of %s: %w", device, err))
	}
	if err := consume.CheckJSON("report", data); err != nil {
		return report{}, false, fmt.Errorf("report of %s: %w", device, err)
	}
	doc := body[device]
	if doc == nil {
		return report{}, false, nil
	}
	return report{device: device, body: doc.rep, raw: doc.raw, at: at}, true, nil
}

// runTimers runs the timers every tick; while the database is unreachable it waits longer between runs
// (doubling up to 5 s) and logs the outage once.
func (s *Service) runTimers(ctx context.Context) {
	t := time.NewTicker(s.tick)
	defer t.Stop()
	pause := s.tick
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !s.timersOnce(ctx) {
			pause = s.tick
			continue
		}
		if !sleep(ctx, pause) {
			return
		}
		pause = min(pause*2, 5*time.Second)
	}
}

// timersOnce runs every timer once: health timeouts, the sweep, due batches, the chunks of rate
// rollouts, lost dispatches, maintenance windows of scheduled rollouts. It stops at the first step that finds the database
// unreachable and returns true then.
func (s *Service) timersOnce(ctx context.Context) (unreachable bool) {
	steps := []struct {
		name string
		run  func(context.Context) (int, error)
	}{
		{"offline devices", s.markMissed},
		{"offline grace", s.offlineGrace},
		{"health timeouts", s.failTimedOut},
		{"rollout sweep", s.sweep},
		{"due batches", s.startDueBatches},
		{"rate rollouts", s.paceRates},
		{"lost dispatches", s.retryLostDispatches},
		{"unnotified devices", s.renotifyUnstarted},
		{"maintenance windows", s.openWindows},
	}
	for _, st := range steps {
		_, err := st.run(ctx)
		if err == nil || ctx.Err() != nil {
			continue
		}
		if consume.Unavailable(err) {
			s.log.Debug().Err(err).Msg("timers: database unreachable; backing off")
			return true
		}
		s.log.Warn().Err(err).Msg(st.name)
	}
	return false
}

func sleep(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}
