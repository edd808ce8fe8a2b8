package target_test

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/fleetshift/fleetshift/shared/pgtest"
	"github.com/fleetshift/fleetshift/shared/target"
)

func apps(t *testing.T, s string) target.Apps {
	t.Helper()
	a, err := target.ParseApps([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestApplyBumpsVersionAndIndexesImages(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	if _, err := db.Pool.Exec(ctx, `INSERT INTO devices (uuid, device_name, api_key_hash) VALUES ('d1','d1','\x01'), ('d2','d2','\x02')`); err != nil {
		t.Fatal(err)
	}
	write := func(ws ...target.Write) []target.Written {
		tx, err := db.Pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		out, err := target.Apply(ctx, tx, ws)
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		return out
	}
	a1 := apps(t, `{"1":{"appId":1,"appName":"a","services":[{"serviceName":"web","imageName":"acme/app:1.0","config":{"image":"acme/app:1.0"}},{"serviceName":"db","imageName":"postgres:15"}]}}`)
	w := write(target.Write{DeviceUUID: "d1", Apps: a1, Config: json.RawMessage(`{"x":1}`)}, target.Write{DeviceUUID: "d2", Apps: a1})
	if len(w) != 2 || w[0].Version != 1 {
		t.Fatalf("first write: %+v", w)
	}
	a2, changed, old := target.SetImage(a1, "docker.io/acme/app", "acme/app:1.1", nil)
	if !changed || old != "acme/app:1.0" {
		t.Fatalf("SetImage changed=%v old=%q", changed, old)
	}
	w2 := write(target.Write{DeviceUUID: "d1", Apps: a2})
	if w2[0].Version != 2 || w2[0].ETag == w[0].ETag {
		t.Fatalf("second write: %+v (first %+v)", w2, w)
	}
	var cfg string
	var repos []string
	if err := db.Pool.QueryRow(ctx, `SELECT config::text FROM device_target_state WHERE device_uuid='d1'`).Scan(&cfg); err != nil || cfg != `{"x": 1}` {
		t.Fatalf("config kept: %q %v", cfg, err)
	}
	if err := db.Pool.QueryRow(ctx, `SELECT array_agg(repository || ':' || tag ORDER BY service_index) FROM device_images WHERE device_uuid='d1'`).Scan(&repos); err != nil {
		t.Fatal(err)
	}
	if len(repos) != 2 || repos[0] != "docker.io/acme/app:1.1" || repos[1] != "docker.io/library/postgres:15" {
		t.Fatalf("index: %v", repos)
	}
	// Other services untouched.
	svcs := a2["1"].(map[string]any)["services"].([]any)
	if svcs[1].(map[string]any)["imageName"] != "postgres:15" || svcs[0].(map[string]any)["config"].(map[string]any)["image"] != "acme/app:1.1" {
		t.Fatalf("rewrite: %v", svcs)
	}

	// Removing a service removes its index row; an unchanged write leaves the index as it was.
	one := apps(t, `{"1":{"appId":1,"services":[{"serviceName":"db","imageName":"postgres:15"}]}}`)
	write(target.Write{DeviceUUID: "d1", Apps: one})
	write(target.Write{DeviceUUID: "d1", Apps: one})
	var n int
	var repo string
	if err := db.Pool.QueryRow(ctx, `SELECT count(*), min(repository || ':' || tag) FROM device_images WHERE device_uuid='d1'`).Scan(&n, &repo); err != nil {
		t.Fatal(err)
	}
	if n != 1 || repo != "docker.io/library/postgres:15" {
		t.Fatalf("index after removing a service: %d rows, %q", n, repo)
	}
	// d2 was not written again and keeps its two rows.
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM device_images WHERE device_uuid='d2'`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("untouched device index: %d rows %v", n, err)
	}
}
