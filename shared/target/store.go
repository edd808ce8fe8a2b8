package target

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/fleetshift/fleetshift/shared/imageref"
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
// bumps the device's version (a generation that never goes backwards) and its ETag. Image-index rows
// that did not change are left alone, so a dispatch that moves one service of many touches one row
// per device.
//
// Apply must run inside a transaction (the temporary tables live until commit).
func Apply(ctx context.Context, tx pgx.Tx, writes []Write) ([]Written, error) {
	if len(writes) == 0 {
		return nil, nil
	}
	if _, err := tx.Exec(ctx, `
		CREATE TEMP TABLE IF NOT EXISTS target_writes (
			device_uuid text PRIMARY KEY, apps jsonb NOT NULL, config jsonb) ON COMMIT DELETE ROWS;
		CREATE TEMP TABLE IF NOT EXISTS image_writes (
			device_uuid text NOT NULL, app_id text NOT NULL, service_index integer NOT NULL,
			service_name text NOT NULL, repository text NOT NULL, tag text NOT NULL, digest text NOT NULL,
			image text NOT NULL) ON COMMIT DELETE ROWS;
		TRUNCATE target_writes, image_writes`); err != nil {
		return nil, fmt.Errorf("prepare target writes: %w", err)
	}
	rows, imgRows, err := encodeWrites(writes)
	if err != nil {
		return nil, err
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"target_writes"}, []string{"device_uuid", "apps", "config"},
		pgx.CopyFromRows(rows)); err != nil {
		return nil, fmt.Errorf("copy target writes: %w", err)
	}
	if len(imgRows) > 0 {
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"image_writes"},
			[]string{"device_uuid", "app_id", "service_index", "service_name", "repository", "tag", "digest", "image"},
			pgx.CopyFromRows(imgRows)); err != nil {
			return nil, fmt.Errorf("copy image index: %w", err)
		}
	}
	if len(writes) > 1000 {
		// Temporary tables have no statistics; without them large joins get nested-loop plans.
		if _, err := tx.Exec(ctx, `ANALYZE target_writes, image_writes`); err != nil {
			return nil, fmt.Errorf("analyze target writes: %w", err)
		}
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
	// The image index: drop services that are gone, insert new ones, update changed ones only.
	if _, err := tx.Exec(ctx, `
		DELETE FROM device_images d USING target_writes w
		WHERE d.device_uuid = w.device_uuid
		  AND NOT EXISTS (SELECT 1 FROM image_writes i
		                  WHERE i.device_uuid = d.device_uuid AND i.app_id = d.app_id AND i.service_index = d.service_index)`); err != nil {
		return nil, fmt.Errorf("clear image index: %w", err)
	}
	if len(imgRows) > 0 {
		if _, err := tx.Exec(ctx, `
			INSERT INTO device_images AS d (device_uuid, app_id, service_index, service_name, repository, tag, digest, image)
			SELECT device_uuid, app_id, service_index, service_name, repository, tag, digest, image FROM image_writes
			ON CONFLICT (device_uuid, app_id, service_index) DO UPDATE SET
				service_name = EXCLUDED.service_name, repository = EXCLUDED.repository, tag = EXCLUDED.tag,
				digest = EXCLUDED.digest, image = EXCLUDED.image
			WHERE (d.service_name, d.repository, d.tag, d.digest, d.image) IS DISTINCT FROM
			      (EXCLUDED.service_name, EXCLUDED.repository, EXCLUDED.tag, EXCLUDED.digest, EXCLUDED.image)`); err != nil {
			return nil, fmt.Errorf("write image index: %w", err)
		}
	}
	return out, nil
}

// encodeWrites renders the COPY rows of the targets and of their image index. Image references repeat
// across a fleet, so each distinct one is parsed once.
func encodeWrites(writes []Write) (rows, imgRows [][]any, err error) {
	rows = make([][]any, 0, len(writes))
	imgRows = make([][]any, 0, len(writes))
	parsed := map[string]imageref.Ref{}
	for _, w := range writes {
		apps := w.Apps
		if apps == nil {
			apps = Apps{}
		}
		b, err := json.Marshal(apps)
		if err != nil {
			return nil, nil, fmt.Errorf("encode target of %s: %w", w.DeviceUUID, err)
		}
		var cfg any
		if w.Config != nil {
			cfg = string(w.Config)
		}
		rows = append(rows, []any{w.DeviceUUID, string(b), cfg})
		imgs, err := imagesCached(apps, parsed)
		if err != nil {
			return nil, nil, fmt.Errorf("target of %s: %w", w.DeviceUUID, err)
		}
		for _, im := range imgs {
			imgRows = append(imgRows, []any{w.DeviceUUID, im.AppID, im.ServiceIndex, im.ServiceName,
				im.Ref.Repository, im.Ref.Tag, im.Ref.Digest, im.Raw})
		}
	}
	return rows, imgRows, nil
}
