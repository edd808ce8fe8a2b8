package target

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/fleetshift/fleetshift/shared/imageref"
	"github.com/fleetshift/fleetshift/shared/outbox"
	"github.com/fleetshift/fleetshift/streams"
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

// Save is the one path that writes device targets and notifies the devices: Apply, then, in the same
// transaction, one ordered notification per written device (OutboxMessage) with the document as
// stored, so the device hears of it even when the process dies right after the commit, and never hears
// an older target last. (The dispatcher's set-based ApplyImage notifies with Publish, ordered as well.)
func Save(ctx context.Context, tx pgx.Tx, subj streams.Subjects, writes []Write) ([]Written, error) {
	written, err := Apply(ctx, tx, writes)
	if err != nil || len(written) == 0 {
		return written, err
	}
	uuids := make([]string, len(written))
	for i, w := range written {
		uuids[i] = w.DeviceUUID
	}
	cur, err := Load(ctx, tx, uuids)
	if err != nil {
		return nil, fmt.Errorf("read written targets: %w", err)
	}
	msgs := make([]outbox.Message, len(cur))
	for i, c := range cur {
		msgs[i] = OutboxMessage(subj, c)
	}
	if err := outbox.Add(ctx, tx, msgs...); err != nil {
		return nil, fmt.Errorf("notify %d written targets: %w", len(cur), err)
	}
	return written, nil
}

// Apply writes target states set-based (a device's prefetch entries whose image one of its services
// now runs are dropped; the others are kept): one COPY of the new documents into a temporary table and one
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
			prefetch = `+dropPrefetch(`EXISTS (SELECT 1 FROM image_writes i
				WHERE i.device_uuid = t.device_uuid AND i.image = x.e->>'image')`)+`,
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

// ImageWrite rewrites the targets of many devices to documents that differ from their current ones
// only in the services of Repository, which now run Image (what SetImage(apps, Repository, Image, nil)
// returns). Devices sharing a document share one entry of Docs.
type ImageWrite struct {
	// Repository is the normalised repository of the rewritten services; Image the reference they run
	// now, as written in the documents (its repository must be Repository).
	Repository, Image string
	// Docs are the distinct new apps documents (JSON objects).
	Docs [][]byte
	// Devices are the devices to write, Doc[i] the index in Docs of the new document of Devices[i].
	Devices []string
	Doc     []int32
}

// ApplyImage writes w set-based: one UPDATE of the targets (each bumps its version and ETag, as Apply
// does, and loses the prefetch entries of Image: the image now runs) and one UPDATE of the image index rows of Repository, whatever the number of devices; every
// new document is sent and parsed once. Devices without a target state are left out. It returns the
// new targets as written (Apps shares the bytes of w.Docs), for notifications.
//
// The caller guarantees the precondition on the documents (an index row of Repository belongs to
// exactly the services that now run Image) and should hold the target rows' locks since it read them.
func ApplyImage(ctx context.Context, tx pgx.Tx, w ImageWrite) ([]Current, error) {
	if len(w.Devices) == 0 {
		return nil, nil
	}
	if len(w.Doc) != len(w.Devices) {
		return nil, fmt.Errorf("write %d targets: %d document indexes", len(w.Devices), len(w.Doc))
	}
	ref, err := imageref.Parse(w.Image)
	if err != nil {
		return nil, fmt.Errorf("write targets running %q: %w", w.Image, err)
	}
	if ref.Repository != w.Repository {
		return nil, fmt.Errorf("write targets running %q: not an image of %s", w.Image, w.Repository)
	}
	docs := make([]string, len(w.Docs))
	for i, d := range w.Docs {
		docs[i] = string(d)
	}
	rows, err := tx.Query(ctx, `
		UPDATE device_target_state t SET
			apps = n.apps,
			prefetch = `+dropPrefetch(`x.e->>'image' = $4`)+`,
			version = t.version + 1,
			etag = (t.version + 1)::text || '-' || left(md5(n.apps::text || t.config::text), 12),
			updated_at = now()
		FROM (SELECT u.device_uuid, d.apps
		      FROM unnest($1::text[], $2::int[]) AS u(device_uuid, doc)
		      JOIN unnest($3::jsonb[]) WITH ORDINALITY AS d(apps, doc) ON d.doc = u.doc + 1) n
		WHERE t.device_uuid = n.device_uuid
		RETURNING t.device_uuid, t.version, t.etag, t.config, t.prefetch`, w.Devices, w.Doc, docs, w.Image)
	if err != nil {
		return nil, fmt.Errorf("write %d targets: %w", len(w.Devices), err)
	}
	doc := make(map[string]int32, len(w.Devices))
	for i, d := range w.Devices {
		doc[d] = w.Doc[i]
	}
	out := make([]Current, 0, len(w.Devices))
	for rows.Next() {
		var c Current
		var cfg []byte
		if err := rows.Scan(&c.DeviceUUID, &c.Version, &c.ETag, &cfg, &c.Prefetch); err != nil {
			rows.Close()
			return nil, fmt.Errorf("write %d targets: %w", len(w.Devices), err)
		}
		c.Apps, c.Config = w.Docs[doc[c.DeviceUUID]], orEmpty(cfg)
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("write %d targets: %w", len(w.Devices), err)
	}
	if _, err := tx.Exec(ctx, `
		UPDATE device_images SET tag = $3, digest = $4, image = $5
		WHERE device_uuid = ANY($1) AND repository = $2 AND (tag, digest, image) IS DISTINCT FROM ($3, $4, $5)`,
		w.Devices, w.Repository, ref.Tag, ref.Digest, w.Image); err != nil {
		return nil, fmt.Errorf("write image index of %d targets: %w", len(w.Devices), err)
	}
	return out, nil
}
