// Package control carries out the operator verbs on rollouts: start, pause, resume, cancel, approve,
// rollback-all and single-device rollback. One code path (Service.Do) serves both the HTTP routes
// (Register) and NATS request-reply on <prefix>.control.rollout.<id>.<verb> (Run), so both give the same
// answer and have the same effect.
//
// Every verb is one transaction that locks the rollout row, changes it with a conditional UPDATE
// (WHERE status = expected) and records its event (shared/events, actor = the acting token) and any
// dispatch command (outbox) in that same transaction: it fully happens or not at all. A verb that does
// not apply to the rollout's status is an apierr.ErrConflict (409) saying why; a verb repeated after it
// took effect changes nothing and succeeds.
//
// Verbs by rollout status (200 = applies, no-op = harmless 200 without change, 409 otherwise):
//
//	start:        pending -> in_progress (DispatchV1 batch 1); no-op on in_progress, awaiting_approval
//	pause:        in_progress, awaiting_approval, scheduled -> paused; no-op on paused
//	resume:       paused -> in_progress (pending devices of the current batch re-dispatched); no-op on in_progress
//	cancel:       pending, scheduled, in_progress, paused, awaiting_approval -> cancelled; no-op on cancelled
//	approve:      awaiting_approval -> in_progress (next batch requested); no-op on in_progress
//	rollback-all: every status but superseded -> rolled_back (healthwatch.RollbackAll); no-op on rolled_back
//	rollback:     one device back to its old image (healthwatch.RollbackDevice); every status but superseded
//	retry:        in_progress, paused, awaiting_approval: failed devices (all, or those named) re-dispatched
//	              (healthwatch.RetryDevices; the rollout keeps its status); 409 on every other status, on a
//	              named device that is not failed, and when no device is failed
//
// Events added to the contract's original list: image.rollout_start_requested (start; image.rollout_started
// follows from the dispatcher) and image.batch_approved (approve).
package control

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
	"github.com/rs/zerolog"

	"github.com/fleetshift/fleetshift/healthwatch"
	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/auth"
	"github.com/fleetshift/fleetshift/shared/command"
	"github.com/fleetshift/fleetshift/shared/device"
	"github.com/fleetshift/fleetshift/shared/events"
	"github.com/fleetshift/fleetshift/shared/lifecycle"
	"github.com/fleetshift/fleetshift/shared/target"
	"github.com/fleetshift/fleetshift/streams"
)

// Verb is a control verb, as it appears in HTTP paths and NATS subjects.
type Verb string

// Verbs.
const (
	Start       Verb = "start"
	Pause       Verb = "pause"
	Resume      Verb = "resume"
	Cancel      Verb = "cancel"
	Approve     Verb = "approve"
	RollbackAll Verb = "rollback-all"
	// Rollback rolls one device back; it needs a device uuid.
	Rollback Verb = "rollback"
	// Retry re-dispatches failed devices: all of them, or those named (Service.Retry).
	Retry Verb = "retry"
)

// MaxRetryDevices bounds the device_uuids of one retry request.
const MaxRetryDevices = 10000

// Verbs lists the rollout-wide verbs (every verb but Rollback).
var Verbs = []Verb{Start, Pause, Resume, Cancel, Approve, RollbackAll}

// Event types the verbs record beyond the contract's original list.
const (
	// EventRolloutStartRequested is recorded by start; image.rollout_started follows from the dispatcher.
	EventRolloutStartRequested = streams.EventRolloutStartRequested
	// EventBatchApproved is recorded by approve.
	EventBatchApproved = streams.EventBatchApproved
)

// Rollout statuses (shared/lifecycle), as the plain strings the rollout row is read into.
const (
	statusPending          = string(lifecycle.Pending)
	statusScheduled        = string(lifecycle.Scheduled)
	statusInProgress       = string(lifecycle.InProgress)
	statusPaused           = string(lifecycle.Paused)
	statusAwaitingApproval = string(lifecycle.AwaitingApproval)
	statusCancelled        = string(lifecycle.Cancelled)
)

// Result is the answer to a verb: {"ok": true, "status": "<new status>", "rollout": {...}}. Changed is
// false when the verb had already taken effect.
type Result struct {
	OK      bool            `json:"ok"`
	Status  string          `json:"status"`
	Changed bool            `json:"changed"`
	Rollout json.RawMessage `json:"rollout,omitempty"`
}

// Config configures a Service.
type Config struct {
	Pool     *pgxpool.Pool
	NC       *nats.Conn // needed by Run only
	Subjects streams.Subjects
	// Log is the service's logger; the caller names it (logging.Component), once.
	Log zerolog.Logger
	// Operators checks the tokens of NATS control requests (HTTP routes get theirs in Register).
	Operators *auth.Operators
	// QueueGroup is the NATS queue group responders share (default "fleetshift-control").
	QueueGroup string
	// Timeout bounds one verb (default 30s). A verb runs to its end even when its caller goes away.
	Timeout time.Duration
}

// Service carries out control verbs. Several replicas may run at once.
type Service struct {
	pool    *pgxpool.Pool
	nc      *nats.Conn
	subj    streams.Subjects
	log     zerolog.Logger
	ops     *auth.Operators
	queue   string
	timeout time.Duration
}

// New validates cfg and fills its defaults.
func New(cfg Config) (*Service, error) {
	if cfg.Pool == nil {
		return nil, errors.New("new control: Pool is required")
	}
	if cfg.Timeout < 0 {
		return nil, errors.New("new control: Timeout must not be negative")
	}
	subj := cfg.Subjects
	if subj.Prefix == "" {
		subj = streams.New("")
	}
	return &Service{
		pool:    cfg.Pool,
		nc:      cfg.NC,
		subj:    subj,
		log:     cfg.Log,
		ops:     cfg.Operators,
		queue:   cmp.Or(cfg.QueueGroup, "fleetshift-control"),
		timeout: cmp.Or(cfg.Timeout, 30*time.Second),
	}, nil
}

// Do carries out verb on rollout rolloutID (and device deviceUUID for Rollback) on behalf of actor
// (auth.Principal.Actor()). Errors wrap apierr sentinels: ErrInvalid (malformed id, unknown verb),
// ErrNotFound (no such rollout, device not in it), ErrConflict (the verb does not apply to the
// rollout's status; the message says why); anything else is internal, and then nothing changed.
func (s *Service) Do(ctx context.Context, verb Verb, rolloutID, deviceUUID, actor string) (Result, error) {
	if _, err := uuid.Parse(rolloutID); err != nil {
		return Result{}, apierr.Invalid("id", "expected a rollout id (a UUID), got %q", rolloutID)
	}
	if verb == Rollback {
		if !device.ValidUUID(deviceUUID) {
			return Result{}, apierr.Invalid("device_uuid", "expected a device uuid (1-64 of A-Z a-z 0-9 _ -), got %q", deviceUUID)
		}
	} else if deviceUUID != "" {
		return Result{}, apierr.Invalid("device_uuid", "only the rollback verb takes a device; %s acts on the whole rollout", verb)
	}
	// The verb runs to its end even when the caller goes away: an answer lost is better than a
	// transaction cut between its write and its commit.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
	defer cancel()

	switch verb {
	case RollbackAll, Rollback:
		// Whether this call changes anything (healthwatch's rollbacks are idempotent and do not say):
		// a rollout already rolled back, or a device already back or skipped, stays as it is.
		var done bool
		var status string
		if err := s.pool.QueryRow(ctx, `SELECT r.status, CASE WHEN $2::text = '' THEN r.status = `+lifecycle.SQL(lifecycle.RolledBack)+`
				ELSE coalesce((SELECT d.status IN (`+lifecycle.SQL(lifecycle.DeviceRolledBack, lifecycle.DeviceSkipped)+`) FROM device_rollout_status d
				               WHERE d.rollout_id = r.rollout_id AND d.device_uuid = $2), false) END
			FROM image_rollouts r WHERE r.rollout_id = $1`, rolloutID, deviceUUID).Scan(&status, &done); err != nil &&
			!errors.Is(err, pgx.ErrNoRows) {
			return Result{}, fmt.Errorf("%s rollout %s: %w", verb, rolloutID, err)
		}
		if status == string(lifecycle.Superseded) { // healthwatch refuses it too, under the lock
			return Result{}, apierr.New(apierr.ErrConflict, "invalid_state",
				"cannot %s a superseded rollout: its devices moved to the newer rollout; roll that one back", verb)
		}
		var err error
		if verb == RollbackAll {
			err = healthwatch.RollbackAll(ctx, s.pool, s.subj, rolloutID, actor)
		} else {
			err = healthwatch.RollbackDevice(ctx, s.pool, s.subj, rolloutID, deviceUUID, actor)
		}
		if err != nil {
			return Result{}, fmt.Errorf("%s rollout %s: %w", verb, rolloutID, err)
		}
		// Committed: from here on nothing may turn into an error.
		res := Result{OK: true, Changed: !done}
		if err := s.pool.QueryRow(ctx, `SELECT r.status, `+rolloutJSON+` FROM image_rollouts r
			WHERE r.rollout_id = $1`, rolloutID).Scan(&res.Status, &res.Rollout); err != nil {
			s.log.Warn().Err(err).Str("rollout_id", rolloutID).Str("verb", string(verb)).
				Msg("verb done; reading the rollout back failed")
		}
		return res, nil
	case Retry:
		r, err := s.Retry(ctx, rolloutID, nil, actor)
		return r.Result, err
	case Start, Pause, Resume, Cancel, Approve:
	default:
		return Result{}, apierr.New(apierr.ErrInvalid, "invalid_verb",
			"unknown verb %q (start, pause, resume, cancel, approve, rollback-all, rollback, retry)", verb)
	}

	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("%s rollout %s: begin: %w", verb, rolloutID, err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var ro rollout
	err = tx.QueryRow(ctx, `SELECT status, current_batch, total_batches FROM image_rollouts
		WHERE rollout_id = $1 FOR UPDATE`, rolloutID).Scan(&ro.status, &ro.currentBatch, &ro.totalBatches)
	if errors.Is(err, pgx.ErrNoRows) {
		return Result{}, apierr.New(apierr.ErrNotFound, "rollout_not_found", "rollout %s not found", rolloutID)
	}
	if err != nil {
		return Result{}, fmt.Errorf("%s rollout %s: lock: %w", verb, rolloutID, err)
	}
	ro.id = rolloutID
	act, err := decide(verb, ro.status)
	if err != nil {
		return Result{}, err
	}
	res := Result{OK: true}
	if act.change {
		var evs []events.Event
		if evs, err = s.apply(ctx, tx, verb, ro); err != nil {
			return Result{}, fmt.Errorf("%s rollout %s: %w", verb, rolloutID, err)
		}
		for i := range evs {
			evs[i].RolloutID, evs[i].Actor = rolloutID, actor
		}
		if err := events.Record(ctx, tx, s.subj, evs...); err != nil {
			return Result{}, fmt.Errorf("%s rollout %s: %w", verb, rolloutID, err)
		}
		res.Changed = true
	}
	if err := tx.QueryRow(ctx, `SELECT r.status, `+rolloutJSON+` FROM image_rollouts r WHERE r.rollout_id = $1`,
		rolloutID).Scan(&res.Status, &res.Rollout); err != nil {
		return Result{}, fmt.Errorf("%s rollout %s: read back: %w", verb, rolloutID, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return Result{}, fmt.Errorf("%s rollout %s: commit: %w", verb, rolloutID, err)
	}
	if res.Changed {
		s.log.Info().Str("rollout_id", rolloutID).Str("verb", string(verb)).Str("actor", actor).
			Str("from", ro.status).Str("to", res.Status).Msg("rollout control")
	}
	return res, nil
}

// rolloutJSON renders a rollout as GET /api/v1/rollouts/:id does (without per-batch counts).
const rolloutJSON = `to_jsonb(r) || jsonb_build_object('progress_percent', CASE WHEN r.total_devices = 0 THEN 0
	ELSE round(100.0 * (r.updated_devices + r.failed_devices) / r.total_devices, 1) END)`

// rollout is the locked rollout row.
type rollout struct {
	id                         string
	status                     string
	currentBatch, totalBatches int
}

// action is what a verb does to a rollout in a status.
type action struct{ change bool }

// ended says, for a rollout status that is over (lifecycle.Terminal), how to put it in a 409.
func ended(status string) (string, bool) {
	if !lifecycle.Status(status).IsTerminal() {
		return "", false
	}
	if status == string(lifecycle.RolledBack) {
		return "rolled-back", true
	}
	return status, true
}

// decide returns what verb does to a rollout in status, or the 409 that says why it does not apply.
func decide(verb Verb, status string) (action, error) {
	conflict := func(format string, args ...any) (action, error) {
		return action{}, apierr.New(apierr.ErrConflict, "invalid_state", format, args...)
	}
	article := func(s string) string {
		if s == statusInProgress || s == statusAwaitingApproval {
			return "an"
		}
		return "a"
	}
	switch verb {
	case Start:
		switch status {
		case statusPending:
			return action{change: true}, nil
		case statusInProgress, statusAwaitingApproval:
			return action{}, nil
		case statusScheduled:
			return conflict("cannot start a scheduled rollout: it starts by itself inside its maintenance window")
		case statusPaused:
			return conflict("cannot start a paused rollout: it was started already; resume it")
		}
	case Pause:
		switch status {
		case statusInProgress, statusAwaitingApproval, statusScheduled:
			return action{change: true}, nil
		case statusPaused:
			return action{}, nil
		case statusPending:
			return conflict("cannot pause a pending rollout: nothing is dispatched until it is started (cancel it to drop it)")
		}
	case Resume:
		switch status {
		case statusPaused:
			return action{change: true}, nil
		case statusInProgress:
			return action{}, nil
		case statusPending:
			return conflict("cannot resume a pending rollout: it was never started; start it")
		case statusScheduled:
			return conflict("cannot resume a scheduled rollout: it is not paused and starts by itself inside its maintenance window")
		case statusAwaitingApproval:
			return conflict("cannot resume a rollout awaiting approval: approve its next batch")
		}
	case Cancel:
		switch status {
		case statusPending, statusScheduled, statusInProgress, statusPaused, statusAwaitingApproval:
			return action{change: true}, nil
		case statusCancelled:
			return action{}, nil
		}
	case Approve:
		switch status {
		case statusAwaitingApproval:
			return action{change: true}, nil
		case statusInProgress:
			return action{}, nil
		case statusPending:
			return conflict("cannot approve a pending rollout: start it")
		case statusScheduled:
			return conflict("cannot approve a scheduled rollout: no batch awaits approval; it starts inside its maintenance window")
		case statusPaused:
			return conflict("cannot approve a paused rollout: resume it")
		}
	}
	if t, ok := ended(status); ok {
		return conflict("cannot %s %s %s rollout: it has ended", verb, article(status), t)
	}
	return conflict("cannot %s %s %s rollout", verb, article(status), status)
}

// apply makes the change of a verb that applies to the locked rollout ro, and returns its events.
func (s *Service) apply(ctx context.Context, tx pgx.Tx, verb Verb, ro rollout) ([]events.Event, error) {
	// transition moves the rollout from its locked status to to with extra SET clauses; it must hit.
	transition := func(to, set string, args ...any) error {
		tag, err := tx.Exec(ctx, `UPDATE image_rollouts SET status = $2, updated_at = now()`+set+`
			WHERE rollout_id = $1 AND status = $3`, append([]any{ro.id, to, ro.status}, args...)...)
		if err != nil {
			return fmt.Errorf("%s -> %s: %w", ro.status, to, err)
		}
		if tag.RowsAffected() != 1 {
			return fmt.Errorf("%s -> %s: rollout row changed under its lock", ro.status, to)
		}
		return nil
	}
	switch verb {
	case Start:
		if err := transition(statusInProgress, `, requested_batch = GREATEST(requested_batch, 1), requested_at = now()`); err != nil {
			return nil, err
		}
		if err := command.Request(ctx, tx, s.subj, command.Dispatch{RolloutID: ro.id, Batch: 1, Purpose: command.First}); err != nil {
			return nil, err
		}
		return []events.Event{{Type: EventRolloutStartRequested, Message: "rollout started by operator; dispatching batch 1",
			Data: map[string]any{"batch": 1, "previous_status": ro.status}}}, nil

	case Pause:
		if err := transition(statusPaused, `, auto_paused = false, paused_at = now(), next_batch_at = NULL`); err != nil {
			return nil, err
		}
		return []events.Event{{Type: streams.EventRolloutPaused, Message: "rollout paused by operator",
			Data: map[string]any{"reason": "operator", "auto_paused": false, "previous_status": ro.status,
				"batch": ro.currentBatch}}}, nil

	case Resume:
		if err := transition(statusInProgress, `, auto_paused = false, next_batch_at = NULL`); err != nil {
			return nil, err
		}
		batch, err := healthwatch.RequestDispatch(ctx, tx, s.subj, ro.id)
		if err != nil {
			return nil, err
		}
		data := map[string]any{"previous_status": ro.status, "batch": ro.currentBatch}
		if batch > 0 {
			data["dispatch_batch"] = batch
		}
		return []events.Event{{Type: streams.EventRolloutResumed, Message: "rollout resumed by operator", Data: data}}, nil

	case Cancel:
		if err := transition(statusCancelled, `, next_batch_at = NULL, completed_at = now()`); err != nil {
			return nil, err
		}
		// Devices never dispatched never will be; moved devices stay where they are, and nothing
		// times them out any more.
		var skipped, moved int64
		if err := tx.QueryRow(ctx, `WITH s AS (
				UPDATE device_rollout_status SET status = `+lifecycle.SQL(lifecycle.DeviceSkipped)+`, error_message = 'rollout cancelled',
					completed_at = now(), updated_at = now()
				WHERE rollout_id = $1 AND status = `+lifecycle.SQL(lifecycle.DevicePending)+` RETURNING 1
			), m AS (
				UPDATE device_rollout_status SET health_deadline = NULL, updated_at = now()
				WHERE rollout_id = $1 AND status IN (`+lifecycle.SQL(lifecycle.InFlight...)+`)
				  AND health_deadline IS NOT NULL RETURNING 1
			)
			SELECT (SELECT count(*) FROM s), (SELECT count(*) FROM device_rollout_status
				WHERE rollout_id = $1 AND status IN (`+lifecycle.SQL(lifecycle.Moved...)+`))`,
			ro.id).Scan(&skipped, &moved); err != nil {
			return nil, fmt.Errorf("skip pending devices: %w", err)
		}
		// Devices never dispatched no longer pull the new image ahead.
		if _, err := target.ClearPrefetch(ctx, tx, s.subj, ro.id, nil); err != nil {
			return nil, err
		}
		return []events.Event{{Type: streams.EventRolloutCancelled,
			Message: fmt.Sprintf("rollout cancelled by operator: %d devices never dispatched skipped, %d moved devices left as they are", skipped, moved),
			Data: map[string]any{"previous_status": ro.status, "skipped_devices": skipped, "moved_devices": moved,
				"batch": ro.currentBatch}}}, nil

	case Approve:
		next := ro.currentBatch + 1
		if next > ro.totalBatches {
			// Nothing left to approve: healthwatch's sweep completes the rollout.
			if err := transition(statusInProgress, ``); err != nil {
				return nil, err
			}
			next = 0
		} else {
			if err := transition(statusInProgress, `, next_batch_at = NULL, requested_batch = GREATEST(requested_batch, $4),
				requested_at = now()`, next); err != nil {
				return nil, err
			}
			if err := command.Request(ctx, tx, s.subj, command.Dispatch{RolloutID: ro.id, Batch: next, Purpose: command.Next}); err != nil {
				return nil, err
			}
		}
		return []events.Event{{Type: EventBatchApproved,
			Message: fmt.Sprintf("batch %d approved by operator", next),
			Data:    map[string]any{"approved_batch": next, "completed_batch": ro.currentBatch}}}, nil
	}
	return nil, fmt.Errorf("verb %s has no change", verb)
}

// RetryResult is the answer to retry: a Result and the devices re-dispatched.
type RetryResult struct {
	Result
	Retried []string `json:"retried"`
}

// Retry re-dispatches the failed devices of rollout rolloutID (those in devices; all when it is
// empty) on behalf of actor: HTTP POST /api/v1/rollouts/:id/retry and NATS <p>.control.rollout.<id>.retry
// both end here. Errors are Do's, plus ErrConflict when a named device is not failed or none is.
func (s *Service) Retry(ctx context.Context, rolloutID string, devices []string, actor string) (RetryResult, error) {
	if _, err := uuid.Parse(rolloutID); err != nil {
		return RetryResult{}, apierr.Invalid("id", "expected a rollout id (a UUID), got %q", rolloutID)
	}
	if len(devices) > MaxRetryDevices {
		return RetryResult{}, apierr.Invalid("device_uuids", "expected at most %d device uuids, got %d", MaxRetryDevices, len(devices))
	}
	for i, d := range devices {
		if !device.ValidUUID(d) {
			return RetryResult{}, apierr.Invalid(fmt.Sprintf("device_uuids[%d]", i), "expected a device uuid (1-64 of A-Z a-z 0-9 _ -), got %q", d)
		}
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
	defer cancel()
	retried, err := healthwatch.RetryDevices(ctx, s.pool, s.subj, rolloutID, devices, actor)
	if err != nil {
		return RetryResult{}, fmt.Errorf("retry rollout %s: %w", rolloutID, err)
	}
	res := RetryResult{Result: Result{OK: true, Changed: len(retried) > 0}, Retried: retried}
	if res.Retried == nil {
		res.Retried = []string{}
	}
	if err := s.pool.QueryRow(ctx, `SELECT r.status, `+rolloutJSON+` FROM image_rollouts r
		WHERE r.rollout_id = $1`, rolloutID).Scan(&res.Status, &res.Rollout); err != nil {
		s.log.Warn().Err(err).Str("rollout_id", rolloutID).Msg("retry done; reading the rollout back failed")
	}
	s.log.Info().Str("rollout_id", rolloutID).Str("actor", actor).Int("devices", len(retried)).Msg("failed devices retried")
	return res, nil
}
