package target

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Write is one device's new target. A nil Config keeps the device's current config.
type Write struct {
	DeviceUUID string
	Apps       Apps
	Config     json.RawMessage
}

// Written is the generation a write produced.
type Written struct {
	DeviceUUID string
	Version    int64
	ETag       string // unquoted
}

// Apply writes target states set-based: one COPY of the new documents into a temporary table and one
// statement each for the targets and the image index, whatever the number of devices. Every write
// bumps the device's version (a generation that never goes backwards) and its ETag.
//
// Apply must run inside a transaction (the temporary table lives until commit).
func Apply(ctx context.Context, tx pgx.Tx, writes []Write) ([]Written, error) {
	if len(writes) == 0 {
		return nil, nil
	}
	if _, err := tx.Exec(ctx, `CREATE TEMP TABLE IF NOT EXISTS target_writes (
		device_uuid text PRIMARY KEY, apps jsonb NOT NULL, config jsonb) ON COMMIT DELETE ROWS`); err != nil {
		return nil, fmt.Errorf("create target_writes: %w", err)
	}
	if _, err := tx.Exec(ctx, `TRUNCATE target_writes`); err != nil {
		return nil, fmt.Errorf("truncate target_writes: %w", err)
	}
	var imgRows [][]any
	rows := make([][]any, 0, len(writes))
	for _, w := range writes {
		apps := w.Apps
		if apps == nil {
			apps = Apps{}
		}
		b, err := json.Marshal(apps)
		if err != nil {
			return nil, fmt.Errorf("encode target of %s: %w", w.DeviceUUID, err)
		}
		var cfg any
		if w.Config != nil {
			cfg = string(w.Config)
		}
		rows = append(rows, []any{w.DeviceUUID, string(b), cfg})
		imgs, err := Images(apps)
		if err != nil {
			return nil, fmt.Errorf("target of %s: %w", w.DeviceUUID, err)
		}
		for _, im := range imgs {
			imgRows = append(imgRows, []any{w.DeviceUUID, im.AppID, im.ServiceIndex, im.ServiceName,
				im.Ref.Repository, im.Ref.Tag, im.Ref.Digest, im.Raw})
		}
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"target_writes"}, []string{"device_uuid", "apps", "config"},
		pgx.CopyFromRows(rows)); err != nil {
		return nil, fmt.Errorf("copy target writes: %w", err)
	}
	res, err := tx.Query(ctx, `
		INSERT INTO device_target_state AS t (device_uuid, apps, config, version, etag, updated_at)
		SELECT w.device_uuid, w.apps, COALESCE(w.config, '{}'::jsonb), 1,
		       '1-' || left(md5(w.apps::text || COALESCE(w.config, '{}'::jsonb)::text), 12), now()
		FROM target_writes w
		ON CONFLICT (device_uuid) DO UPDATE SET
			apps = EXCLUDED.apps,
			config = COALESCE((SELECT w2.config FROM target_writes w2 WHERE w2.device_uuid = t.device_uuid), t.config),
			version = t.version + 1,
			etag = (t.version + 1)::text || '-' || left(md5(EXCLUDED.apps::text ||
				COALESCE((SELECT w2.config FROM target_writes w2 WHERE w2.device_uuid = t.device_uuid), t.config)::text), 12),
			updated_at = now()
		RETURNING device_uuid, version, etag`)
	if err != nil {
		return nil, fmt.Errorf("write targets: %w", err)
	}
	out, err := pgx.CollectRows(res, func(r pgx.CollectableRow) (Written, error) {
		var w Written
		err := r.Scan(&w.DeviceUUID, &w.Version, &w.ETag)
		return w, err
	})
	if err != nil {
		return nil, fmt.Errorf("write targets: %w", err)
	}
	if _, err := tx.Exec(ctx, `DELETE FROM device_images d USING target_writes w WHERE d.device_uuid = w.device_uuid`); err != nil {
		return nil, fmt.Errorf("clear image index: %w", err)
	}
	if len(imgRows) > 0 {
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"device_images"},
			[]string{"device_uuid", "app_id", "service_index", "service_name", "repository", "tag", "digest", "image"},
			pgx.CopyFromRows(imgRows)); err != nil {
			return nil, fmt.Errorf("write image index: %w", err)
		}
	}
	return out, nil
}
