package target_test

import (
	"context"
	"encoding/json"
	"strings"
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

// ApplyImage leaves the device index and targets exactly as Apply of the same documents would: same
// versions bumped, ETags changed, config kept, only the repository's index rows moved.
func TestApplyImageMatchesApply(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	if _, err := db.Pool.Exec(ctx, `INSERT INTO devices (uuid, device_name, api_key_hash)
		VALUES ('a1','a1','\x01'), ('a2','a2','\x02'), ('b1','b1','\x03'), ('b2','b2','\x04')`); err != nil {
		t.Fatal(err)
	}
	old := apps(t, `{"1":{"appId":1,"services":[{"serviceName":"web","imageName":"acme/app:1.0","config":{"image":"acme/app:1.0","ports":["80:80"]}},{"serviceName":"db","imageName":"postgres:15"},{"serviceName":"web2","imageName":"docker.io/acme/app:0.9"}]}}`)
	var ws []target.Write
	for _, u := range []string{"a1", "a2", "b1", "b2"} {
		ws = append(ws, target.Write{DeviceUUID: u, Apps: old, Config: json.RawMessage(`{"k":"` + u + `"}`)})
	}
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	before, err := target.Apply(ctx, tx, ws)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	next, _, _ := target.SetImage(old, "docker.io/acme/app", "acme/app:1.1@sha256:"+strings.Repeat("ab", 32), nil)
	doc, err := json.Marshal(next)
	if err != nil {
		t.Fatal(err)
	}
	// a1, a2 through ApplyImage; b1, b2 through Apply: the stored results must agree.
	tx, err = db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	cur, err := target.ApplyImage(ctx, tx, target.ImageWrite{Repository: "docker.io/acme/app",
		Image: "acme/app:1.1@sha256:" + strings.Repeat("ab", 32), Docs: [][]byte{doc}, Devices: []string{"a1", "a2", "gone"}, Doc: []int32{0, 0, 0}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := target.Apply(ctx, tx, []target.Write{{DeviceUUID: "b1", Apps: next}, {DeviceUUID: "b2", Apps: next}}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if len(cur) != 2 {
		t.Fatalf("ApplyImage returned %d targets, want 2 (a device without a target is left out)", len(cur))
	}
	for _, c := range cur {
		if c.Version != before[0].Version+1 || c.ETag == before[0].ETag || string(c.Config) != `{"k": "`+c.DeviceUUID+`"}` || string(c.Apps) != string(doc) {
			t.Fatalf("returned target %+v", c)
		}
	}
	stored := func(u string) string {
		var s string
		if err := db.Pool.QueryRow(ctx, `SELECT t.apps::text || '|' || t.version || '|' || split_part(t.etag, '-', 1) || '|' ||
			(SELECT string_agg(app_id || '/' || service_index || '/' || service_name || '/' || repository || '/' || tag || '/' || digest || '/' || image, ','
			        ORDER BY app_id, service_index) FROM device_images i WHERE i.device_uuid = t.device_uuid)
			FROM device_target_state t WHERE t.device_uuid = $1`, u).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	if a, b := stored("a1"), stored("b1"); a != b {
		t.Fatalf("ApplyImage stored\n%s\nApply stored\n%s", a, b)
	}
	if !strings.Contains(stored("a2"), "docker.io/library/postgres/15//postgres:15") {
		t.Fatalf("other services' index rows changed: %s", stored("a2"))
	}
	// An image of another repository is refused.
	tx2, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx2.Rollback(ctx)
	if _, err := target.ApplyImage(ctx, tx2, target.ImageWrite{Repository: "docker.io/acme/app", Image: "nginx:1",
		Docs: [][]byte{doc}, Devices: []string{"a1"}, Doc: []int32{0}}); err == nil {
		t.Fatal("ApplyImage accepted an image of another repository")
	}
}
