package devicestore

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/fleetshift/fleetshift/shared/command"
	"github.com/fleetshift/fleetshift/shared/events"
	"github.com/fleetshift/fleetshift/shared/lifecycle"
	"github.com/fleetshift/fleetshift/shared/target"
	"github.com/fleetshift/fleetshift/streams"
)

// Joined is a device that joined an active rollout.
type Joined struct {
	RolloutID string
	Batch     int
	// Prefetched is the device's target as rewritten with the rollout's prefetch entry (a download-ahead
	// rollout waiting for its window), nil when the join wrote no target.
	Prefetched *target.Written
}

// JoinActiveRollouts is dynamic inclusion: a device whose target (just written in tx: registration or
// an operator's target write) runs the repository of an active rollout whose policy snapshot has
// dynamic_inclusion (default true) and whose filters (fleet_id, device_tags, device_uuids) admit it,
// and which is not on the rollout's tag yet, joins that rollout: a pending device_rollout_status row in
// the batch being dispatched (the current one while it is open, or the last), else the next one;
// total_devices and batch_sizes grow by one (the other counters move by the trigger as the row moves).
// Joining the batch in progress of an in-progress rollout requests its dispatch at once. Each join is
// an image.device_joined event. A device joining a download_ahead rollout that waits for its window
// (scheduled) gets the rollout's prefetch entry at once, as the devices planned with it did, so it
// downloads before the window too. Rollouts are locked in id order, as every other writer does.
func JoinActiveRollouts(ctx context.Context, tx pgx.Tx, subj streams.Subjects, deviceUUID string) ([]Joined, error) {
	rows, err := tx.Query(ctx, `
		SELECT r.rollout_id::text, r.status, r.current_batch, r.completed_batch, r.total_batches, r.new_tag, r.new_image,
		       i.tag, i.image, coalesce((r.policy->>'download_ahead')::boolean, false)
		FROM image_rollouts r
		JOIN devices d ON d.uuid = $1 AND d.revoked_at IS NULL
		JOIN LATERAL (SELECT tag, digest, image FROM device_images
		              WHERE device_uuid = $1 AND repository = r.repository
		              ORDER BY app_id, service_index LIMIT 1) i ON true
		WHERE r.status = ANY($2)
		  AND coalesce((r.policy->>'dynamic_inclusion')::boolean, true)
		  AND NOT EXISTS (SELECT 1 FROM device_rollout_status s WHERE s.rollout_id = r.rollout_id AND s.device_uuid = $1)
		  AND NOT (i.tag = r.new_tag AND (r.new_digest = '' OR i.digest = r.new_digest))
		  AND (coalesce(r.policy->>'fleet_id', '') = '' OR r.policy->>'fleet_id' = d.fleet_id)
		  AND (jsonb_typeof(r.policy->'device_tags') IS DISTINCT FROM 'array'
		       OR coalesce(d.tags, '{}') @> ARRAY(SELECT jsonb_array_elements_text(r.policy->'device_tags')))
		  AND (jsonb_typeof(r.policy->'device_uuids') IS DISTINCT FROM 'array'
		       OR jsonb_array_length(r.policy->'device_uuids') = 0 OR r.policy->'device_uuids' ? d.uuid)
		ORDER BY r.rollout_id
		FOR UPDATE OF r`, deviceUUID, lifecycle.Strings(lifecycle.Active...))
	if err != nil {
		return nil, fmt.Errorf("find active rollouts for %s: %w", deviceUUID, err)
	}
	type cand struct {
		id, status                    string
		current, completed, total     int
		newTag, newImage, oldTag, old string
		ahead                         bool
	}
	cands, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (cand, error) {
		var c cand
		return c, r.Scan(&c.id, &c.status, &c.current, &c.completed, &c.total, &c.newTag, &c.newImage, &c.oldTag, &c.old, &c.ahead)
	})
	if err != nil {
		return nil, fmt.Errorf("find active rollouts for %s: %w", deviceUUID, err)
	}
	var out []Joined
	var evs []events.Event
	var reqs []command.Dispatch
	for _, c := range cands {
		batch := 1
		switch {
		case c.current < 1:
			// not started (pending, scheduled): the first batch
		case c.completed < c.current || c.current >= c.total:
			batch = c.current // the batch being dispatched, or the last one
		default:
			batch = c.current + 1 // batch delay, awaiting approval: the next batch
		}
		if _, err := tx.Exec(ctx, `INSERT INTO device_rollout_status
				(rollout_id, device_uuid, batch_number, status, old_image_tag, new_image_tag, old_image, new_image)
			VALUES ($1, $2, $3, `+lifecycle.SQL(lifecycle.DevicePending)+`, NULLIF($4, ''), $5, $6, $7)`,
			c.id, deviceUUID, batch, c.oldTag, c.newTag, c.old, c.newImage); err != nil {
			return nil, fmt.Errorf("join %s to rollout %s: %w", deviceUUID, c.id, err)
		}
		if _, err := tx.Exec(ctx, `UPDATE image_rollouts SET total_devices = total_devices + 1,
				total_batches = GREATEST(total_batches, $2),
				batch_sizes[$2] = coalesce(batch_sizes[$2], 0) + 1, updated_at = now()
			WHERE rollout_id = $1`, c.id, batch); err != nil {
			return nil, fmt.Errorf("join %s to rollout %s: %w", deviceUUID, c.id, err)
		}
		evs = append(evs, events.Event{Type: streams.EventDeviceJoined, RolloutID: c.id, DeviceUUID: deviceUUID,
			Message: fmt.Sprintf("device joined batch %d", batch), Actor: "dynamic_inclusion",
			Data: map[string]any{"batch": batch, "old_image": c.old, "new_image": c.newImage}})
		if c.status == string(lifecycle.InProgress) && batch == c.current {
			reqs = append(reqs, command.Dispatch{RolloutID: c.id, Batch: batch, Purpose: command.Join, Discriminator: deviceUUID})
		}
		j := Joined{RolloutID: c.id, Batch: batch}
		if c.ahead && c.status == string(lifecycle.Scheduled) {
			written, err := target.SetPrefetch(ctx, tx, subj, c.id, c.newImage, []string{deviceUUID})
			if err != nil {
				return nil, fmt.Errorf("join %s to rollout %s: %w", deviceUUID, c.id, err)
			}
			if len(written) == 1 {
				j.Prefetched = &written[0]
			}
		}
		out = append(out, j)
	}
	if err := events.Record(ctx, tx, subj, evs...); err != nil {
		return nil, fmt.Errorf("join %s: %w", deviceUUID, err)
	}
	if len(reqs) > 0 {
		if err := command.Request(ctx, tx, subj, reqs...); err != nil {
			return nil, fmt.Errorf("join %s: %w", deviceUUID, err)
		}
	}
	return out, nil
}
