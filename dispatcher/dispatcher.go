// Package dispatcher moves rollout batches to their new image. It consumes rollout commands from the
// COMMANDS stream; a DispatchV1 command rewrites, in one transaction and set-based, the target state of
// exactly the batch's pending devices (only the services that run the rollout's repository change),
// marks them scheduled and records the events; after the commit it notifies each device of the batch
// on its target subject, then acknowledges the command. Handling a command twice has the effect of
// handling it once: a redelivery finds no pending device and only re-notifies with the same message ids.
package dispatcher

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/fleetshift/fleetshift/shared/consume"
	"github.com/fleetshift/fleetshift/streams"
)

// Config is what a Service is built from.
type Config struct {
	Pool     *pgxpool.Pool
	JS       jetstream.JetStream
	NC       *nats.Conn // optional; the dispatcher publishes through JS only
	Subjects streams.Subjects
	Log      zerolog.Logger
	// AckWait is how long JetStream waits for a command's ack before redelivering it (default 2m). The
	// dispatcher signals progress while it works, so this bounds a stalled handler, not a large batch.
	AckWait time.Duration
	// Workers is how many commands one replica handles at once (default 2). Commands of the same
	// rollout are serialised by the rollout's row lock whatever this is.
	Workers int
	// ShutdownGrace is how long a command being handled may still run once Run's context ends (default
	// 15s); after it the handler is cancelled and the command is redelivered later.
	ShutdownGrace time.Duration
	// Now is the clock maintenance windows are judged by (default time.Now); tests inject one.
	Now func() time.Time
	// WindowChunk is the most devices one command schedules for a scheduled-strategy rollout (default
	// 500); the rest of the batch follows in further commands, each checking the window again.
	WindowChunk int
	// DeadLetterCount is called for every command dead-lettered (fleetshift_deadletter_total); optional.
	DeadLetterCount func(consumer, reason string)
}

// Service is the dispatcher. Several replicas may run at once against the same database and stream.
type Service struct {
	pool        *pgxpool.Pool
	js          jetstream.JetStream
	subj        streams.Subjects
	log         zerolog.Logger
	ackWait     time.Duration
	workers     int
	grace       time.Duration
	now         func() time.Time
	windowChunk int
	settler     *consume.Settler
}

// New validates cfg, fills its defaults and returns a Service ready to Run.
func New(cfg Config) (*Service, error) {
	if cfg.Pool == nil {
		return nil, errors.New("new dispatcher: Pool is required")
	}
	if cfg.JS == nil {
		return nil, errors.New("new dispatcher: JS is required")
	}
	if cfg.AckWait < 0 || cfg.Workers < 0 || cfg.ShutdownGrace < 0 || cfg.WindowChunk < 0 {
		return nil, errors.New("new dispatcher: AckWait, Workers, ShutdownGrace and WindowChunk must not be negative")
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	subj := streams.New(cfg.Subjects.Prefix)
	settler, err := consume.New(consume.Config{JS: cfg.JS, Subjects: subj, Consumer: streams.ConsumerDispatcher,
		Log: cfg.Log, Count: cfg.DeadLetterCount, Ping: cfg.Pool.Ping})
	if err != nil {
		return nil, fmt.Errorf("new dispatcher: %w", err)
	}
	return &Service{
		settler:     settler,
		now:         now,
		windowChunk: cmp.Or(cfg.WindowChunk, 500),
		pool:        cfg.Pool,
		js:          cfg.JS,
		subj:        subj,
		log:         cfg.Log,
		ackWait:     cmp.Or(cfg.AckWait, 2*time.Minute),
		workers:     cmp.Or(cfg.Workers, 2),
		grace:       cmp.Or(cfg.ShutdownGrace, 15*time.Second),
	}, nil
}

// Run consumes rollout commands until ctx ends, then stops fetching, lets the commands being handled
// finish (within ShutdownGrace) and returns nil. Commands it did not finish are redelivered to another
// replica or after restart.
func (s *Service) Run(ctx context.Context) error {
	cons, err := s.js.CreateOrUpdateConsumer(ctx, s.subj.CommandsStream(),
		streams.ConsumerConfig(streams.ConsumerDispatcher, s.subj.CommandsAll(), s.ackWait))
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("create dispatcher consumer on %s: %w", s.subj.CommandsStream(), err)
	}
	// Handlers get a context that outlives ctx by the grace period, so a shutdown does not abort a
	// transaction that is about to commit.
	hctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stopGrace := context.AfterFunc(ctx, func() {
		t := time.NewTimer(s.grace)
		defer t.Stop()
		select {
		case <-t.C:
			cancel()
		case <-hctx.Done():
		}
	})
	defer stopGrace()

	var (
		mu       sync.Mutex
		stopping bool
		inflight sync.WaitGroup
	)
	handler := func(m jetstream.Msg) {
		mu.Lock()
		if stopping {
			mu.Unlock()
			_ = m.Nak() // let another replica have it at once
			return
		}
		inflight.Add(1)
		mu.Unlock()
		defer inflight.Done()
		s.handle(hctx, m)
	}
	consumers := make([]jetstream.ConsumeContext, 0, s.workers)
	for range s.workers {
		cc, err := cons.Consume(handler, jetstream.PullMaxMessages(1),
			jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
				if ctx.Err() == nil {
					s.log.Warn().Err(err).Msg("consume rollout commands")
				}
			}))
		if err != nil {
			for _, c := range consumers {
				c.Stop()
			}
			return fmt.Errorf("consume rollout commands: %w", err)
		}
		consumers = append(consumers, cc)
	}
	s.log.Info().Int("workers", s.workers).Msg("dispatcher consuming rollout commands")
	<-ctx.Done()
	mu.Lock()
	stopping = true
	mu.Unlock()
	for _, cc := range consumers {
		cc.Stop()
	}
	inflight.Wait()
	s.log.Info().Msg("dispatcher stopped")
	return nil
}

// errPermanent marks a command that can never succeed (malformed); it is dead-lettered, not retried.
var errPermanent = errors.New("malformed command")

// handle runs one command message and settles it: ack on success; a command that can never succeed
// (unknown kind, unreadable, invalid, refused by PostgreSQL as bad data) is dead-lettered; other failures
// are redelivered with a growing delay and dead-lettered after streams.MaxDeliver deliveries; while the
// database is unreachable the command is held and run again once it answers.
func (s *Service) handle(ctx context.Context, m jetstream.Msg) {
	log := s.log.With().Str("subject", m.Subject()).Logger()
	if !s.settler.Admit(ctx, m) {
		return
	}
	kind, id, ok := s.parseSubject(m.Subject())
	if !ok || kind != streams.CommandDispatch {
		s.settler.DeadLetter(ctx, m, consume.ReasonInvalid, fmt.Errorf("rollout command of unknown kind %q", kind))
		return
	}
	var cmd streams.DispatchV1
	if err := json.Unmarshal(m.Data(), &cmd); err != nil {
		s.settler.DeadLetter(ctx, m, consume.ReasonDecode, fmt.Errorf("decode dispatch command: %w", err))
		return
	}
	if cmd.RolloutID == "" {
		cmd.RolloutID = id
	}
	var res Result
	err := s.settler.Handle(ctx, m, func(ctx context.Context) error {
		var err error
		res, err = s.dispatch(ctx, cmd, func() { _ = m.InProgress() })
		if errors.Is(err, errPermanent) {
			return consume.Permanent(consume.ReasonInvalid, err)
		}
		return err
	}, func() error { return m.DoubleAck(ctx) })
	if err != nil {
		log.Warn().Err(err).Msg("dispatch failed")
		return
	}
	log.Info().Str("rollout_id", cmd.RolloutID).Int("batch", cmd.Batch).Str("rollout_status", res.RolloutStatus).
		Int("scheduled", res.Scheduled).Int("skipped", res.Skipped).Int("notified", res.Notified).
		Msg("batch dispatched")
}

// parseSubject splits <prefix>.commands.v1.<kind>.<id>.
func (s *Service) parseSubject(subject string) (kind, id string, ok bool) {
	rest, ok := strings.CutPrefix(subject, strings.TrimSuffix(s.subj.Command("", ""), "."))
	if !ok {
		return "", "", false
	}
	kind, id, ok = strings.Cut(rest, ".")
	return kind, id, ok && kind != ""
}
