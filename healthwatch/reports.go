package healthwatch

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetshift/fleetshift/shared/events"
	"github.com/fleetshift/fleetshift/shared/lifecycle"
	"github.com/fleetshift/fleetshift/streams"
)

// report is one device's report, in stream order.
type report struct {
	device string
	body   streams.DeviceReport
	// raw is the report as the device sent it; at is when it reached JetStream.
	raw json.RawMessage
	at  time.Time
}

// activeRollout are the rollout statuses whose devices' reports count. ("scheduled" is included so that
// a maintenance-window rollout that dispatched a batch keeps tracking it.)
var activeRollout = []string{rolloutScheduled, rolloutInProgress, rolloutPaused, rolloutAwaitingApproval}

// applyReports applies reports in one transaction, set-based. It stores each device's latest report
// when it differs from the stored one, then reads, without locking, the in-flight rows of the reporting
// devices in active rollouts and folds each device's reports in order. Only when some row would move
// does it lock those rollouts (in id order, so concurrent replicas never deadlock on them), read their
// rows again under the lock, fold again, write every transition in one conditional UPDATE (WHERE status
// = what was read), record the events, and settle the touched rollouts; the counters move by the
// transitions' deltas (trigger). A batch of reports that changes nothing locks and writes no rollout or
// device row. It returns after commit.
func (s *Service) applyReports(ctx context.Context, reps []report) error {
	if len(reps) == 0 {
		return nil
	}
	byDevice := make(map[string][]report, len(reps))
	uuids := make([]string, 0, len(reps))
	for _, r := range reps {
		if _, ok := byDevice[r.device]; !ok {
			uuids = append(uuids, r.device)
		}
		byDevice[r.device] = append(byDevice[r.device], r)
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("apply %d reports: begin: %w", len(reps), err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	w := &work{tx: tx, subj: s.subj, actor: actorHealthwatch}

	backs, err := storeCurrentState(ctx, tx, reps, s.seenEvery)
	if err != nil {
		return err
	}
	if err := cameOnline(ctx, w, backs); err != nil {
		return err
	}
	policies := map[string]policy{}
	refs := refCache{}
	// Phase 1, no lock: which rollouts would these reports move?
	current, err := readInFlight(ctx, tx, uuids, nil)
	if err != nil {
		return err
	}
	var moving []string
	for _, c := range s.transitions(current, byDevice, policies, refs) {
		moving = append(moving, c.rollout)
	}
	// Images reported downloaded ahead (download-ahead rollouts): their rollouts are locked with the
	// moving ones, in one id order.
	dl := downloadsOf(reps)
	if dl.any() {
		ids, err := dl.rollouts(ctx, tx)
		if err != nil {
			return err
		}
		moving = append(moving, ids...)
	}
	if len(moving) == 0 {
		return s.commitReports(ctx, w, backs)
	}
	slices.Sort(moving)
	lockRows, err := tx.Query(ctx, `SELECT r.rollout_id::text FROM image_rollouts r
		WHERE r.rollout_id = ANY($1::uuid[]) AND r.status = ANY($2)
		ORDER BY r.rollout_id FOR UPDATE OF r`, slices.Compact(moving), activeRollout)
	if err != nil {
		return fmt.Errorf("apply reports: lock rollouts: %w", err)
	}
	locked, err := pgx.CollectRows(lockRows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("apply reports: lock rollouts: %w", err)
	}
	if len(locked) == 0 {
		return s.commitReports(ctx, w, backs)
	}
	// Phase 2, under the locks: the rows as they are now.
	if current, err = readInFlight(ctx, tx, uuids, locked); err != nil {
		return err
	}
	changes := map[[2]string]change{}
	var rolloutIDs, devices, expected, next, reasons, logs []string
	for _, c := range s.transitions(current, byDevice, policies, refs) {
		changes[[2]string{c.rollout, c.device}] = c
		rolloutIDs = append(rolloutIDs, c.rollout)
		devices = append(devices, c.device)
		expected = append(expected, c.status)
		next = append(next, c.to.status)
		reasons = append(reasons, boundHead(c.to.reason, maxFailureReason))
		logs = append(logs, boundTail(c.to.log, maxFailureLog))
	}
	if dl.any() {
		if err := dl.record(ctx, w, locked); err != nil {
			return err
		}
	}
	if len(devices) == 0 {
		return s.commitReports(ctx, w, backs)
	}
	res, err := tx.Query(ctx, `UPDATE device_rollout_status d SET
			status = u.status,
			error_message = CASE WHEN u.status = `+lifecycle.SQL(lifecycle.DeviceFailed)+` THEN NULLIF(u.reason, '') ELSE d.error_message END,
			failure_reason = CASE WHEN u.status = `+lifecycle.SQL(lifecycle.DeviceFailed)+` THEN NULLIF(u.reason, '') ELSE d.failure_reason END,
			failure_log = CASE WHEN u.status = `+lifecycle.SQL(lifecycle.DeviceFailed)+` THEN NULLIF(u.log, '') ELSE d.failure_log END,
			started_at = COALESCE(d.started_at, now()),
			completed_at = CASE WHEN u.status IN (`+lifecycle.SQL(lifecycle.DeviceCompleted, lifecycle.DeviceFailed)+`) THEN now() ELSE d.completed_at END,
			updated_at = now()
		FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
		     AS u(rollout_id, device_uuid, expected, status, reason, log)
		WHERE d.rollout_id = u.rollout_id AND d.device_uuid = u.device_uuid AND d.status = u.expected
		RETURNING d.rollout_id::text, d.device_uuid`, rolloutIDs, devices, expected, next, reasons, logs)
	if err != nil {
		return fmt.Errorf("apply reports: update device rows: %w", err)
	}
	applied, err := pgx.CollectRows(res, func(r pgx.CollectableRow) ([2]string, error) {
		var k [2]string
		return k, r.Scan(&k[0], &k[1])
	})
	if err != nil {
		return fmt.Errorf("apply reports: update device rows: %w", err)
	}
	var touched []string
	news := map[string]finishes{}
	for _, k := range applied {
		c := changes[k]
		if rank(c.to.status) == rank(statusCompleted) {
			n := news[c.rollout]
			n.finished++
			if c.to.status == statusFailed {
				n.failed++
			}
			news[c.rollout] = n
		}
		for _, e := range transitionEvents(c.rollout, c.device, c.batch, c.newImage, c.status, c.to, policies[c.rollout]) {
			w.event(e)
		}
		touched = append(touched, c.rollout)
	}
	if err := retryFailures(ctx, w, applied, changes, news); err != nil {
		return fmt.Errorf("apply reports: %w", err)
	}
	slices.Sort(touched)
	if err := settle(ctx, w, slices.Compact(touched), news); err != nil {
		return fmt.Errorf("apply reports: %w", err)
	}
	return s.commitReports(ctx, w, backs)
}

// commitReports commits a report transaction (with its events), then sends devices that came online
// their newest target again.
func (s *Service) commitReports(ctx context.Context, w *work, backs []back) error {
	if err := w.commit(ctx); err != nil {
		return fmt.Errorf("apply reports: commit: %w", err)
	}
	s.renotify(ctx, backs)
	return nil
}

// inFlightRow is a device row a report can move, with what its rollout expects.
type inFlightRow struct {
	rollout, device, status string
	batch                   int
	newImage, repository    string
	policy                  []byte
	scheduledAt             *time.Time
	// targetVersion is the target generation the row was dispatched with; retries counts its re-dispatches.
	targetVersion *int64
	retries       int
}

// change is a device row and where its reports move it.
type change struct {
	inFlightRow
	to verdict
}

// readInFlight reads the in-flight rows of devices uuids in active rollouts (only in rollouts, when
// rollouts is not nil).
func readInFlight(ctx context.Context, tx pgx.Tx, uuids, rollouts []string) ([]inFlightRow, error) {
	rows, err := tx.Query(ctx, `SELECT d.rollout_id::text, d.device_uuid, d.status, d.batch_number,
		       COALESCE(NULLIF(d.new_image, ''), r.new_image), r.repository, r.policy, d.scheduled_at,
		       d.target_version, d.retry_count
		FROM device_rollout_status d JOIN image_rollouts r ON r.rollout_id = d.rollout_id
		WHERE d.device_uuid = ANY($1) AND d.status = ANY($2) AND r.status = ANY($3)
		  AND ($4::uuid[] IS NULL OR d.rollout_id = ANY($4::uuid[]))`, uuids, inFlight, activeRollout, rollouts)
	if err != nil {
		return nil, fmt.Errorf("apply reports: read device rows: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (inFlightRow, error) {
		var x inFlightRow
		return x, r.Scan(&x.rollout, &x.device, &x.status, &x.batch, &x.newImage, &x.repository, &x.policy, &x.scheduledAt,
			&x.targetVersion, &x.retries)
	})
	if err != nil {
		return nil, fmt.Errorf("apply reports: read device rows: %w", err)
	}
	return out, nil
}

// transitions folds each row's reports (byDevice, in stream order) and returns the rows that move.
func (s *Service) transitions(rows []inFlightRow, byDevice map[string][]report, policies map[string]policy, refs refCache) []change {
	var out []change
	for _, c := range rows {
		newRef, err := refs.parse(c.newImage)
		if err != nil {
			s.log.Warn().Err(err).Str("rollout", c.rollout).Msg("device row has an unreadable new image; ignoring its reports")
			continue
		}
		pol, ok := policies[c.rollout]
		if !ok {
			pol = parsePolicy(c.policy)
			policies[c.rollout] = pol
		}
		img := rowImage{repository: c.repository, newRef: newRef, refs: refs}
		verdicts := make([]verdict, 0, len(byDevice[c.device]))
		for _, rep := range byDevice[c.device] {
			// A report sent before the device was scheduled says nothing about this rollout (it may
			// have waited in the stream while the batch was dispatched).
			if c.scheduledAt != nil && !rep.at.IsZero() && rep.at.Before(*c.scheduledAt) {
				continue
			}
			if staleForRetry(c.inFlightRowRetry(), rep.body.TargetVersion) {
				continue
			}
			verdicts = append(verdicts, derive(rep.body, img, pol.HealthCheckEnabled))
		}
		to := fold(c.status, verdicts)
		if to.status == c.status {
			continue
		}
		out = append(out, change{inFlightRow: c, to: to})
	}
	return out
}

// transitionEvents are the events of one device moving from status from to verdict to:
// image.device_updated when it first runs the new image (health_checking, or completed directly),
// image.health_check_passed when it completes with health checks on, image.health_check_failed when its
// health check failed or timed out, and image.device_failed for every failure.
func transitionEvents(rolloutID, device string, batch int, newImage, from string, to verdict, pol policy) []events.Event {
	data := map[string]any{"batch": batch, "from": from, "status": to.status, "new_image": newImage}
	ev := func(typ, msg string) events.Event {
		return events.Event{Type: typ, RolloutID: rolloutID, DeviceUUID: device, Message: msg, Data: data}
	}
	var out []events.Event
	switch to.status {
	case statusHealthChecking:
		if rank(from) < rank(statusHealthChecking) {
			out = append(out, ev(streams.EventDeviceUpdated, "device runs "+newImage+"; health check pending"))
		}
	case statusCompleted:
		if rank(from) < rank(statusHealthChecking) {
			out = append(out, ev(streams.EventDeviceUpdated, "device runs "+newImage))
		}
		if pol.HealthCheckEnabled {
			out = append(out, ev(streams.EventHealthPassed, "device healthy on "+newImage))
		}
	case statusFailed:
		if to.unhealthy {
			out = append(out, ev(streams.EventHealthFailed, to.reason))
		}
		data["error"] = to.reason
		out = append(out, ev(streams.EventDeviceFailed, to.reason))
	}
	return out
}

// storeCurrentState records each reporting device's latest report in device_current_state (and marks
// the device seen, at most every 30 s), set-based. A report never replaces a newer one, so redeliveries
// and replicas cannot move a device's state back in time, and a report equal to the stored one writes
// nothing.
func storeCurrentState(ctx context.Context, tx pgx.Tx, reps []report, seenEvery time.Duration) ([]back, error) {
	latest := make(map[string]report, len(reps))
	for _, r := range reps {
		if len(r.raw) == 0 {
			continue
		}
		if cur, ok := latest[r.device]; !ok || !r.at.Before(cur.at) {
			latest[r.device] = r
		}
	}
	if len(latest) == 0 {
		return nil, nil
	}
	uuids := make([]string, 0, len(latest))
	for u := range latest {
		uuids = append(uuids, u)
	}
	slices.Sort(uuids) // one lock order for every writer of these rows
	raws := make([]string, len(uuids))
	ats := make([]time.Time, len(uuids))
	for i, u := range uuids {
		raws[i], ats[i] = string(latest[u].raw), latest[u].at
	}
	if _, err := tx.Exec(ctx, `
		WITH r AS (
			SELECT u.device_uuid, u.report::jsonb AS report, u.at
			FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS u(device_uuid, report, at)
			JOIN devices d ON d.uuid = u.device_uuid AND d.revoked_at IS NULL
		), cur AS (
			INSERT INTO device_current_state AS s (device_uuid, apps, config, report, reported_at)
			SELECT r.device_uuid,
			       CASE WHEN jsonb_typeof(r.report->'apps') = 'object' THEN r.report->'apps' ELSE '{}'::jsonb END,
			       CASE WHEN jsonb_typeof(r.report->'config') = 'object' THEN r.report->'config' ELSE '{}'::jsonb END,
			       r.report, r.at
			FROM r ORDER BY r.device_uuid
			ON CONFLICT (device_uuid) DO UPDATE SET
				apps = EXCLUDED.apps,
				config = CASE WHEN jsonb_typeof(EXCLUDED.report->'config') = 'object' THEN EXCLUDED.config ELSE s.config END,
				report = EXCLUDED.report,
				reported_at = EXCLUDED.reported_at
			-- newest wins, and an unchanged report (same images, statuses, health) writes nothing:
			-- reported_at is when the device's reported state last changed; last_seen_at says it is alive.
			WHERE s.reported_at <= EXCLUDED.reported_at AND s.report IS DISTINCT FROM EXCLUDED.report
		)
		SELECT count(*) FROM r`, uuids, raws, ats); err != nil {
		return nil, fmt.Errorf("store current state: %w", err)
	}
	// last_seen_at is kept to seenEvery (device_current_state.reported_at is exact): rewriting every
	// device row on every report costs a new tuple and an entry in every index of devices.
	return markSeenAt(ctx, tx, uuids, ats, seenEvery)
}
