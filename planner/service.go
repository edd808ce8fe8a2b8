package planner

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/command"
	"github.com/fleetshift/fleetshift/shared/consume"
	"github.com/fleetshift/fleetshift/shared/events"
	"github.com/fleetshift/fleetshift/shared/lifecycle"
	"github.com/fleetshift/fleetshift/shared/target"
	"github.com/fleetshift/fleetshift/streams"
)

// Config configures the planner service.
type Config struct {
	Pool     *pgxpool.Pool
	JS       jetstream.JetStream
	NC       *nats.Conn // unused; accepted for the common service shape
	Subjects streams.Subjects
	Log      zerolog.Logger
	// AckWait is how long JetStream waits for a push to be acknowledged before redelivering it
	// (default 2m; the handler also signals progress while planning).
	AckWait time.Duration
	// PushTimeout bounds the planning of one push (default 5m).
	PushTimeout time.Duration
	// DeadLetterCount is called for every push dead-lettered (fleetshift_deadletter_total); optional.
	DeadLetterCount func(consumer, reason string)

	// beforeCommit, when set (tests), runs just before a push's transaction commits; an error aborts it.
	beforeCommit func(ctx context.Context, push streams.PushV1) error
}

// Service consumes registry pushes and writes rollouts. Several replicas may run at once: they share
// the planner durable, and planning of one repository is serialised by a transaction-scoped advisory lock.
type Service struct {
	pool         *pgxpool.Pool
	js           jetstream.JetStream
	subj         streams.Subjects
	log          zerolog.Logger
	ackWait      time.Duration
	pushTimeout  time.Duration
	beforeCommit func(ctx context.Context, push streams.PushV1) error
	settler      *consume.Settler
}

// New validates cfg and returns the service. It connects to nothing until Run.
func New(cfg Config) (*Service, error) {
	if cfg.Pool == nil {
		return nil, errors.New("planner: Config.Pool is required")
	}
	if cfg.JS == nil {
		return nil, errors.New("planner: Config.JS is required")
	}
	subj := cfg.Subjects
	if subj.Prefix == "" {
		subj = streams.New("")
	}
	settler, err := consume.New(consume.Config{JS: cfg.JS, Subjects: subj, Consumer: streams.ConsumerPlanner,
		Log: cfg.Log, Count: cfg.DeadLetterCount, Ping: cfg.Pool.Ping})
	if err != nil {
		return nil, fmt.Errorf("planner: %w", err)
	}
	return &Service{
		pool:         cfg.Pool,
		js:           cfg.JS,
		subj:         subj,
		log:          cfg.Log,
		ackWait:      cmp.Or(cfg.AckWait, 2*time.Minute),
		pushTimeout:  cmp.Or(cfg.PushTimeout, 5*time.Minute),
		beforeCommit: cfg.beforeCommit,
		settler:      settler,
	}, nil
}

// Run consumes pushes until ctx ends, then drains and returns nil. A push is acknowledged only after
// its transaction committed; one that fails is redelivered.
func (s *Service) Run(ctx context.Context) error {
	cons, err := s.js.CreateOrUpdateConsumer(ctx, s.subj.PushesStream(),
		streams.ConsumerConfig(streams.ConsumerPlanner, s.subj.Push(), s.ackWait))
	if err != nil {
		return fmt.Errorf("planner: create consumer %s: %w", streams.ConsumerPlanner, err)
	}
	cc, err := cons.Consume(func(msg jetstream.Msg) { s.handleMsg(ctx, msg) }, jetstream.PullMaxMessages(16))
	if err != nil {
		return fmt.Errorf("planner: consume pushes: %w", err)
	}
	s.log.Info().Str("stream", s.subj.PushesStream()).Msg("planner consuming pushes")
	<-ctx.Done()
	cc.Drain()
	<-cc.Closed()
	return nil
}

// handleMsg plans one push and settles its message: ack after commit; a push that can never be planned
// (unreadable, invalid, holding text PostgreSQL cannot store, refused by PostgreSQL as bad data) is
// dead-lettered; one that failed for a
// passing reason is redelivered with backoff (dead-lettered after streams.MaxDeliver deliveries); while
// the database is unreachable the push is held and retried once it answers.
func (s *Service) handleMsg(ctx context.Context, msg jetstream.Msg) {
	if ctx.Err() != nil {
		_ = msg.Nak() // shutting down: let another replica (or the next start) have it
		return
	}
	if !s.settler.Admit(ctx, msg) {
		return
	}
	var push streams.PushV1
	if err := json.Unmarshal(msg.Data(), &push); err != nil {
		s.settler.DeadLetter(ctx, msg, consume.ReasonDecode, fmt.Errorf("decode push: %w", err))
		return
	}
	if push.EventID == "" {
		s.settler.DeadLetter(ctx, msg, consume.ReasonInvalid, errors.New("push has no event_id"))
		return
	}
	// Text PostgreSQL cannot store (NUL, invalid UTF-8) is refused before any SQL.
	if err := consume.CheckJSON("push", msg.Data()); err != nil {
		s.settler.DeadLetter(ctx, msg, consume.ReasonInvalid, err)
		return
	}
	_ = msg.InProgress()
	var res Result
	err := s.settler.Handle(ctx, msg, func(ctx context.Context) error {
		pctx, cancel := context.WithTimeout(ctx, s.pushTimeout)
		defer cancel()
		var err error
		res, err = s.HandlePush(pctx, push)
		return err
	}, nil)
	if err != nil {
		s.log.Warn().Err(err).Str("event_id", push.EventID).Msg("planner: planning failed")
		return
	}
	s.log.Info().Str("event_id", push.EventID).Str("outcome", res.Outcome).Str("rollout_id", res.RolloutID).
		Int("devices", res.Devices).Msg("push handled")
}

// Outcomes of HandlePush.
const (
	OutcomePlanned   = "planned"         // a rollout was created (possibly empty, then completed at once)
	OutcomeNoPolicy  = "no_policy"       // no enabled policy applies; no rollout
	OutcomeDuplicate = "duplicate"       // a live rollout of the same repository, tag, digest and policy exists
	OutcomeHandled   = "already_handled" // this event id was handled before; nothing changed
)

// Result is what HandlePush did.
type Result struct {
	Outcome   string
	RolloutID string // the created rollout, or the existing one for duplicates
	Status    string
	Devices   int
	// Superseded are the rollouts the new one superseded.
	Superseded []string
}

var activeStatuses = lifecycle.Strings(lifecycle.Active...)

// HandlePush plans push and writes the outcome in one transaction: the rollout, its device rows (COPY),
// the superseding of an active rollout of the same repository and policy, the first dispatch command
// through the outbox, and the events. Handling the same event id again changes nothing.
func (s *Service) HandlePush(ctx context.Context, push streams.PushV1) (Result, error) {
	if push.EventID == "" {
		return Result{}, apierr.Invalid("event_id", "the push has no event id")
	}
	var res Result
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		res, err = s.handleTx(ctx, tx, push)
		if err != nil {
			return err
		}
		if s.beforeCommit != nil {
			return s.beforeCommit(ctx, push)
		}
		return nil
	})
	if err != nil {
		return Result{}, fmt.Errorf("plan push %s: %w", push.EventID, err)
	}
	return res, nil
}

func (s *Service) handleTx(ctx context.Context, tx pgx.Tx, push streams.PushV1) (Result, error) {
	ref, err := pushRef(push)
	if err != nil {
		return Result{}, err
	}
	// One planner at a time per repository: supersede and duplicate checks see each other's rollouts.
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended('fleetshift.planner:' || $1, 0))`, ref.Repository); err != nil {
		return Result{}, fmt.Errorf("lock repository %s: %w", ref.Repository, err)
	}
	tag, err := tx.Exec(ctx, `INSERT INTO planner_pushes (event_id, repository, tag, digest, outcome)
		VALUES ($1, $2, $3, $4, 'planned') ON CONFLICT (event_id) DO NOTHING`,
		push.EventID, ref.Repository, ref.Tag, ref.Digest)
	if err != nil {
		return Result{}, fmt.Errorf("record push: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return Result{Outcome: OutcomeHandled}, nil
	}
	var exists bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM image_rollouts WHERE push_event_id = $1)`, push.EventID).Scan(&exists); err != nil {
		return Result{}, fmt.Errorf("check push %s: %w", push.EventID, err)
	}
	if exists {
		return Result{Outcome: OutcomeHandled}, nil
	}

	plan, err := Plan(ctx, tx, push)
	if err != nil {
		return Result{}, err
	}
	received := events.Event{Type: streams.EventWebhookReceived, Data: map[string]any{
		"event_id": push.EventID, "registry": push.Registry, "repository": ref.Repository, "image": plan.NewImage,
		"tag": ref.Tag, "digest": ref.Digest, "pusher": push.Pusher,
	}}
	if plan.Policy == nil {
		received.Message = fmt.Sprintf("push of %s: %s", plan.NewImage, plan.Reason)
		if err := s.setOutcome(ctx, tx, push.EventID, OutcomeNoPolicy, ""); err != nil {
			return Result{}, err
		}
		return Result{Outcome: OutcomeNoPolicy}, events.Record(ctx, tx, s.subj, received)
	}

	if ref.Digest != "" {
		var existing string
		err := tx.QueryRow(ctx, `SELECT rollout_id::text FROM image_rollouts
			WHERE repository = $1 AND new_tag = $2 AND new_digest = $3 AND policy_id = $4 AND status <> `+lifecycle.SQL(lifecycle.Superseded)+`
			ORDER BY created_at DESC LIMIT 1`, ref.Repository, ref.Tag, ref.Digest, plan.Policy.ID).Scan(&existing)
		switch {
		case err == nil:
			received.RolloutID = existing
			received.Message = fmt.Sprintf("push of %s: already planned by rollout %s", plan.NewImage, existing)
			if err := s.setOutcome(ctx, tx, push.EventID, OutcomeDuplicate, existing); err != nil {
				return Result{}, err
			}
			return Result{Outcome: OutcomeDuplicate, RolloutID: existing}, events.Record(ctx, tx, s.subj, received)
		case !errors.Is(err, pgx.ErrNoRows):
			return Result{}, fmt.Errorf("check existing rollout of %s: %w", plan.NewImage, err)
		}
	}
	return s.writeRollout(ctx, tx, plan, received)
}

func (s *Service) setOutcome(ctx context.Context, tx pgx.Tx, eventID, outcome, rolloutID string) error {
	var rid any
	if rolloutID != "" {
		rid = rolloutID
	}
	if _, err := tx.Exec(ctx, `UPDATE planner_pushes SET outcome = $2, rollout_id = $3 WHERE event_id = $1`,
		eventID, outcome, rid); err != nil {
		return fmt.Errorf("record outcome of push %s: %w", eventID, err)
	}
	return nil
}

// writeRollout writes the rollout of plan and everything that goes with it.
func (s *Service) writeRollout(ctx context.Context, tx pgx.Tx, plan *RolloutPlan, received events.Event) (Result, error) {
	id := uuid.NewString()
	pol := plan.Policy
	status := initialStatus(plan)
	snapshot, err := json.Marshal(pol)
	if err != nil {
		return Result{}, fmt.Errorf("encode policy snapshot: %w", err)
	}
	batchSizes := plan.BatchSizes
	if batchSizes == nil {
		batchSizes = []int{}
	}
	var oldTag any
	if t := plan.OldTag(); len(plan.Devices) > 0 {
		oldTag = t
	}
	push := plan.Push
	if _, err := tx.Exec(ctx, `
		INSERT INTO image_rollouts (rollout_id, policy_id, push_event_id, image_name, repository, old_tag, new_tag,
			new_digest, new_image, strategy, status, current_batch, total_batches, batch_sizes, total_devices,
			policy, registry, rate_per_minute, started_at, completed_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 0, $12, $13, $14, $15, $16, $17,
			CASE WHEN $11 IN (`+lifecycle.SQL(lifecycle.InProgress, lifecycle.Completed)+`) THEN now() END,
			CASE WHEN $11 = `+lifecycle.SQL(lifecycle.Completed)+` THEN now() END)`,
		id, pol.ID, push.EventID, push.ImageName, push.Repository, oldTag, push.Tag, push.Digest, plan.NewImage,
		pol.UpdateStrategy, status, len(batchSizes), batchSizes, len(plan.Devices), snapshot, nullable(push.Registry),
		ratePerMinute(pol)); err != nil {
		return Result{}, fmt.Errorf("insert rollout of %s: %w", plan.NewImage, err)
	}

	// Supersede active rollouts of the same repository and policy; their unfinished devices still run
	// the repository, so they are part of the new plan, and their old rows are skipped.
	rows, err := tx.Query(ctx, `UPDATE image_rollouts SET status = `+lifecycle.SQL(lifecycle.Superseded)+`, superseded_by = $1,
			next_batch_at = NULL, completed_at = now(), updated_at = now()
		WHERE repository = $2 AND policy_id = $3 AND rollout_id <> $1 AND status = ANY($4)
		RETURNING rollout_id::text`, id, push.Repository, pol.ID, activeStatuses)
	if err != nil {
		return Result{}, fmt.Errorf("supersede rollouts of %s: %w", push.Repository, err)
	}
	superseded, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return Result{}, fmt.Errorf("supersede rollouts of %s: %w", push.Repository, err)
	}
	if len(superseded) > 0 {
		if _, err := tx.Exec(ctx, `UPDATE device_rollout_status SET status = `+lifecycle.SQL(lifecycle.DeviceSkipped)+`, health_deadline = NULL,
				error_message = 'superseded by rollout ' || $2, updated_at = now()
			WHERE rollout_id = ANY($1::uuid[]) AND status IN (`+lifecycle.SQL(lifecycle.Unfinished...)+`)`,
			superseded, id); err != nil {
			return Result{}, fmt.Errorf("skip devices of superseded rollouts: %w", err)
		}
		// Images a superseded rollout had its devices pull ahead will not be dispatched by it.
		for _, old := range superseded {
			if _, err := target.ClearPrefetch(ctx, tx, s.subj, old, nil); err != nil {
				return Result{}, fmt.Errorf("superseded rollout %s: %w", old, err)
			}
		}
	}

	if len(plan.Devices) > 0 {
		rows := make([][]any, len(plan.Devices))
		for i, d := range plan.Devices {
			rows[i] = []any{id, d.DeviceUUID, int32(d.Batch), string(lifecycle.DevicePending), d.OldTag, push.Tag, d.OldImage, plan.NewImage}
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"device_rollout_status"},
			[]string{"rollout_id", "device_uuid", "batch_number", "status", "old_image_tag", "new_image_tag", "old_image", "new_image"},
			pgx.CopyFromRows(rows)); err != nil {
			return Result{}, fmt.Errorf("write %d device rows of rollout %s: %w", len(rows), id, err)
		}
	}

	// Download ahead: every device of a rollout waiting for its window pulls the new image now (a
	// prefetch entry in its target; what runs is not changed), and only switches inside the window.
	prefetched := 0
	if pol.DownloadAhead && status == StatusScheduled && len(plan.Devices) > 0 {
		uuids := make([]string, len(plan.Devices))
		for i, d := range plan.Devices {
			uuids[i] = d.DeviceUUID
		}
		written, err := target.SetPrefetch(ctx, tx, s.subj, id, plan.NewImage, uuids)
		if err != nil {
			return Result{}, fmt.Errorf("rollout %s: %w", id, err)
		}
		prefetched = len(written)
	}

	// A rate rollout's chunks come from healthwatch's rate timer, due at once (next_batch_at unset).
	if status == StatusInProgress && pol.UpdateStrategy != StrategyRate {
		if err := command.Request(ctx, tx, s.subj, command.Dispatch{RolloutID: id, Batch: 1, Purpose: command.First}); err != nil {
			return Result{}, fmt.Errorf("queue dispatch of rollout %s: %w", id, err)
		}
	}

	received.RolloutID = id
	received.Message = fmt.Sprintf("push of %s", plan.NewImage)
	evs := []events.Event{received}
	for _, old := range superseded {
		evs = append(evs, events.Event{Type: streams.EventRolloutSuperseded, RolloutID: old,
			Message: fmt.Sprintf("superseded by rollout %s (%s)", id, plan.NewImage),
			Data:    map[string]any{"superseded_by": id, "new_image": plan.NewImage}})
	}
	created := map[string]any{"policy_id": pol.ID, "strategy": pol.UpdateStrategy, "status": status,
		"total_devices": len(plan.Devices), "batch_sizes": batchSizes, "new_image": plan.NewImage,
		"old_tag": oldTag, "superseded": superseded, "excluded": len(plan.Excluded),
		"download_ahead": pol.DownloadAhead, "prefetched_devices": prefetched}
	if pol.UpdateStrategy == StrategyRate {
		created["rate_per_minute"] = pol.RateBase()
	}
	evs = append(evs, events.Event{Type: streams.EventRolloutCreated, RolloutID: id,
		Message: fmt.Sprintf("rollout of %s to %d devices (%s, policy %d)", plan.NewImage, len(plan.Devices), pol.UpdateStrategy, pol.ID),
		Data:    created})
	if status == StatusCompleted {
		evs = append(evs, events.Event{Type: streams.EventRolloutCompleted, RolloutID: id,
			Message: "no device needs " + plan.NewImage})
	}
	if err := events.Record(ctx, tx, s.subj, evs...); err != nil {
		return Result{}, fmt.Errorf("record events of rollout %s: %w", id, err)
	}
	if err := s.setOutcome(ctx, tx, push.EventID, OutcomePlanned, id); err != nil {
		return Result{}, err
	}
	return Result{Outcome: OutcomePlanned, RolloutID: id, Status: status, Devices: len(plan.Devices), Superseded: superseded}, nil
}

// ratePerMinute is the starting rate of a rate rollout (its base rate), nil for other strategies.
func ratePerMinute(pol *Policy) any {
	if pol.UpdateStrategy != StrategyRate {
		return nil
	}
	return pol.RateBase()
}

func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}
