package healthwatch

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/events"
	"github.com/fleetshift/fleetshift/shared/imageref"
	"github.com/fleetshift/fleetshift/shared/lifecycle"
	"github.com/fleetshift/fleetshift/shared/target"
	"github.com/fleetshift/fleetshift/streams"
)

// Bounds of what a failure stores (device_rollout_status.failure_reason and failure_log; the columns'
// CHECKs say the same).
const (
	maxFailureReason = 1000
	maxFailureLog    = 4096
)

// boundTail keeps the last max bytes of s, starting at a line (else UTF-8) boundary.
func boundTail(s string, max int) string {
	if len(s) <= max {
		return s
	}
	s = s[len(s)-max:]
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			return s[i+1:]
		}
	}
	for len(s) > 0 && s[0]&0xC0 == 0x80 {
		s = s[1:]
	}
	return s
}

// boundHead keeps the first max bytes of s, cut at a UTF-8 boundary.
func boundHead(s string, max int) string {
	if len(s) <= max {
		return s
	}
	s = s[:max]
	for len(s) > 0 && s[len(s)-1]&0xC0 == 0x80 {
		s = s[:len(s)-1]
	}
	if len(s) > 0 && s[len(s)-1]&0xC0 == 0xC0 {
		s = s[:len(s)-1]
	}
	return s
}

// retried is one device a retry re-dispatched.
type retried struct {
	device  string
	batch   int
	attempt int
	version int64
}

// redispatch re-dispatches the failed devices of the locked rollout ro (those named in devices; all
// when devices is nil) whose retry_count is below limit (limit < 0: no limit), set-based: their targets
// are written again with the rollout's services carrying "retry": <attempt> (a changed document with a
// new version, so the device starts the image afresh; target.Save announces it in order), and their
// rows move failed -> scheduled with a new health deadline, retry_count + 1 and the failure cleared. The
// counters follow by the trigger's deltas (a failed row leaves failed_devices and failures). A device
// whose target no longer runs the rollout's new image is left failed. It records image.device_retried
// per device and returns the devices it moved.
func redispatch(ctx context.Context, w *work, ro rolloutRef, devices []string, limit int, auto bool) ([]retried, error) {
	newRef, err := imageref.Parse(ro.newImage)
	if err != nil {
		return nil, fmt.Errorf("rollout %s new image: %w", ro.id, err)
	}
	rows, err := w.tx.Query(ctx, `
		SELECT s.device_uuid, s.batch_number, s.retry_count, COALESCE(s.failure_reason, s.error_message, ''),
		       COALESCE(NULLIF(s.new_image, ''), r.new_image), t.apps, r.policy
		FROM device_rollout_status s
		JOIN image_rollouts r ON r.rollout_id = s.rollout_id
		JOIN device_target_state t ON t.device_uuid = s.device_uuid
		WHERE s.rollout_id = $1 AND s.status = `+lifecycle.SQL(lifecycle.DeviceFailed)+`
		  AND ($2::text[] IS NULL OR s.device_uuid = ANY($2)) AND ($3 < 0 OR s.retry_count < $3)
		ORDER BY s.device_uuid
		FOR UPDATE OF s, t`, ro.id, devices, limit)
	if err != nil {
		return nil, fmt.Errorf("read failed devices to retry: %w", err)
	}
	type failedRow struct {
		device, reason, newImage string
		batch, retries           int
		apps, policy             []byte
	}
	cur, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (failedRow, error) {
		var f failedRow
		return f, r.Scan(&f.device, &f.batch, &f.retries, &f.reason, &f.newImage, &f.apps, &f.policy)
	})
	if err != nil {
		return nil, fmt.Errorf("read failed devices to retry: %w", err)
	}
	if len(cur) == 0 {
		return nil, nil
	}
	timeout := parsePolicy(cur[0].policy).HealthTimeout().Seconds()
	writes := make([]target.Write, 0, len(cur))
	byDevice := map[string]failedRow{}
	for _, f := range cur {
		rowRef := newRef
		if f.newImage != ro.newImage {
			if rowRef, err = imageref.Parse(f.newImage); err != nil {
				continue
			}
		}
		var apps target.Apps
		if err := json.Unmarshal(f.apps, &apps); err != nil {
			continue // an unreadable target is not ours to repair
		}
		next, ok := setRetry(apps, rowRef, f.retries+1)
		if !ok {
			continue // its target moved on (an operator, a newer rollout): nothing to retry
		}
		writes = append(writes, target.Write{DeviceUUID: f.device, Apps: next})
		byDevice[f.device] = f
	}
	written, err := target.Save(ctx, w.tx, w.subj, writes)
	if err != nil {
		return nil, fmt.Errorf("write and announce retried targets: %w", err)
	}
	uuids := make([]string, 0, len(written))
	versions := make([]int64, 0, len(written))
	for _, x := range written {
		uuids, versions = append(uuids, x.DeviceUUID), append(versions, x.Version)
	}
	res, err := w.tx.Query(ctx, `UPDATE device_rollout_status d SET
			status = `+lifecycle.SQL(lifecycle.DeviceScheduled)+`,
			retry_count = d.retry_count + 1,
			target_version = v.version,
			scheduled_at = now(),
			health_deadline = now() + make_interval(secs => $2),
			error_message = NULL, failure_reason = NULL, failure_log = NULL,
			completed_at = NULL, updated_at = now()
		FROM unnest($3::text[], $4::bigint[]) AS v(device_uuid, version)
		WHERE d.rollout_id = $1 AND d.device_uuid = v.device_uuid AND d.status = `+lifecycle.SQL(lifecycle.DeviceFailed)+`
		RETURNING d.device_uuid, d.batch_number, d.retry_count, d.target_version`, ro.id, timeout, uuids, versions)
	if err != nil {
		return nil, fmt.Errorf("mark devices retried: %w", err)
	}
	out, err := pgx.CollectRows(res, func(r pgx.CollectableRow) (retried, error) {
		var x retried
		return x, r.Scan(&x.device, &x.batch, &x.attempt, &x.version)
	})
	if err != nil {
		return nil, fmt.Errorf("mark devices retried: %w", err)
	}
	slices.SortFunc(out, func(a, b retried) int { return cmpString(a.device, b.device) })
	for _, x := range out {
		f := byDevice[x.device]
		how := "by operator"
		if auto {
			how = "automatically (max_retries)"
		}
		w.event(events.Event{Type: streams.EventDeviceRetried, RolloutID: ro.id, DeviceUUID: x.device,
			Message: fmt.Sprintf("retry %d of %s %s after: %s", x.attempt, f.newImage, how, f.reason),
			Data: map[string]any{"batch": x.batch, "retry": x.attempt, "previous_reason": f.reason, "auto": auto,
				"new_image": f.newImage, "target_version": x.version}})
	}
	return out, nil
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// setRetry returns a copy of apps whose services running image carry "retry": attempt, and whether
// any does.
func setRetry(apps target.Apps, image imageref.Ref, attempt int) (target.Apps, bool) {
	out := make(target.Apps, len(apps))
	found := false
	for id, a := range apps {
		out[id] = a
		app, ok := a.(map[string]any)
		if !ok {
			continue
		}
		svcs, ok := app["services"].([]any)
		if !ok {
			continue
		}
		var next []any
		for i, s := range svcs {
			svc, ok := s.(map[string]any)
			if !ok {
				continue
			}
			raw := target.ServiceImage(svc)
			ref, err := imageref.Parse(raw)
			if err != nil || ref.Repository != image.Repository || ref.Tag != image.Tag || ref.Digest != image.Digest {
				continue
			}
			if next == nil {
				next = slices.Clone(svcs)
			}
			ns := make(map[string]any, len(svc)+1)
			for k, v := range svc {
				ns[k] = v
			}
			ns["retry"] = attempt
			next[i] = ns
			found = true
		}
		if next != nil {
			na := make(map[string]any, len(app))
			for k, v := range app {
				na[k] = v
			}
			na["services"] = next
			out[id] = na
		}
	}
	return out, found
}

// RetryDevices re-dispatches the failed devices of a rollout (those named in devices; every failed one
// when devices is empty), atomically, on behalf of actor: each gets its target written again (the
// rollout's services carry "retry": <attempt>, so the device starts the image afresh), moves failed ->
// scheduled with a new health deadline and retry_count + 1, and is watched as in its first attempt; an
// image.device_retried event records each. It returns the devices it re-dispatched.
//
// Errors wrap apierr sentinels: ErrNotFound (no such rollout, a named device is not in it),
// ErrConflict (the rollout's status does not allow a retry, a named device is not failed, or no device
// of the rollout is failed).
func RetryDevices(ctx context.Context, pool *pgxpool.Pool, subj streams.Subjects, rolloutID string, devices []string, actor string) ([]string, error) {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("retry devices of rollout %s: begin: %w", rolloutID, err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	w := &work{tx: tx, subj: subj, actor: actor}
	ro, err := lockRollout(ctx, tx, rolloutID)
	if err != nil {
		return nil, err
	}
	if err := RetryApplies(ro.status); err != nil {
		return nil, err
	}
	if len(devices) > 0 {
		rows, err := tx.Query(ctx, `SELECT u.device_uuid, COALESCE(d.status, '')
			FROM unnest($2::text[]) AS u(device_uuid)
			LEFT JOIN device_rollout_status d ON d.rollout_id = $1 AND d.device_uuid = u.device_uuid
			ORDER BY u.device_uuid`, ro.id, devices)
		if err != nil {
			return nil, fmt.Errorf("retry devices of rollout %s: %w", rolloutID, err)
		}
		type named struct{ device, status string }
		list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (named, error) {
			var n named
			return n, r.Scan(&n.device, &n.status)
		})
		if err != nil {
			return nil, fmt.Errorf("retry devices of rollout %s: %w", rolloutID, err)
		}
		for _, n := range list {
			if n.status == "" {
				return nil, apierr.New(apierr.ErrNotFound, "device_not_in_rollout", "device %s is not in rollout %s", n.device, rolloutID)
			}
			if n.status != statusFailed {
				return nil, apierr.New(apierr.ErrConflict, "device_not_failed",
					"cannot retry device %s: it is %s, only failed devices are retried", n.device, n.status)
			}
		}
	} else {
		devices = nil
	}
	done, err := redispatch(ctx, w, ro, devices, -1, false)
	if err != nil {
		return nil, fmt.Errorf("retry devices of rollout %s: %w", rolloutID, err)
	}
	if len(done) == 0 && devices == nil {
		return nil, apierr.New(apierr.ErrConflict, "no_failed_devices", "rollout %s has no failed device to retry", rolloutID)
	}
	if err := settle(ctx, w, []string{ro.id}, nil); err != nil {
		return nil, fmt.Errorf("retry devices of rollout %s: %w", rolloutID, err)
	}
	if err := w.commit(ctx); err != nil {
		return nil, fmt.Errorf("retry devices of rollout %s: commit: %w", rolloutID, err)
	}
	out := make([]string, len(done))
	for i, d := range done {
		out[i] = d.device
	}
	return out, nil
}

// RetryApplies says whether a rollout in status may retry its failed devices: in_progress, paused and
// awaiting_approval may (a paused rollout stays paused; its retried devices are watched); any other
// status is an apierr.ErrConflict saying why.
func RetryApplies(status string) error {
	switch status {
	case rolloutInProgress, rolloutPaused, rolloutAwaitingApproval:
		return nil
	case rolloutPending:
		return apierr.New(apierr.ErrConflict, "invalid_state", "cannot retry a pending rollout: it was never started, so no device failed")
	case rolloutScheduled:
		return apierr.New(apierr.ErrConflict, "invalid_state",
			"cannot retry a scheduled rollout: devices are dispatched only inside its maintenance window; retry once it is in progress")
	case rolloutSuperseded:
		return apierr.New(apierr.ErrConflict, "invalid_state", "cannot retry a superseded rollout: its devices moved to the newer rollout")
	}
	if status == rolloutRolledBack {
		return apierr.New(apierr.ErrConflict, "invalid_state", "cannot retry a rolled-back rollout: it has ended")
	}
	return apierr.New(apierr.ErrConflict, "invalid_state", "cannot retry a %s rollout: it has ended", status)
}

// autoRetry re-dispatches, in the report or timeout transaction that failed them, the just-failed
// devices (per rollout) whose policy allows another retry (max_retries), while their rollout is in
// progress. It returns, per rollout, how many it re-dispatched: those do not count as failed.
func autoRetry(ctx context.Context, w *work, failed map[string][]string) (map[string]int, error) {
	out := map[string]int{}
	ids := make([]string, 0, len(failed))
	for id := range failed {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		var raw []byte
		if err := w.tx.QueryRow(ctx, `SELECT policy FROM image_rollouts WHERE rollout_id = $1`, id).Scan(&raw); err != nil {
			return nil, fmt.Errorf("read policy of rollout %s: %w", id, err)
		}
		pol := parsePolicy(raw)
		if pol.MaxRetries <= 0 {
			continue
		}
		ro, err := lockRollout(ctx, w.tx, id) // already locked by this transaction: reads its row
		if err != nil {
			return nil, err
		}
		if ro.status != rolloutInProgress {
			continue
		}
		done, err := redispatch(ctx, w, ro, failed[id], int(pol.MaxRetries), true)
		if err != nil {
			return nil, fmt.Errorf("retry failed devices of rollout %s: %w", id, err)
		}
		out[id] = len(done)
	}
	return out, nil
}

// retryInfo is what decides whether a report is older than a retry of its row.
type retryInfo struct {
	targetVersion *int64
	retries       int
}

func (r inFlightRow) inFlightRowRetry() retryInfo {
	return retryInfo{targetVersion: r.targetVersion, retries: r.retries}
}

// staleForRetry reports whether a report naming target version reported says nothing about a retried
// row: the device has not applied the retry's target yet, so its failed service is still the failure
// that was retried.
func staleForRetry(r retryInfo, reported int64) bool {
	return r.retries > 0 && r.targetVersion != nil && reported > 0 && reported < *r.targetVersion
}

// retryFailures re-dispatches, within a report transaction, the rows that applied just moved to failed
// and whose policy allows it (autoRetry), and takes them out of news: a retried device is not a finish.
func retryFailures(ctx context.Context, w *work, applied [][2]string, changes map[[2]string]change, news map[string]finishes) error {
	failed := map[string][]string{}
	for _, k := range applied {
		if changes[k].to.status == statusFailed {
			failed[k[0]] = append(failed[k[0]], k[1])
		}
	}
	return discountRetried(ctx, w, failed, news)
}

// discountRetried auto-retries the just-failed devices (per rollout) and removes the retried ones from
// the transaction's finishes.
func discountRetried(ctx context.Context, w *work, failed map[string][]string, news map[string]finishes) error {
	if len(failed) == 0 {
		return nil
	}
	n, err := autoRetry(ctx, w, failed)
	if err != nil {
		return err
	}
	for id, k := range n {
		f := news[id]
		f.finished, f.failed = f.finished-k, f.failed-k
		news[id] = f
	}
	return nil
}
