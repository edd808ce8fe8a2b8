package healthwatch

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/events"
	"github.com/fleetshift/fleetshift/shared/imageref"
	"github.com/fleetshift/fleetshift/shared/lifecycle"
	"github.com/fleetshift/fleetshift/shared/target"
	"github.com/fleetshift/fleetshift/streams"
)

// moved are the device statuses whose target the dispatcher has rewritten to the new image.
var moved = lifecycle.Strings(lifecycle.Moved...)

// restore returns the rows of a locked rollout that are in one of statuses (and, when devices is not
// nil, named in it) to their own old image and marks them rolled_back, set-based: one read of their
// targets, one target.Save (the write and its ordered notifications, msg id "<uuid>-<version>") and one
// status update. Only services still running the rollout's new image
// are rewritten, so a target changed since by an operator or a newer rollout is left alone.
func restore(ctx context.Context, w *work, ro rolloutRef, statuses, devices []string, reason string) (int, error) {
	newRef, err := imageref.Parse(ro.newImage)
	if err != nil {
		return 0, fmt.Errorf("rollout %s new image: %w", ro.id, err)
	}
	isNew := func(ref imageref.Ref) bool {
		return ref.Repository == newRef.Repository && ref.Tag == newRef.Tag && ref.Digest == newRef.Digest
	}
	rows, err := w.tx.Query(ctx, `
		SELECT s.device_uuid, COALESCE(s.old_image, ''), t.apps, t.config
		FROM device_rollout_status s
		JOIN device_target_state t ON t.device_uuid = s.device_uuid
		WHERE s.rollout_id = $1 AND s.status = ANY($2) AND ($3::text[] IS NULL OR s.device_uuid = ANY($3))
		ORDER BY s.device_uuid
		FOR UPDATE OF s, t`, ro.id, statuses, devices)
	if err != nil {
		return 0, fmt.Errorf("read targets to roll back: %w", err)
	}
	type current struct {
		uuid, oldImage string
		apps, config   []byte
	}
	cur, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (current, error) {
		var c current
		return c, r.Scan(&c.uuid, &c.oldImage, &c.apps, &c.config)
	})
	if err != nil {
		return 0, fmt.Errorf("read targets to roll back: %w", err)
	}
	writes := make([]target.Write, 0, len(cur))
	for _, c := range cur {
		if c.oldImage == "" {
			continue
		}
		var apps target.Apps
		if err := json.Unmarshal(c.apps, &apps); err != nil {
			continue // an unreadable target is not ours to repair
		}
		back, changed, _ := target.SetImage(apps, ro.repository, c.oldImage, isNew)
		if !changed {
			continue
		}
		writes = append(writes, target.Write{DeviceUUID: c.uuid, Apps: back})
	}
	if _, err := target.Save(ctx, w.tx, w.subj, writes); err != nil {
		return 0, fmt.Errorf("write and announce old targets: %w", err)
	}
	res, err := w.tx.Query(ctx, `UPDATE device_rollout_status SET status = `+lifecycle.SQL(lifecycle.DeviceRolledBack)+`, completed_at = now(),
		updated_at = now()
		WHERE rollout_id = $1 AND status = ANY($2) AND ($3::text[] IS NULL OR device_uuid = ANY($3))
		RETURNING device_uuid, batch_number, COALESCE(old_image, '')`, ro.id, statuses, devices)
	if err != nil {
		return 0, fmt.Errorf("mark devices rolled back: %w", err)
	}
	type done struct {
		uuid     string
		batch    int
		oldImage string
	}
	rolled, err := pgx.CollectRows(res, func(r pgx.CollectableRow) (done, error) {
		var d done
		return d, r.Scan(&d.uuid, &d.batch, &d.oldImage)
	})
	if err != nil {
		return 0, fmt.Errorf("mark devices rolled back: %w", err)
	}
	for _, d := range rolled {
		w.event(events.Event{Type: streams.EventDeviceRolledBack, RolloutID: ro.id, DeviceUUID: d.uuid,
			Message: "rolled back to " + d.oldImage + ": " + reason,
			Data:    map[string]any{"batch": d.batch, "old_image": d.oldImage, "new_image": ro.newImage, "reason": reason}})
	}
	return len(rolled), nil
}

// RollbackAll rolls a whole rollout back, atomically: every device whose target was moved (scheduled,
// updating, health_checking, completed, failed) gets its own old image back in one set-based write and
// ends rolled_back; devices never dispatched stay untouched (pending -> skipped); the rollout ends
// rolled_back, with image.device_rolled_back and image.rollout_rolled_back events by actor. A completed
// rollout also moves the fleet defaults it had moved back to the old tag.
//
// Calling it again on a rolled-back rollout changes nothing and returns nil. Errors wrap
// apierr.ErrNotFound (no such rollout) and apierr.ErrConflict (the rollout was superseded: its devices
// belong to the newer rollout).
//
// It locks the moved devices' rows, then the pending ones' targets (prefetch entries): two ordered sets,
// so a writer locking targets in between can deadlock with it; PostgreSQL then rolls one back, and a
// rollback it rolled back is run again (whenContended).
func RollbackAll(ctx context.Context, pool *pgxpool.Pool, subj streams.Subjects, rolloutID, actor string) error {
	return whenContended(ctx, func() error { return rollbackAll(ctx, pool, subj, rolloutID, actor) })
}

func rollbackAll(ctx context.Context, pool *pgxpool.Pool, subj streams.Subjects, rolloutID, actor string) error {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("roll back rollout %s: begin: %w", rolloutID, err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	w := &work{tx: tx, subj: subj, actor: actor}
	ro, err := lockRollout(ctx, tx, rolloutID)
	if err != nil {
		return err
	}
	switch ro.status {
	case rolloutRolledBack:
		return nil
	case rolloutSuperseded:
		return apierr.New(apierr.ErrConflict, "rollout_superseded",
			"rollout %s was superseded by a newer rollout; roll back that one", rolloutID)
	}
	n, err := restore(ctx, w, ro, moved, nil, "rollout rolled back")
	if err != nil {
		return fmt.Errorf("roll back rollout %s: %w", rolloutID, err)
	}
	skipped, err := tx.Exec(ctx, `UPDATE device_rollout_status SET status = `+lifecycle.SQL(lifecycle.DeviceSkipped)+`, updated_at = now()
		WHERE rollout_id = $1 AND status = `+lifecycle.SQL(lifecycle.DevicePending)+``, ro.id)
	if err != nil {
		return fmt.Errorf("roll back rollout %s: skip pending devices: %w", rolloutID, err)
	}
	if _, err := target.ClearPrefetch(ctx, tx, subj, ro.id, nil); err != nil {
		return fmt.Errorf("roll back rollout %s: %w", rolloutID, err)
	}
	if ro.status == rolloutCompleted && ro.oldTag != "" {
		newRef, err := imageref.Parse(ro.newImage)
		if err == nil {
			old := newRef.WithTag(ro.oldTag, "").String()
			isNew := func(ref imageref.Ref) bool { return ref.Tag == newRef.Tag && ref.Digest == newRef.Digest }
			if _, err := moveFleetDefaults(ctx, tx, ro.id, ro.repository, old, isNew); err != nil {
				return fmt.Errorf("roll back rollout %s: %w", rolloutID, err)
			}
		}
	}
	if _, err := tx.Exec(ctx, `UPDATE image_rollouts SET status = `+lifecycle.SQL(lifecycle.RolledBack)+`, completed_at = now(),
		next_batch_at = NULL, updated_at = now() WHERE rollout_id = $1`, ro.id); err != nil {
		return fmt.Errorf("roll back rollout %s: %w", rolloutID, err)
	}
	w.event(events.Event{Type: EventRolloutRolledBack, RolloutID: ro.id,
		Message: fmt.Sprintf("rollout rolled back: %d devices restored, %d never dispatched", n, skipped.RowsAffected()),
		Data:    map[string]any{"rolled_back_devices": n, "skipped_devices": skipped.RowsAffected(), "previous_status": ro.status}})
	if err := w.commit(ctx); err != nil {
		return fmt.Errorf("roll back rollout %s: commit: %w", rolloutID, err)
	}
	return nil
}

// RollbackDevice rolls one device of a rollout back to its own old image, atomically: a device whose
// target was moved ends rolled_back (image.device_rolled_back by actor, its old target written and
// announced); a device never dispatched ends skipped, so it never gets the new image. The rollout's
// counters follow, and a batch the device was the last open member of completes.
//
// Calling it again changes nothing and returns nil. Errors wrap apierr.ErrNotFound (no such rollout,
// or the device is not in it) and apierr.ErrConflict (the rollout was superseded).
func RollbackDevice(ctx context.Context, pool *pgxpool.Pool, subj streams.Subjects, rolloutID, deviceUUID, actor string) error {
	return whenContended(ctx, func() error { return rollbackDevice(ctx, pool, subj, rolloutID, deviceUUID, actor) })
}

func rollbackDevice(ctx context.Context, pool *pgxpool.Pool, subj streams.Subjects, rolloutID, deviceUUID, actor string) error {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("roll back device %s of rollout %s: begin: %w", deviceUUID, rolloutID, err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	w := &work{tx: tx, subj: subj, actor: actor}
	ro, err := lockRollout(ctx, tx, rolloutID)
	if err != nil {
		return err
	}
	if ro.status == rolloutSuperseded {
		return apierr.New(apierr.ErrConflict, "rollout_superseded",
			"rollout %s was superseded by a newer rollout; roll back the device there", rolloutID)
	}
	var status string
	err = tx.QueryRow(ctx, `SELECT status FROM device_rollout_status WHERE rollout_id = $1 AND device_uuid = $2`,
		ro.id, deviceUUID).Scan(&status)
	if err == pgx.ErrNoRows {
		return apierr.New(apierr.ErrNotFound, "device_not_in_rollout", "device %s is not in rollout %s", deviceUUID, rolloutID)
	}
	if err != nil {
		return fmt.Errorf("roll back device %s of rollout %s: %w", deviceUUID, rolloutID, err)
	}
	switch status {
	case statusRolledBack, statusSkipped:
		return nil
	case statusPending:
		if _, err := tx.Exec(ctx, `UPDATE device_rollout_status SET status = `+lifecycle.SQL(lifecycle.DeviceSkipped)+`, updated_at = now()
			WHERE rollout_id = $1 AND device_uuid = $2 AND status = `+lifecycle.SQL(lifecycle.DevicePending)+``, ro.id, deviceUUID); err != nil {
			return fmt.Errorf("roll back device %s of rollout %s: %w", deviceUUID, rolloutID, err)
		}
		if _, err := target.ClearPrefetch(ctx, tx, subj, ro.id, []string{deviceUUID}); err != nil {
			return fmt.Errorf("roll back device %s of rollout %s: %w", deviceUUID, rolloutID, err)
		}
	default:
		if _, err := restore(ctx, w, ro, moved, []string{deviceUUID}, "device rolled back"); err != nil {
			return fmt.Errorf("roll back device %s of rollout %s: %w", deviceUUID, rolloutID, err)
		}
	}
	if err := settle(ctx, w, []string{ro.id}, nil); err != nil {
		return fmt.Errorf("roll back device %s of rollout %s: %w", deviceUUID, rolloutID, err)
	}
	if err := w.commit(ctx); err != nil {
		return fmt.Errorf("roll back device %s of rollout %s: commit: %w", deviceUUID, rolloutID, err)
	}
	return nil
}

// whenContended runs tx, a whole transaction, and runs it again (up to 5 times in all, after 20 ms,
// 40 ms, ... with jitter) while PostgreSQL rolls it back for concurrent work (apierr.Contended: a
// deadlock it broke, a serialization failure), which changed nothing.
func whenContended(ctx context.Context, tx func() error) error {
	wait := 20 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := tx()
		if attempt == 5 || !apierr.Contended(err) || !sleep(ctx, wait+rand.N(wait)) {
			return err
		}
		wait *= 2
	}
}
