package healthwatch

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleetshift/fleetshift/shared/command"
	"github.com/fleetshift/fleetshift/shared/consume"
	"github.com/fleetshift/fleetshift/shared/events"
	"github.com/fleetshift/fleetshift/shared/lifecycle"
	policies "github.com/fleetshift/fleetshift/shared/policy"
	"github.com/fleetshift/fleetshift/streams"
)

// claimLimit bounds how many rollouts one timer transaction claims.
const claimLimit = 100

// startDueBatches claims in-progress rollouts whose next_batch_at has passed (FOR UPDATE SKIP LOCKED,
// so replicas share them; rate rollouts, whose next_batch_at is their rate timer, are paceRates'), clears
// the timer, records the batch as requested and writes the
// dispatch request for batch current_batch+1 (command.Next), all in one transaction: the command is
// written exactly once, whatever restarts. It returns how many batches it requested.
func (s *Service) startDueBatches(ctx context.Context) (int, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("start due batches: begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	rows, err := tx.Query(ctx, `
		WITH due AS (
			SELECT rollout_id FROM image_rollouts
			WHERE next_batch_at <= now() AND status = `+lifecycle.SQL(lifecycle.InProgress)+`
			  AND strategy <> '`+policies.Rate+`'
			ORDER BY next_batch_at LIMIT $1
			FOR UPDATE SKIP LOCKED
		)
		UPDATE image_rollouts r SET next_batch_at = NULL, requested_batch = r.current_batch + 1, requested_at = now(),
			updated_at = now()
		FROM due WHERE r.rollout_id = due.rollout_id
		RETURNING r.rollout_id::text, r.requested_batch`, claimLimit)
	if err != nil {
		return 0, fmt.Errorf("start due batches: claim: %w", err)
	}
	type due struct {
		id    string
		batch int
	}
	claimed, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (due, error) {
		var d due
		return d, r.Scan(&d.id, &d.batch)
	})
	if err != nil {
		return 0, fmt.Errorf("start due batches: claim: %w", err)
	}
	if len(claimed) == 0 {
		return 0, nil
	}
	reqs := make([]command.Dispatch, 0, len(claimed))
	for _, d := range claimed {
		reqs = append(reqs, command.Dispatch{RolloutID: d.id, Batch: d.batch, Purpose: command.Next})
	}
	if err := command.Request(ctx, tx, s.subj, reqs...); err != nil {
		return 0, fmt.Errorf("start due batches: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("start due batches: commit: %w", err)
	}
	for _, d := range claimed {
		s.log.Info().Str("rollout", d.id).Int("batch", d.batch).Msg("next batch requested")
	}
	return len(claimed), nil
}

// timeoutBatch is the most timed-out devices one tick checks for a waiting report and may fail.
const timeoutBatch = 1000

// failTimedOut fails, set-based, every in-flight device whose health_deadline has passed ("health check
// timeout"), for the active rollouts it can lock without waiting (SKIP LOCKED: a replica busy with one
// leaves it to the next tick), records the events and settles those rollouts. It returns how many
// devices it failed.
//
// A device times out only when no passing report of it is waiting anywhere: before failing them, it
// applies each due device's last report on the REPORTS stream (applyWaitingReports), which may still
// be unacknowledged with a consumer that died, and fails only devices so checked.
func (s *Service) failTimedOut(ctx context.Context) (int, error) {
	checked, err := s.applyWaitingReports(ctx)
	if err != nil {
		return 0, fmt.Errorf("fail timed-out devices: %w", err)
	}
	if checked != nil && len(checked) == 0 {
		return 0, nil
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("fail timed-out devices: begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	lockRows, err := tx.Query(ctx, `SELECT r.rollout_id::text FROM image_rollouts r
		WHERE r.rollout_id IN (SELECT d.rollout_id FROM device_rollout_status d
		                       WHERE d.health_deadline < now()
		                         AND d.status IN (`+lifecycle.SQL(lifecycle.InFlight...)+`)
		                         AND ($3::text[] IS NULL OR d.device_uuid = ANY($3))
		                         -- an offline device's deadline is suspended (presence.go)
		                         AND NOT EXISTS (SELECT 1 FROM devices v WHERE v.uuid = d.device_uuid AND v.offline_since IS NOT NULL))
		  AND r.status = ANY($1)
		ORDER BY r.rollout_id LIMIT $2
		FOR UPDATE OF r SKIP LOCKED`, activeRollout, claimLimit, checked)
	if err != nil {
		return 0, fmt.Errorf("fail timed-out devices: lock rollouts: %w", err)
	}
	locked, err := pgx.CollectRows(lockRows, pgx.RowTo[string])
	if err != nil {
		return 0, fmt.Errorf("fail timed-out devices: lock rollouts: %w", err)
	}
	if len(locked) == 0 {
		return 0, nil
	}
	res, err := tx.Query(ctx, `UPDATE device_rollout_status d SET status = `+lifecycle.SQL(lifecycle.DeviceFailed)+`,
			error_message = 'health check timeout', failure_reason = 'health check timeout', failure_log = NULL,
			completed_at = now(), updated_at = now()
		FROM (SELECT rollout_id, device_uuid, status FROM device_rollout_status
		      WHERE rollout_id = ANY($1::uuid[]) AND health_deadline < now()
		        AND status IN (`+lifecycle.SQL(lifecycle.InFlight...)+`)
		        AND ($2::text[] IS NULL OR device_uuid = ANY($2))
		        AND NOT EXISTS (SELECT 1 FROM devices v WHERE v.uuid = device_uuid AND v.offline_since IS NOT NULL)
		      FOR UPDATE) o
		WHERE d.rollout_id = o.rollout_id AND d.device_uuid = o.device_uuid
		RETURNING d.rollout_id::text, d.device_uuid, o.status, d.batch_number, COALESCE(d.new_image, '')`, locked, checked)
	if err != nil {
		return 0, fmt.Errorf("fail timed-out devices: %w", err)
	}
	type failed struct {
		rollout, device, from string
		batch                 int
		newImage              string
	}
	out, err := pgx.CollectRows(res, func(r pgx.CollectableRow) (failed, error) {
		var f failed
		return f, r.Scan(&f.rollout, &f.device, &f.from, &f.batch, &f.newImage)
	})
	if err != nil {
		return 0, fmt.Errorf("fail timed-out devices: %w", err)
	}
	w := &work{tx: tx, subj: s.subj, actor: actorHealthwatch}
	news := map[string]finishes{}
	for _, f := range out {
		news[f.rollout] = finishes{finished: news[f.rollout].finished + 1, failed: news[f.rollout].failed + 1}
		data := map[string]any{"batch": f.batch, "from": f.from, "status": statusFailed, "new_image": f.newImage,
			"error": "health check timeout"}
		if f.from == statusHealthChecking {
			w.event(events.Event{Type: streams.EventHealthFailed, RolloutID: f.rollout, DeviceUUID: f.device,
				Message: "health check timeout", Data: data})
		}
		w.event(events.Event{Type: streams.EventDeviceFailed, RolloutID: f.rollout, DeviceUUID: f.device,
			Message: "health check timeout", Data: data})
	}
	failedBy := map[string][]string{}
	for _, f := range out {
		failedBy[f.rollout] = append(failedBy[f.rollout], f.device)
	}
	if err := discountRetried(ctx, w, failedBy, news); err != nil {
		return 0, fmt.Errorf("fail timed-out devices: %w", err)
	}
	if err := settle(ctx, w, locked, news); err != nil {
		return 0, fmt.Errorf("fail timed-out devices: %w", err)
	}
	if err := w.commit(ctx); err != nil {
		return 0, fmt.Errorf("fail timed-out devices: commit: %w", err)
	}
	return len(out), nil
}

// sweep settles in-progress rollouts whose current batch has no open device but whose next step is
// not taken yet: a batch that supersede, rollback or the dispatcher's skips emptied, a batch that
// finished while the rollout was paused or awaiting approval and was resumed since, a last batch left
// to complete. Nothing waits for a report that will never come.
func (s *Service) sweep(ctx context.Context) (int, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("sweep rollouts: begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	rows, err := tx.Query(ctx, `SELECT r.rollout_id::text FROM image_rollouts r
		WHERE r.status = `+lifecycle.SQL(lifecycle.InProgress)+` AND r.next_batch_at IS NULL AND r.current_batch >= 1
		  AND (r.completed_batch < r.current_batch OR r.requested_batch <= r.current_batch)
		  AND NOT EXISTS (SELECT 1 FROM device_rollout_status d
		                  WHERE d.rollout_id = r.rollout_id AND d.batch_number = r.current_batch
		                    AND d.status IN (`+lifecycle.SQL(lifecycle.Unfinished...)+`))
		ORDER BY r.rollout_id LIMIT $1
		FOR UPDATE OF r SKIP LOCKED`, claimLimit)
	if err != nil {
		return 0, fmt.Errorf("sweep rollouts: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return 0, fmt.Errorf("sweep rollouts: %w", err)
	}
	if len(ids) == 0 {
		return 0, nil
	}
	w := &work{tx: tx, subj: s.subj, actor: actorHealthwatch}
	if err := settle(ctx, w, ids, nil); err != nil {
		return 0, fmt.Errorf("sweep rollouts: %w", err)
	}
	if err := w.commit(ctx); err != nil {
		return 0, fmt.Errorf("sweep rollouts: commit: %w", err)
	}
	return len(ids), nil
}

// retryLostDispatches repeats the DispatchV1 command of in-progress rollouts whose requested batch the
// dispatcher has not started within retryAfter (it drops commands for a rollout that is not in
// progress, e.g. one paused meanwhile and resumed since). The dispatcher handles a batch once however
// often it is asked; the repeat carries its own message id so JetStream does not drop it as a duplicate.
func (s *Service) retryLostDispatches(ctx context.Context) (int, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("retry lost dispatches: begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	rows, err := tx.Query(ctx, `
		WITH lost AS (
			SELECT rollout_id FROM image_rollouts
			WHERE status = `+lifecycle.SQL(lifecycle.InProgress)+` AND requested_batch > current_batch
			  AND requested_at < now() - make_interval(secs => $1)
			ORDER BY requested_at LIMIT $2
			FOR UPDATE SKIP LOCKED
		)
		UPDATE image_rollouts r SET requested_at = now() FROM lost WHERE r.rollout_id = lost.rollout_id
		RETURNING r.rollout_id::text, r.requested_batch, (extract(epoch FROM now()) * 1000)::bigint`,
		s.retryAfter.Seconds(), claimLimit)
	if err != nil {
		return 0, fmt.Errorf("retry lost dispatches: %w", err)
	}
	type lost struct {
		id    string
		batch int
		at    int64
	}
	found, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (lost, error) {
		var l lost
		return l, r.Scan(&l.id, &l.batch, &l.at)
	})
	if err != nil {
		return 0, fmt.Errorf("retry lost dispatches: %w", err)
	}
	if len(found) == 0 {
		return 0, nil
	}
	reqs := make([]command.Dispatch, 0, len(found))
	for _, l := range found {
		reqs = append(reqs, command.Dispatch{RolloutID: l.id, Batch: l.batch, Purpose: command.Retry,
			Discriminator: strconv.FormatInt(l.at, 10)})
		s.log.Warn().Str("rollout", l.id).Int("batch", l.batch).Msg("requested batch not started; asking the dispatcher again")
	}
	if err := command.Request(ctx, tx, s.subj, reqs...); err != nil {
		return 0, fmt.Errorf("retry lost dispatches: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("retry lost dispatches: commit: %w", err)
	}
	return len(found), nil
}

// applyWaitingReports reads the last report on the REPORTS stream (direct get, last by subject
// <prefix>.device.<uuid>.state) of up to timeoutBatch in-flight devices whose health deadline has
// passed, applies them like any report (a passing one completes its device; applying one twice changes
// nothing), and returns the devices it checked. A report the consumer holds unacknowledged (its replica
// died; redelivery waits for the ack wait) is read here too. If the stream cannot be read, it returns an
// error and no device times out this tick. Without a REPORTS stream (tests that call steps directly) it
// returns nil: no restriction.
func (s *Service) applyWaitingReports(ctx context.Context) ([]string, error) {
	if s.reports == nil {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx, `SELECT DISTINCT d.device_uuid FROM device_rollout_status d
		JOIN image_rollouts r ON r.rollout_id = d.rollout_id
		WHERE d.health_deadline < now() AND d.status = ANY($1) AND r.status = ANY($2)
		LIMIT $3`, inFlight, activeRollout, timeoutBatch)
	if err != nil {
		return nil, fmt.Errorf("find timed-out devices: %w", err)
	}
	devices, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("find timed-out devices: %w", err)
	}
	if len(devices) == 0 {
		return []string{}, nil
	}
	reps := make([]*report, len(devices))
	errs := make([]error, len(devices))
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i, d := range devices {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			msg, err := s.reports.GetLastMsgForSubject(ctx, s.subj.DeviceState(d))
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				return
			}
			if err != nil {
				errs[i] = fmt.Errorf("read last report of %s: %w", d, err)
				return
			}
			rep, ok, err := s.parseReport(msg.Subject, msg.Data, msg.Time)
			if err == nil && ok {
				reps[i] = &rep
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	var waiting []report
	for _, r := range reps {
		if r != nil {
			waiting = append(waiting, *r)
		}
	}
	if err := s.applyReports(ctx, waiting); err != nil {
		if consume.Unavailable(err) {
			return nil, fmt.Errorf("apply waiting reports: %w", err)
		}
		// One report that cannot be applied must not keep every other device from timing out.
		for _, r := range waiting {
			if err := s.applyReports(ctx, []report{r}); err != nil {
				if consume.Unavailable(err) {
					return nil, fmt.Errorf("apply waiting reports: %w", err)
				}
				s.log.Warn().Err(err).Str("device", r.device).Msg("last report of a timed-out device cannot be applied")
			}
		}
	}
	return devices, nil
}
