package healthwatch

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetshift/fleetshift/shared/command"
	"github.com/fleetshift/fleetshift/shared/lifecycle"
	policies "github.com/fleetshift/fleetshift/shared/policy"
	"github.com/fleetshift/fleetshift/shared/window"
	"github.com/fleetshift/fleetshift/streams"
)

// policyWindow reads the maintenance window of a policy snapshot (image_rollouts.policy,
// policy.Window). A snapshot without both window times has a whole-day window; ok is false when the
// window cannot be read (the caller treats it as open: a rollout must never stall on an odd snapshot).
func policyWindow(raw []byte) (w window.Window, ok bool) {
	p := policies.FromJSON(raw)
	w, _, ok = p.Window()
	return w, ok
}

// openWindows is the maintenance-window timer of scheduled rollouts (status 'scheduled'), claimed with
// SKIP LOCKED so replicas share them. A rollout whose window is open now (Config.Now) goes to
// in_progress and gets the dispatch command it needs (RequestDispatch) in the same transaction; one
// outside its window gets next_batch_at = the window's next opening, a durable timer that survives any
// restart. It returns how many rollouts it opened.
func (s *Service) openWindows(ctx context.Context) (int, error) {
	now := s.now()
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("open maintenance windows: begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	rows, err := tx.Query(ctx, `SELECT rollout_id::text, policy FROM image_rollouts
		WHERE status = `+lifecycle.SQL(lifecycle.Scheduled)+` AND (next_batch_at IS NULL OR next_batch_at <= $1)
		ORDER BY rollout_id LIMIT $2
		FOR UPDATE SKIP LOCKED`, now, claimLimit)
	if err != nil {
		return 0, fmt.Errorf("open maintenance windows: claim: %w", err)
	}
	type claimed struct {
		id     string
		policy []byte
	}
	due, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (claimed, error) {
		var c claimed
		return c, r.Scan(&c.id, &c.policy)
	})
	if err != nil {
		return 0, fmt.Errorf("open maintenance windows: claim: %w", err)
	}
	if len(due) == 0 {
		return 0, nil
	}
	var open, waitIDs []string
	var waitUntil []time.Time
	for _, c := range due {
		w, ok := policyWindow(c.policy)
		if !ok {
			s.log.Warn().Str("rollout", c.id).Msg("unreadable maintenance window in the policy snapshot; treating it as open")
		}
		if !ok || w.Contains(now) {
			open = append(open, c.id)
			continue
		}
		waitIDs, waitUntil = append(waitIDs, c.id), append(waitUntil, w.NextOpen(now))
	}
	if len(waitIDs) > 0 {
		if _, err := tx.Exec(ctx, `UPDATE image_rollouts r SET next_batch_at = u.at, updated_at = now()
			FROM unnest($1::uuid[], $2::timestamptz[]) AS u(id, at)
			WHERE r.rollout_id = u.id AND r.status = `+lifecycle.SQL(lifecycle.Scheduled)+``, waitIDs, waitUntil); err != nil {
			return 0, fmt.Errorf("open maintenance windows: set timers: %w", err)
		}
	}
	if len(open) > 0 {
		if _, err := tx.Exec(ctx, `UPDATE image_rollouts SET status = `+lifecycle.SQL(lifecycle.InProgress)+`, next_batch_at = NULL,
			updated_at = now() WHERE rollout_id = ANY($1::uuid[]) AND status = `+lifecycle.SQL(lifecycle.Scheduled)+``, open); err != nil {
			return 0, fmt.Errorf("open maintenance windows: %w", err)
		}
		for _, id := range open {
			if _, err := RequestDispatch(ctx, tx, s.subj, id); err != nil {
				return 0, fmt.Errorf("open maintenance windows: %w", err)
			}
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("open maintenance windows: commit: %w", err)
	}
	for _, id := range open {
		s.log.Info().Str("rollout", id).Msg("maintenance window open; rollout in progress")
	}
	return len(open), nil
}

// RequestDispatch writes, in tx, the dispatch command that a rollout just set (back) to in_progress
// needs to go on at once, and returns the batch it asked for (0: none needed). The caller holds the
// rollout's row lock. It asks for:
//
//   - the current batch, when it still has pending devices (dispatch was stopped by a pause, or cut by
//     the end of a maintenance window);
//   - else a batch requested earlier that the dispatcher never started (it drops commands for rollouts
//     that are not in progress);
//   - else batch 1 of a rollout never dispatched.
//
// Otherwise nothing: healthwatch's sweep settles a finished batch (next batch, or completion). A rate
// rollout is never asked for here: its rate timer (paceRates) dispatches its next chunk, at once when
// next_batch_at is unset (pause and resume unset it). The
// command (command.Resume) is told apart by the time of this request, so JetStream never drops it as a
// duplicate of an earlier one; the dispatcher handles a batch once however often it is asked.
func RequestDispatch(ctx context.Context, tx pgx.Tx, subj streams.Subjects, rolloutID string) (int, error) {
	var batch int
	var at int64
	err := tx.QueryRow(ctx, `
		WITH x AS (
			SELECT r.rollout_id, CASE
				WHEN r.strategy = '`+policies.Rate+`' THEN 0
				WHEN r.current_batch >= 1 AND EXISTS (SELECT 1 FROM device_rollout_status d
					WHERE d.rollout_id = r.rollout_id AND d.batch_number = r.current_batch AND d.status = `+lifecycle.SQL(lifecycle.DevicePending)+`)
					THEN r.current_batch
				WHEN r.requested_batch > r.current_batch THEN r.requested_batch
				WHEN r.current_batch = 0 AND r.total_batches >= 1 THEN 1
				ELSE 0 END AS batch
			FROM image_rollouts r WHERE r.rollout_id = $1::uuid
		)
		UPDATE image_rollouts r SET requested_batch = GREATEST(r.requested_batch, x.batch), requested_at = now(),
			updated_at = now()
		FROM x WHERE r.rollout_id = x.rollout_id AND x.batch > 0
		RETURNING x.batch, (extract(epoch FROM r.requested_at) * 1000)::bigint`, rolloutID).Scan(&batch, &at)
	if err == pgx.ErrNoRows {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("request dispatch of rollout %s: %w", rolloutID, err)
	}
	if err := command.Request(ctx, tx, subj, command.Dispatch{RolloutID: rolloutID, Batch: batch,
		Purpose: command.Resume, Discriminator: strconv.FormatInt(at, 10)}); err != nil {
		return 0, fmt.Errorf("request dispatch of rollout %s: %w", rolloutID, err)
	}
	return batch, nil
}
