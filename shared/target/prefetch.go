package target

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/fleetshift/fleetshift/shared/outbox"
	"github.com/fleetshift/fleetshift/streams"
)

// PrefetchEntry is one element of a target's "prefetch" array: an image the device pulls ahead without
// changing what runs, for a download-ahead rollout waiting for its maintenance window.
type PrefetchEntry struct {
	Image     string `json:"image"`
	RolloutID string `json:"rollout_id"`
}

// HasPrefetch reports whether a stored prefetch array holds an entry.
func HasPrefetch(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) > 0 && !bytes.Equal(t, []byte("[]")) && !bytes.Equal(t, []byte("null"))
}

// dropPrefetch is the SQL value of t.prefetch without the elements (x.e) for which cond holds, in
// order; an empty prefetch is returned as it is, so the common case costs nothing.
func dropPrefetch(cond string) string {
	return `CASE WHEN t.prefetch = '[]'::jsonb THEN t.prefetch ELSE COALESCE((
		SELECT jsonb_agg(x.e ORDER BY x.i) FROM jsonb_array_elements(t.prefetch) WITH ORDINALITY AS x(e, i)
		WHERE (` + cond + `) IS NOT TRUE), '[]'::jsonb) END`
}

// SetPrefetch adds, set-based, the prefetch entry {image, rollout_id} to the targets of devices (in
// place of any entry of the same rollout or image) and notifies them as Save does: in tx, every
// written device gets a new version and ETag and one ordered outbox notification with the document as
// stored. The services (what runs) are not touched. Devices without a target state are left out. Rows
// are locked in uuid order, as every set-based target writer locks them.
func SetPrefetch(ctx context.Context, tx pgx.Tx, subj streams.Subjects, rolloutID, image string, devices []string) ([]Written, error) {
	if len(devices) == 0 {
		return nil, nil
	}
	entry, err := json.Marshal([]PrefetchEntry{{Image: image, RolloutID: rolloutID}})
	if err != nil {
		return nil, fmt.Errorf("encode prefetch entry: %w", err)
	}
	rows, err := tx.Query(ctx, `
		WITH l AS MATERIALIZED (
			SELECT t.device_uuid, `+dropPrefetch(`x.e->>'rollout_id' = $2 OR x.e->>'image' = $3`)+` || $4::jsonb AS prefetch
			FROM device_target_state t WHERE t.device_uuid = ANY($1)
			ORDER BY t.device_uuid FOR UPDATE)
		UPDATE device_target_state t SET
			prefetch = l.prefetch,
			version = t.version + 1,
			etag = (t.version + 1)::text || '-' || left(md5(t.apps::text || t.config::text), 12),
			updated_at = now()
		FROM l WHERE t.device_uuid = l.device_uuid
		RETURNING t.device_uuid, t.apps, t.config, t.prefetch, t.version, t.etag`, devices, rolloutID, image, string(entry))
	if err != nil {
		return nil, fmt.Errorf("prefetch %s on %d targets: %w", image, len(devices), err)
	}
	return notifyReturned(ctx, tx, subj, rows)
}

// ClearPrefetch removes, set-based, the prefetch entries of rollout rolloutID (a rollout whose policy
// snapshot has download_ahead; for any other it reads nothing) from the targets of the rollout's
// devices that still hold one (only those in devices, when it is not nil), and notifies them as Save
// does. A rollout that ends (cancelled, rolled back, superseded, completed without
// dispatching some device) calls it in its own transaction; a device the rollout moved already lost its
// entry (ApplyImage). Targets without such an entry are not written.
func ClearPrefetch(ctx context.Context, tx pgx.Tx, subj streams.Subjects, rolloutID string, devices []string) ([]Written, error) {
	rows, err := tx.Query(ctx, `
		WITH l AS MATERIALIZED (
			SELECT t.device_uuid
			FROM device_rollout_status d JOIN device_target_state t ON t.device_uuid = d.device_uuid
			WHERE d.rollout_id = $1::uuid AND ($2::text[] IS NULL OR d.device_uuid = ANY($2))
			  AND t.prefetch @> jsonb_build_array(jsonb_build_object('rollout_id', $1::text))
			  -- evaluated once: a rollout that never downloads ahead reads none of its rows
			  AND EXISTS (SELECT 1 FROM image_rollouts r WHERE r.rollout_id = $1::uuid
			              AND coalesce((r.policy->>'download_ahead')::boolean, false))
			ORDER BY t.device_uuid FOR UPDATE OF t)
		UPDATE device_target_state t SET
			prefetch = `+dropPrefetch(`x.e->>'rollout_id' = $1::text`)+`,
			version = t.version + 1,
			etag = (t.version + 1)::text || '-' || left(md5(t.apps::text || t.config::text), 12),
			updated_at = now()
		FROM l WHERE t.device_uuid = l.device_uuid
		RETURNING t.device_uuid, t.apps, t.config, t.prefetch, t.version, t.etag`, rolloutID, devices)
	if err != nil {
		return nil, fmt.Errorf("clear prefetch of rollout %s: %w", rolloutID, err)
	}
	return notifyReturned(ctx, tx, subj, rows)
}

// notifyReturned reads the targets an UPDATE returned (device_uuid, apps, config, prefetch, version,
// etag) and writes their ordered outbox notifications in the same transaction.
func notifyReturned(ctx context.Context, tx pgx.Tx, subj streams.Subjects, rows pgx.Rows) ([]Written, error) {
	var written []Written
	var msgs []outbox.Message
	for rows.Next() {
		var c Current
		var apps, cfg, prefetch []byte
		if err := rows.Scan(&c.DeviceUUID, &apps, &cfg, &prefetch, &c.Version, &c.ETag); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read written targets: %w", err)
		}
		c.Apps, c.Config, c.Prefetch = orEmpty(apps), orEmpty(cfg), prefetch
		msgs = append(msgs, OutboxMessage(subj, c))
		written = append(written, Written{DeviceUUID: c.DeviceUUID, Version: c.Version, ETag: c.ETag})
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read written targets: %w", err)
	}
	if err := outbox.Add(ctx, tx, msgs...); err != nil {
		return nil, fmt.Errorf("notify %d written targets: %w", len(msgs), err)
	}
	return written, nil
}
