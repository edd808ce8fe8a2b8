package healthwatch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/events"
	"github.com/fleetshift/fleetshift/shared/imageref"
	"github.com/fleetshift/fleetshift/shared/lifecycle"
	"github.com/fleetshift/fleetshift/shared/target"
	"github.com/fleetshift/fleetshift/streams"
)

// actorHealthwatch is the actor of the events healthwatch records on its own initiative.
const actorHealthwatch = "healthwatch"

// work is one transaction: the events it records are written together, in the order they happened,
// just before commit.
type work struct {
	tx    pgx.Tx
	subj  streams.Subjects
	actor string
	evs   []events.Event
}

func (w *work) event(e events.Event) {
	if e.Actor == "" {
		e.Actor = w.actor
	}
	w.evs = append(w.evs, e)
}

func (w *work) commit(ctx context.Context) error {
	if err := events.Record(ctx, w.tx, w.subj, w.evs...); err != nil {
		return err
	}
	return w.tx.Commit(ctx)
}

// rollout is a locked rollout row with its counters.
type rollout struct {
	id                             string
	status                         string
	currentBatch, totalBatches     int
	completedBatch, requestedBatch int
	nextBatchAt                    *time.Time
	autoPaused                     bool
	repository, newImage, oldTag   string
	policy                         policy
	completed, failed, rolledBack  int
	failures, finished             int
	openInBatch                    int // > 0 while the current batch has an unfinished device
	failureRate                    float64
}

// loadRollouts reads the locked rollouts ids with their counters, and whether their current batch still
// has an open device (an indexed EXISTS). It recounts nothing: the counters move by the deltas of every
// statement that writes device_rollout_status (trigger of migration 008), in that statement's
// transaction, so they are current here.
//
//	updated_devices = healthy_devices = completed rows; failed_devices = failed rows;
//	rolled_back_devices = rolled_back rows; failures = failed rows plus rolled_back rows that had failed
//	first (they carry an error_message); failure_rate = failures / finished, where finished counts
//	completed, failed and rolled_back rows.
func loadRollouts(ctx context.Context, tx pgx.Tx, ids []string) ([]rollout, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	rows, err := tx.Query(ctx, `
		SELECT r.rollout_id::text, r.status, r.current_batch, r.total_batches, r.completed_batch,
		       r.requested_batch, r.next_batch_at, r.auto_paused, r.repository, r.new_image,
		       COALESCE(r.old_tag, ''), r.policy, r.updated_devices, r.failed_devices, r.rolled_back_devices,
		       r.failures, r.updated_devices + r.failed_devices + r.rolled_back_devices, r.failure_rate,
		       EXISTS (SELECT 1 FROM device_rollout_status d
		               WHERE d.rollout_id = r.rollout_id AND d.batch_number = r.current_batch
		                 AND d.status IN (`+lifecycle.SQL(lifecycle.Unfinished...)+`))
		FROM image_rollouts r
		WHERE r.rollout_id = ANY($1::uuid[])
		ORDER BY r.rollout_id`, ids)
	if err != nil {
		return nil, fmt.Errorf("read rollouts: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (rollout, error) {
		var ro rollout
		var pol []byte
		var open bool
		err := row.Scan(&ro.id, &ro.status, &ro.currentBatch, &ro.totalBatches, &ro.completedBatch,
			&ro.requestedBatch, &ro.nextBatchAt, &ro.autoPaused, &ro.repository, &ro.newImage, &ro.oldTag,
			&pol, &ro.completed, &ro.failed, &ro.rolledBack, &ro.failures, &ro.finished, &ro.failureRate, &open)
		ro.policy = parsePolicy(pol)
		ro.openInBatch = 0
		if open {
			ro.openInBatch = 1
		}
		return ro, err
	})
	if err != nil {
		return nil, fmt.Errorf("read rollouts: %w", err)
	}
	return out, nil
}

// finishes counts the devices of a rollout that finished, and of those failed, in one transaction.
type finishes struct{ finished, failed int }

// settle brings the locked rollouts ids up to date with their device rows: counters, the failure-rate
// pause (and auto rollback), batch completion, the next batch's durable timer, and completion of the
// rollout. Every step is conditional, so settling twice changes nothing twice.
//
// news holds what finished in this transaction, per rollout. The failure-rate check only runs on it:
// a rollout pauses when these finishes take it over the threshold, or add a failure while it is over
// (so an operator who resumes an auto-paused rollout is overruled only by a new failure).
func settle(ctx context.Context, w *work, ids []string, news map[string]finishes) error {
	ros, err := loadRollouts(ctx, w.tx, ids)
	if err != nil {
		return err
	}
	for _, ro := range ros {
		if err := settleOne(ctx, w, ro, news[ro.id]); err != nil {
			return fmt.Errorf("settle rollout %s: %w", ro.id, err)
		}
	}
	return nil
}

// shouldPause reports whether the finishes n of this transaction make the rollout break its policy.
func (ro rollout) shouldPause(n finishes) bool {
	if ro.status != rolloutInProgress || n.finished == 0 || !ro.policy.exceeded(ro.failures, ro.finished) {
		return false
	}
	before := ro.policy.exceeded(ro.failures-n.failed, ro.finished-n.finished)
	return !before || n.failed > 0
}

func settleOne(ctx context.Context, w *work, ro rollout, n finishes) error {
	tx := w.tx
	if ro.shouldPause(n) {
		tag, err := tx.Exec(ctx, `UPDATE image_rollouts SET status = `+lifecycle.SQL(lifecycle.Paused)+`, auto_paused = true,
			paused_at = now(), next_batch_at = NULL, updated_at = now()
			WHERE rollout_id = $1 AND status = `+lifecycle.SQL(lifecycle.InProgress)+``, ro.id)
		if err != nil {
			return fmt.Errorf("pause: %w", err)
		}
		if tag.RowsAffected() == 1 {
			ro.status, ro.autoPaused, ro.nextBatchAt = rolloutPaused, true, nil
			w.event(events.Event{Type: streams.EventRolloutPaused, RolloutID: ro.id,
				Message: fmt.Sprintf("failure rate %.3f above max_failure_rate %.3f (%d failed of %d finished)",
					ro.failureRate, ro.policy.MaxFailureRate, ro.failures, ro.finished),
				Data: map[string]any{
					"reason": "failure_rate", "auto_paused": true, "failure_rate": ro.failureRate,
					"failed_devices": ro.failures, "finished_devices": ro.finished,
					"max_failure_rate": ro.policy.MaxFailureRate, "min_sample_size": ro.policy.MinSampleSize,
					"batch": ro.currentBatch, "auto_rollback": ro.policy.AutoRollbackEnabled,
				}})
		}
	}
	if ro.status == rolloutPaused && ro.autoPaused && ro.policy.AutoRollbackEnabled && ro.failed > 0 {
		if _, err := restore(ctx, w, ro.ref(), []string{statusFailed}, nil, "auto rollback: failure rate above max_failure_rate"); err != nil {
			return err
		}
		again, err := loadRollouts(ctx, tx, []string{ro.id})
		if err != nil {
			return err
		}
		status, autoPaused := ro.status, ro.autoPaused
		ro = again[0]
		ro.status, ro.autoPaused = status, autoPaused
	}
	if (ro.status != rolloutInProgress && ro.status != rolloutPaused) || ro.currentBatch < 1 || ro.openInBatch > 0 {
		return nil
	}
	justCompleted := ro.completedBatch < ro.currentBatch
	if justCompleted {
		if _, err := tx.Exec(ctx, `UPDATE image_rollouts SET completed_batch = current_batch, updated_at = now()
			WHERE rollout_id = $1 AND completed_batch < current_batch`, ro.id); err != nil {
			return fmt.Errorf("record batch %d completed: %w", ro.currentBatch, err)
		}
	}
	if ro.status != rolloutInProgress {
		if justCompleted {
			w.event(batchCompleted(ro, nil, false))
		}
		return nil
	}
	if ro.currentBatch >= ro.totalBatches {
		if justCompleted {
			w.event(batchCompleted(ro, nil, false))
		}
		return complete(ctx, w, ro)
	}
	if ro.requestedBatch > ro.currentBatch || ro.nextBatchAt != nil {
		return nil // the next batch is already due or requested
	}
	if justCompleted && ro.policy.BatchApproval {
		if _, err := tx.Exec(ctx, `UPDATE image_rollouts SET status = `+lifecycle.SQL(lifecycle.AwaitingApproval)+`, updated_at = now()
			WHERE rollout_id = $1 AND status = `+lifecycle.SQL(lifecycle.InProgress)+``, ro.id); err != nil {
			return fmt.Errorf("await approval: %w", err)
		}
		w.event(batchCompleted(ro, nil, true))
		return nil
	}
	// The batch delay counts from the batch's completion; a rollout resumed or approved later goes on at once.
	var delay time.Duration
	if justCompleted {
		delay = ro.policy.BatchDelay
	}
	var due time.Time
	if err := tx.QueryRow(ctx, `UPDATE image_rollouts SET next_batch_at = now() + make_interval(secs => $2),
		updated_at = now() WHERE rollout_id = $1 RETURNING next_batch_at`, ro.id, delay.Seconds()).Scan(&due); err != nil {
		return fmt.Errorf("set next batch timer: %w", err)
	}
	if justCompleted {
		w.event(batchCompleted(ro, &due, false))
	}
	return nil
}

func batchCompleted(ro rollout, next *time.Time, awaitingApproval bool) events.Event {
	data := map[string]any{
		"batch": ro.currentBatch, "total_batches": ro.totalBatches,
		"updated_devices": ro.completed, "failed_devices": ro.failed, "rolled_back_devices": ro.rolledBack,
		"failure_rate": ro.failureRate,
	}
	if next != nil {
		data["next_batch_at"] = next.UTC()
	}
	if awaitingApproval {
		data["awaiting_approval"] = true
	}
	return events.Event{Type: streams.EventBatchCompleted, RolloutID: ro.id,
		Message: fmt.Sprintf("batch %d of %d completed", ro.currentBatch, ro.totalBatches), Data: data}
}

// complete ends an in-progress rollout whose last batch finished and moves the default targets of the
// fleets it covered to the new image.
func complete(ctx context.Context, w *work, ro rollout) error {
	tag, err := w.tx.Exec(ctx, `UPDATE image_rollouts SET status = `+lifecycle.SQL(lifecycle.Completed)+`, completed_at = now(),
		next_batch_at = NULL, updated_at = now() WHERE rollout_id = $1 AND status = `+lifecycle.SQL(lifecycle.InProgress)+``, ro.id)
	if err != nil {
		return fmt.Errorf("complete: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return nil
	}
	if _, err := moveFleetDefaults(ctx, w.tx, ro.id, ro.repository, ro.newImage, nil); err != nil {
		return err
	}
	// Devices the rollout never moved (skipped offline, ...) drop what they were to pull ahead.
	if _, err := target.ClearPrefetch(ctx, w.tx, w.subj, ro.id, nil); err != nil {
		return fmt.Errorf("complete: %w", err)
	}
	w.event(events.Event{Type: streams.EventRolloutCompleted, RolloutID: ro.id,
		Message: fmt.Sprintf("rollout completed: %d updated, %d failed, %d rolled back", ro.completed, ro.failed, ro.rolledBack),
		Data: map[string]any{
			"updated_devices": ro.completed, "failed_devices": ro.failed, "rolled_back_devices": ro.rolledBack,
			"failure_rate": ro.failureRate, "total_batches": ro.totalBatches,
		}})
	return nil
}

// moveFleetDefaults rewrites, in the default targets of the fleets of the rollout's devices, the
// services running repository (those keep admits; nil: all) to image, set-based.
func moveFleetDefaults(ctx context.Context, tx pgx.Tx, rolloutID, repository, image string, keep func(imageref.Ref) bool) (int, error) {
	rows, err := tx.Query(ctx, `SELECT f.fleet_id, f.apps FROM fleet_target_state f
		WHERE f.fleet_id IN (SELECT DISTINCT dv.fleet_id FROM device_rollout_status s
		                     JOIN devices dv ON dv.uuid = s.device_uuid
		                     WHERE s.rollout_id = $1 AND dv.fleet_id IS NOT NULL)
		ORDER BY f.fleet_id FOR UPDATE OF f`, rolloutID)
	if err != nil {
		return 0, fmt.Errorf("read fleet defaults: %w", err)
	}
	var ids, docs []string
	type fleet struct {
		id   string
		apps []byte
	}
	fleets, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (fleet, error) {
		var f fleet
		return f, r.Scan(&f.id, &f.apps)
	})
	if err != nil {
		return 0, fmt.Errorf("read fleet defaults: %w", err)
	}
	for _, f := range fleets {
		var apps target.Apps
		if err := json.Unmarshal(f.apps, &apps); err != nil {
			continue // a default we cannot read is left alone
		}
		moved, changed, _ := target.SetImage(apps, repository, image, keep)
		if !changed {
			continue
		}
		b, err := json.Marshal(moved)
		if err != nil {
			return 0, fmt.Errorf("encode fleet %s default: %w", f.id, err)
		}
		ids, docs = append(ids, f.id), append(docs, string(b))
	}
	if len(ids) == 0 {
		return 0, nil
	}
	if _, err := tx.Exec(ctx, `UPDATE fleet_target_state f SET apps = u.apps::jsonb, version = f.version + 1,
		updated_at = now() FROM unnest($1::text[], $2::text[]) AS u(fleet_id, apps)
		WHERE f.fleet_id = u.fleet_id`, ids, docs); err != nil {
		return 0, fmt.Errorf("move fleet defaults: %w", err)
	}
	return len(ids), nil
}

// rolloutRef is what a rollback needs to know about a rollout.
type rolloutRef struct {
	id, status, repository, newImage, oldTag string
}

func (ro rollout) ref() rolloutRef {
	return rolloutRef{id: ro.id, status: ro.status, repository: ro.repository, newImage: ro.newImage, oldTag: ro.oldTag}
}

// lockRollout locks a rollout row for the rest of tx.
func lockRollout(ctx context.Context, tx pgx.Tx, id string) (rolloutRef, error) {
	ref := rolloutRef{id: id}
	if _, err := uuid.Parse(id); err != nil {
		return ref, apierr.New(apierr.ErrNotFound, "rollout_not_found", "rollout %s not found", id)
	}
	err := tx.QueryRow(ctx, `SELECT status, repository, new_image, COALESCE(old_tag, '') FROM image_rollouts
		WHERE rollout_id = $1::uuid FOR UPDATE`, id).Scan(&ref.status, &ref.repository, &ref.newImage, &ref.oldTag)
	if errors.Is(err, pgx.ErrNoRows) {
		return ref, apierr.New(apierr.ErrNotFound, "rollout_not_found", "rollout %s not found", id)
	}
	if err != nil {
		return ref, fmt.Errorf("lock rollout %s: %w", id, err)
	}
	return ref, nil
}
