package planner

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/fleetshift/fleetshift/shared/logging"
	"github.com/fleetshift/fleetshift/shared/pgtest"
	"github.com/fleetshift/fleetshift/shared/target"
	"github.com/fleetshift/fleetshift/streams"
)

// device is a test device: its fleet, tags and the images of its services (one app, one service each).
type device struct {
	uuid   string
	fleet  string
	tags   []string
	images []string
}

// seed inserts devices with SQL and writes their targets with target.Apply (which indexes images).
func seed(t testing.TB, db *pgtest.DB, devs ...device) {
	t.Helper()
	ctx := context.Background()
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	rows := make([][]any, len(devs))
	writes := make([]target.Write, len(devs))
	for i, d := range devs {
		var fleet any
		if d.fleet != "" {
			fleet = d.fleet
		}
		tags := d.tags
		if tags == nil {
			tags = []string{}
		}
		hash := sha256.Sum256([]byte("test-key-" + d.uuid))
		rows[i] = []any{d.uuid, d.uuid, fleet, tags, hash[:]}
		svcs := make([]any, len(d.images))
		for j, img := range d.images {
			svcs[j] = map[string]any{"serviceId": j + 1, "serviceName": fmt.Sprintf("svc%d", j), "imageName": img,
				"config": map[string]any{"image": img}}
		}
		writes[i] = target.Write{DeviceUUID: d.uuid, Apps: target.Apps{"1": map[string]any{"appId": 1, "appName": "main", "services": svcs}}}
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"devices"}, []string{"uuid", "device_name", "fleet_id", "tags", "api_key_hash"},
		pgx.CopyFromRows(rows)); err != nil {
		t.Fatal(err)
	}
	if _, err := target.Apply(ctx, tx, writes); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}

// policy inserts a policy from column=value pairs (SQL literals) and returns its id.
func policy(t testing.TB, db *pgtest.DB, cols map[string]string) int64 {
	t.Helper()
	var names, vals []string
	for k, v := range cols {
		names = append(names, k)
		vals = append(vals, v)
	}
	var id int64
	q := fmt.Sprintf("INSERT INTO image_update_policies (%s) VALUES (%s) RETURNING id", strings.Join(names, ", "), strings.Join(vals, ", "))
	if err := db.Pool.QueryRow(context.Background(), q).Scan(&id); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return id
}

// newService returns a service for calling HandlePush directly (no JetStream).
func newService(db *pgtest.DB) *Service {
	return &Service{pool: db.Pool, subj: streams.New(""), log: logging.Nop()}
}

func push(id, image string) streams.PushV1 {
	name, tag, _ := strings.Cut(image, ":")
	tag, digest, _ := strings.Cut(tag, "@")
	return streams.PushV1{EventID: id, DedupeKey: id, Registry: "dockerhub", Repository: name, ImageName: name, Tag: tag, Digest: digest}
}

// deviceRow is one device_rollout_status row.
type deviceRow struct {
	UUID, Status, OldTag, NewTag, OldImage, NewImage string
	Batch                                            int
}

func rolloutDevices(t testing.TB, db *pgtest.DB, rollout string) []deviceRow {
	t.Helper()
	rows, err := db.Pool.Query(context.Background(), `SELECT device_uuid, status, coalesce(old_image_tag,''), coalesce(new_image_tag,''),
		coalesce(old_image,''), coalesce(new_image,''), batch_number FROM device_rollout_status WHERE rollout_id = $1
		ORDER BY device_uuid COLLATE "C"`, rollout)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (deviceRow, error) {
		var d deviceRow
		err := r.Scan(&d.UUID, &d.Status, &d.OldTag, &d.NewTag, &d.OldImage, &d.NewImage, &d.Batch)
		return d, err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func count(t testing.TB, db *pgtest.DB, q string, args ...any) int {
	t.Helper()
	var n int
	if err := db.Pool.QueryRow(context.Background(), q, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
