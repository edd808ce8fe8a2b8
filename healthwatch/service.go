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

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/fleetshift/fleetshift/shared/logging"
	"github.com/fleetshift/fleetshift/streams"
)

// Config configures a Service.
type Config struct {
	Pool     *pgxpool.Pool
	JS       jetstream.JetStream
	NC       *nats.Conn // not used; part of the service convention
	Subjects streams.Subjects
	Log      zerolog.Logger

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
		log:        logging.Component(cfg.Log, "healthwatch"),
		fetchBatch: cmp.Or(cfg.FetchBatch, 500),
		fetchWait:  cmp.Or(cfg.FetchWait, 250*time.Millisecond),
		tick:       cmp.Or(cfg.TickInterval, 500*time.Millisecond),
		ackWait:    cmp.Or(cfg.AckWait, 30*time.Second),
		retryAfter: cmp.Or(cfg.DispatchRetryAfter, time.Minute),
		now:        cfg.Now,
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.fetchBatch < 1 || s.fetchWait <= 0 || s.tick <= 0 || s.ackWait <= s.fetchWait || s.retryAfter <= 0 {
		return nil, fmt.Errorf("healthwatch: bad config (FetchBatch %d, FetchWait %s, TickInterval %s, AckWait %s)",
			s.fetchBatch, s.fetchWait, s.tick, s.ackWait)
	}
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
	var wg sync.WaitGroup
	wg.Go(func() { s.runTimers(ctx) })
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
		if err := s.handle(ctx, msgs); err != nil {
			s.log.Warn().Err(err).Int("reports", len(msgs)).Msg("apply reports failed; they will be redelivered")
			if !sleep(ctx, backoff) {
				return
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
	}
}

// handle applies one fetched batch and acks it after commit, or naks it all on failure. The work is
// finished even if ctx ends meanwhile, within the ack wait.
func (s *Service) handle(ctx context.Context, msgs []jetstream.Msg) error {
	reps := make([]report, 0, len(msgs))
	for _, m := range msgs {
		rep, ok := s.decode(m)
		if ok {
			reps = append(reps, rep)
		}
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.ackWait-s.fetchWait)
	defer cancel()
	if err := s.applyReports(wctx, reps); err != nil {
		for _, m := range msgs {
			_ = m.NakWithDelay(time.Second)
		}
		return err
	}
	for _, m := range msgs {
		_ = m.Ack()
	}
	return nil
}

// decode reads the report of the device named by the message subject. A report body naming another
// device is ignored: a device speaks only for itself.
func (s *Service) decode(m jetstream.Msg) (report, bool) {
	device, ok := s.subj.DeviceFromSubject(m.Subject())
	if !ok {
		s.log.Warn().Str("subject", m.Subject()).Msg("report on an unexpected subject; dropped")
		return report{}, false
	}
	var body map[string]json.RawMessage
	if err := json.Unmarshal(m.Data(), &body); err != nil {
		s.log.Warn().Err(err).Str("device", device).Msg("unreadable report; dropped")
		return report{}, false
	}
	raw, ok := body[device]
	if !ok {
		return report{}, false
	}
	var rep streams.DeviceReport
	if err := json.Unmarshal(raw, &rep); err != nil {
		s.log.Warn().Err(err).Str("device", device).Msg("unreadable report; dropped")
		return report{}, false
	}
	at := time.Now()
	if md, err := m.Metadata(); err == nil {
		at = md.Timestamp
	}
	return report{device: device, body: rep, raw: raw, at: at}, true
}

func (s *Service) runTimers(ctx context.Context) {
	t := time.NewTicker(s.tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.timersOnce(ctx)
	}
}

// timersOnce runs every timer once: health timeouts, the sweep, due batches, lost dispatches,
// maintenance windows of scheduled rollouts.
func (s *Service) timersOnce(ctx context.Context) {
	if _, err := s.failTimedOut(ctx); err != nil && ctx.Err() == nil {
		s.log.Warn().Err(err).Msg("health timeouts")
	}
	if _, err := s.sweep(ctx); err != nil && ctx.Err() == nil {
		s.log.Warn().Err(err).Msg("rollout sweep")
	}
	if _, err := s.startDueBatches(ctx); err != nil && ctx.Err() == nil {
		s.log.Warn().Err(err).Msg("due batches")
	}
	if _, err := s.retryLostDispatches(ctx); err != nil && ctx.Err() == nil {
		s.log.Warn().Err(err).Msg("lost dispatches")
	}
	if _, err := s.openWindows(ctx); err != nil && ctx.Err() == nil {
		s.log.Warn().Err(err).Msg("maintenance windows")
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}
