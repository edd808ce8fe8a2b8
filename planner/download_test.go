package planner

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/fleetshift/fleetshift/shared/pgtest"
	"github.com/fleetshift/fleetshift/shared/target"
	"github.com/fleetshift/fleetshift/streams"
)

// TestDownloadAheadRolloutPrefetchesEveryDevice: a scheduled download_ahead rollout gives every one of
// its devices a prefetch entry for the new image, in the rollout's transaction: a new target version
// with its ordered notification, services unchanged; a scheduled rollout without download_ahead writes
// no target; a newer push superseding the rollout replaces its entries with its own.
func TestDownloadAheadRolloutPrefetchesEveryDevice(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	var devs []device
	for i := range 12 {
		devs = append(devs, device{uuid: fmt.Sprintf("d%02d", i), images: []string{"acme/app:1.0", "acme/plain:1.0"}})
	}
	seed(t, db, devs...)
	window := map[string]string{"update_strategy": "'scheduled'", "maintenance_window_start": "'22:00'",
		"maintenance_window_end": "'02:00'"}
	ahead := map[string]string{"image_pattern": "'acme/app'", "download_ahead": "true"}
	plain := map[string]string{"image_pattern": "'acme/plain'"}
	for k, v := range window {
		ahead[k], plain[k] = v, v
	}
	policy(t, db, ahead)
	policy(t, db, plain)

	type tgt struct {
		apps     string
		prefetch []target.PrefetchEntry
		version  int64
	}
	targets := func() map[string]tgt {
		t.Helper()
		rows, err := db.Pool.Query(ctx, `SELECT device_uuid, apps::text, prefetch, version FROM device_target_state`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		out := map[string]tgt{}
		for rows.Next() {
			var u string
			var x tgt
			var raw []byte
			if err := rows.Scan(&u, &x.apps, &raw, &x.version); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(raw, &x.prefetch); err != nil {
				t.Fatal(err)
			}
			out[u] = x
		}
		return out
	}
	before := targets()
	svc := newService(db)
	plainRes, err := svc.HandlePush(ctx, push("ev-plain", "acme/plain:1.1"))
	if err != nil || plainRes.Status != StatusScheduled {
		t.Fatalf("plain push: %+v %v", plainRes, err)
	}
	if after := targets(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatal("a scheduled rollout without download_ahead wrote targets")
	}

	res, err := svc.HandlePush(ctx, push("ev-1", "acme/app:2.0"))
	if err != nil || res.Status != StatusScheduled || res.Devices != 12 {
		t.Fatalf("push: %+v %v", res, err)
	}
	after := targets()
	for u, b := range before {
		a := after[u]
		want := []target.PrefetchEntry{{Image: "acme/app:2.0", RolloutID: res.RolloutID}}
		if a.version != b.version+1 || a.apps != b.apps || fmt.Sprint(a.prefetch) != fmt.Sprint(want) {
			t.Fatalf("%s: before %+v after %+v: want the version bumped, services unchanged, prefetch %v", u, b, a, want)
		}
		var payload []byte
		if err := db.Pool.QueryRow(ctx, `SELECT payload FROM outbox WHERE msg_id = $1`, fmt.Sprintf("%s-%d", u, a.version)).Scan(&payload); err != nil {
			t.Fatalf("%s: no notification of version %d: %v", u, a.version, err)
		}
		var doc streams.TargetV1
		if err := json.Unmarshal(payload, &doc); err != nil || doc[u].Version != a.version || !target.HasPrefetch(doc[u].Prefetch) {
			t.Fatalf("%s: notification %s", u, payload)
		}
	}
	var data []byte
	if err := db.Pool.QueryRow(ctx, `SELECT data FROM rollout_events WHERE rollout_id = $1 AND event_type = $2`,
		res.RolloutID, streams.EventRolloutCreated).Scan(&data); err != nil {
		t.Fatal(err)
	}
	var created struct {
		DownloadAhead bool `json:"download_ahead"`
		Prefetched    int  `json:"prefetched_devices"`
	}
	if err := json.Unmarshal(data, &created); err != nil || !created.DownloadAhead || created.Prefetched != 12 {
		t.Fatalf("rollout_created data %s", data)
	}

	// A newer push supersedes it: each device holds the newer rollout's entry only.
	res2, err := svc.HandlePush(ctx, push("ev-2", "acme/app:2.1"))
	if err != nil || len(res2.Superseded) != 1 {
		t.Fatalf("second push: %+v %v", res2, err)
	}
	for u, a := range targets() {
		want := []target.PrefetchEntry{{Image: "acme/app:2.1", RolloutID: res2.RolloutID}}
		if fmt.Sprint(a.prefetch) != fmt.Sprint(want) || a.version != after[u].version+2 {
			t.Fatalf("%s after supersede: %+v, want %v (cleared, then set: two versions)", u, a, want)
		}
	}
}
