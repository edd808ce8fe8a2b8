package target_test

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/fleetshift/fleetshift/shared/pgtest"
	"github.com/fleetshift/fleetshift/shared/target"
	"github.com/fleetshift/fleetshift/streams"
)

// TestPrefetchWritesNotifiesAndDrops: SetPrefetch gives every named device a prefetch entry with a new
// version and an ordered notification carrying it, services untouched; ApplyImage of that image drops
// the entry (the image now runs) and the notification no longer carries it; ClearPrefetch removes what
// a rollout left on devices it never moved, and touches no other target.
func TestPrefetchWritesNotifiesAndDrops(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	subj := streams.New("fleet")
	_, err := db.Pool.Exec(ctx, `INSERT INTO devices (uuid, device_name, api_key_hash)
		VALUES ('p1','p1','\x01'), ('p2','p2','\x02'), ('p3','p3','\x03'), ('other','other','\x04')`)
	must(t, err)
	old := apps(t, `{"1":{"appId":1,"services":[{"serviceName":"web","imageName":"acme/app:1.0","config":{"image":"acme/app:1.0"}}]}}`)
	var ws []target.Write
	for _, u := range []string{"p1", "p2", "p3", "other"} {
		ws = append(ws, target.Write{DeviceUUID: u, Apps: old})
	}
	inTx := func(f func(tx pgx.Tx)) {
		t.Helper()
		tx, err := db.Pool.Begin(ctx)
		must(t, err)
		defer tx.Rollback(ctx)
		f(tx)
		must(t, tx.Commit(ctx))
	}
	inTx(func(tx pgx.Tx) {
		_, err := target.Save(ctx, tx, subj, ws)
		must(t, err)
	})
	type row struct {
		apps, prefetch string
		version        int64
	}
	stored := func(u string) row {
		t.Helper()
		var r row
		must(t, db.Pool.QueryRow(ctx, `SELECT apps::text, prefetch::text, version FROM device_target_state WHERE device_uuid = $1`, u).
			Scan(&r.apps, &r.prefetch, &r.version))
		return r
	}
	// notified is the target document of u's ordered outbox notification of version v.
	notified := func(u string, v int64) streams.DeviceTarget {
		t.Helper()
		var payload []byte
		must(t, db.Pool.QueryRow(ctx, `SELECT payload FROM outbox WHERE msg_id = $1`, u+"-"+itoa(v)).Scan(&payload))
		var doc streams.TargetV1
		must(t, json.Unmarshal(payload, &doc))
		return doc[u]
	}
	before := stored("p1")
	if before.prefetch != "[]" {
		t.Fatalf("a new target has prefetch %s, want []", before.prefetch)
	}
	if dt := notified("p1", before.version); dt.Prefetch != nil {
		t.Fatalf("a target without prefetch entries is announced with %s", dt.Prefetch)
	}

	const rollout = "6f1c1a38-0d4e-4d7e-9a55-2f3c4b5a6d7e"
	inTx(func(tx pgx.Tx) {
		w, err := target.SetPrefetch(ctx, tx, subj, rollout, "acme/app:2.0", []string{"p1", "p2", "p3", "gone"})
		must(t, err)
		if len(w) != 3 {
			t.Fatalf("SetPrefetch wrote %d targets, want 3 (a device without a target is left out)", len(w))
		}
	})
	for _, u := range []string{"p1", "p2", "p3"} {
		r := stored(u)
		if r.version != before.version+1 || r.apps != before.apps {
			t.Fatalf("%s after SetPrefetch: %+v (before %+v): want the version bumped, services unchanged", u, r, before)
		}
		var entries []target.PrefetchEntry
		must(t, json.Unmarshal([]byte(r.prefetch), &entries))
		if len(entries) != 1 || entries[0] != (target.PrefetchEntry{Image: "acme/app:2.0", RolloutID: rollout}) {
			t.Fatalf("%s prefetch %s", u, r.prefetch)
		}
		dt := notified(u, r.version)
		if dt.Version != r.version || string(dt.Prefetch) != `[{"image": "acme/app:2.0", "rollout_id": "`+rollout+`"}]` {
			t.Fatalf("%s notification: version %d prefetch %s", u, dt.Version, dt.Prefetch)
		}
	}
	if r := stored("other"); r.version != before.version || r.prefetch != "[]" {
		t.Fatalf("a device outside the write changed: %+v", r)
	}
	// Again for the same rollout: still one entry, a new version.
	inTx(func(tx pgx.Tx) {
		_, err := target.SetPrefetch(ctx, tx, subj, rollout, "acme/app:2.0", []string{"p1"})
		must(t, err)
	})
	if r := stored("p1"); r.version != before.version+2 || r.prefetch != `[{"image": "acme/app:2.0", "rollout_id": "`+rollout+`"}]` {
		t.Fatalf("p1 after a second SetPrefetch: %+v", r)
	}

	// The dispatcher moves p1 to the image: its entry goes, the notification has none.
	next, _, _ := target.SetImage(old, "docker.io/acme/app", "acme/app:2.0", nil)
	doc, err := json.Marshal(next)
	must(t, err)
	inTx(func(tx pgx.Tx) {
		cur, err := target.ApplyImage(ctx, tx, target.ImageWrite{Repository: "docker.io/acme/app", Image: "acme/app:2.0",
			Docs: [][]byte{doc}, Devices: []string{"p1"}, Doc: []int32{0}})
		must(t, err)
		if len(cur) != 1 || target.HasPrefetch(cur[0].Prefetch) {
			t.Fatalf("ApplyImage returned %+v: want p1 without prefetch", cur)
		}
	})
	if r := stored("p1"); r.prefetch != "[]" || r.version != before.version+3 {
		t.Fatalf("p1 after ApplyImage: %+v", r)
	}

	// The rollout ends: p2 and p3 (never moved) lose their entry, p1 and other are not written.
	inTx(func(tx pgx.Tx) {
		if _, err := tx.Exec(ctx, `INSERT INTO image_rollouts (rollout_id, image_name, repository, new_tag, new_image, strategy, status, policy)
			VALUES ($1, 'acme/app', 'docker.io/acme/app', '2.0', 'acme/app:2.0', 'scheduled', 'cancelled', '{"download_ahead": true}')`, rollout); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO device_rollout_status (rollout_id, device_uuid, batch_number, status)
			SELECT $1, u, 1, 'skipped' FROM unnest(ARRAY['p1','p2','p3']) u`, rollout); err != nil {
			t.Fatal(err)
		}
		w, err := target.ClearPrefetch(ctx, tx, subj, rollout, nil)
		must(t, err)
		if len(w) != 2 {
			t.Fatalf("ClearPrefetch wrote %d targets, want 2 (p2, p3)", len(w))
		}
	})
	for _, u := range []string{"p2", "p3"} {
		r := stored(u)
		if r.prefetch != "[]" || r.version != before.version+2 || r.apps != before.apps {
			t.Fatalf("%s after ClearPrefetch: %+v", u, r)
		}
		if dt := notified(u, r.version); dt.Prefetch != nil {
			t.Fatalf("%s announced with prefetch %s after the clear", u, dt.Prefetch)
		}
	}
	if r := stored("p1"); r.version != before.version+3 {
		t.Fatalf("p1 (no entry left) was written again: %+v", r)
	}
}

func itoa(v int64) string {
	b, _ := json.Marshal(v)
	return string(b)
}
