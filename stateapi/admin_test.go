package stateapi_test

import (
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestPolicyValidationNamesTheField(t *testing.T) {
	t.Parallel()
	e := setup(t, options{})
	valid := func() map[string]any {
		return map[string]any{"image_pattern": "acme/app:*", "update_strategy": "staged", "staged_batches": 3,
			"batch_percentages": []int{10, 50, 100}, "max_failure_rate": 0.2, "timezone": "Europe/Berlin",
			"maintenance_window_start": "22:00", "maintenance_window_end": "04:30"}
	}
	cases := []struct {
		field string
		value any
	}{
		{"image_pattern", ""},
		{"image_pattern", "acme/app@sha256:abc"},
		{"image_pattern", "acme//app"},
		{"image_pattern", 5},
		{"update_strategy", "yolo"},
		{"staged_batches", 0},
		{"staged_batches", 101},
		{"batch_percentages", []int{50, 10, 100}},
		{"batch_percentages", []int{10, 50, 90}},
		{"batch_percentages", []int{10, 50, 50, 100}},
		{"batch_percentages", []int{0, 100}},
		{"batch_percentages", []int{}},
		{"batch_percentages", "10,50,100"},
		{"batch_delay_minutes", -1},
		{"batch_delay_seconds", -5},
		{"health_check_timeout_seconds", 0},
		{"health_check_config", "x"},
		{"health_check_enabled", "yes"},
		{"max_failure_rate", 1.5},
		{"max_failure_rate", -0.1},
		{"min_sample_size", -1},
		{"maintenance_window_start", "25:00"},
		{"maintenance_window_end", "4pm"},
		{"timezone", "Mars/Olympus"},
		{"device_uuids", []string{"bad uuid"}},
		{"device_tags", 7},
		{"tag_policy", "regex"},
		{"semver_range", ">=banana"},
		{"priority", "high"},
		{"enabled", "true"},
		{"no_such_field", 1},
	}
	for _, tc := range cases {
		body := valid()
		body[tc.field] = tc.value
		if tc.field == "semver_range" {
			body["tag_policy"] = "semver"
		}
		res := e.do("POST", "/api/v1/image-policies", body, admin())
		require.Equal(t, 400, res.status, "%s=%v: %s", tc.field, tc.value, res.body)
		require.Equal(t, "invalid_"+tc.field, res.errorCode(t), "%s=%v: %s", tc.field, tc.value, res.body)
		require.Contains(t, string(res.body), tc.field)
	}
	// Cross-field rules name a field too.
	body := valid()
	body["staged_batches"] = 4
	res := e.do("POST", "/api/v1/image-policies", body, admin())
	require.Equal(t, "invalid_batch_percentages", res.errorCode(t))
	body = valid()
	delete(body, "maintenance_window_end")
	res = e.do("POST", "/api/v1/image-policies", body, admin())
	require.Equal(t, "invalid_maintenance_window_end", res.errorCode(t))
	res = e.do("POST", "/api/v1/image-policies", map[string]any{"image_pattern": "acme/*", "update_strategy": "scheduled"}, admin())
	require.Equal(t, "invalid_maintenance_window_start", res.errorCode(t))
	res = e.do("POST", "/api/v1/image-policies", map[string]any{"image_pattern": "acme/*", "semver_range": "^2"}, admin())
	require.Equal(t, "invalid_semver_range", res.errorCode(t), "a range needs tag_policy semver")
	res = e.do("POST", "/api/v1/image-policies", "[1]", admin())
	require.Equal(t, 400, res.status)

	var n int
	require.NoError(t, e.db.Pool.QueryRow(e.ctx, `SELECT count(*) FROM image_update_policies`).Scan(&n))
	require.Zero(t, n, "bad input writes nothing")

	// CRUD.
	full := valid()
	full["batch_delay_seconds"] = 5
	full["health_check_config"] = map[string]any{"type": "http", "url": "http://localhost/health"}
	full["device_tags"] = map[string]any{"site": "a"}
	full["device_uuids"] = []string{"dev-1"}
	full["fleet_id"] = "f1"
	full["auto_rollback_enabled"] = true
	full["min_sample_size"] = 2
	full["priority"] = 7
	full["description"] = "the app"
	full["tag_policy"] = "semver"
	full["semver_range"] = ">=1.0.0 <2.0.0"
	full["batch_approval"] = true
	res = e.do("POST", "/api/v1/image-policies", full, admin())
	require.Equal(t, 201, res.status, string(res.body))
	p := res.json(t)
	id := fmt.Sprint(p["id"])
	for k, want := range map[string]any{"image_pattern": "acme/app:*", "update_strategy": "staged", "staged_batches": 3.0,
		"batch_delay_seconds": 5.0, "max_failure_rate": 0.2, "timezone": "Europe/Berlin", "maintenance_window_start": "22:00",
		"maintenance_window_end": "04:30", "fleet_id": "f1", "auto_rollback_enabled": true, "min_sample_size": 2.0,
		"priority": 7.0, "description": "the app", "tag_policy": "semver", "semver_range": ">=1.0.0 <2.0.0",
		"batch_approval": true, "enabled": true, "health_check_enabled": true} {
		require.Equal(t, want, p[k], k)
	}
	require.Equal(t, []any{"site=a"}, p["device_tags"])
	require.Equal(t, []any{10.0, 50.0, 100.0}, p["batch_percentages"])

	res = e.do("GET", "/api/v1/image-policies/"+id, nil, admin())
	require.Equal(t, 200, res.status)
	// A GET body can be PUT back unchanged.
	res = e.do("PUT", "/api/v1/image-policies/"+id, res.body, admin())
	require.Equal(t, 200, res.status, string(res.body))
	// PUT replaces: absent fields return to their defaults.
	res = e.do("PUT", "/api/v1/image-policies/"+id, map[string]any{"image_pattern": "nginx"}, admin())
	require.Equal(t, 200, res.status, string(res.body))
	p = res.json(t)
	require.Equal(t, "auto", p["update_strategy"])
	require.Nil(t, p["fleet_id"])
	require.Nil(t, p["maintenance_window_start"])
	res = e.do("PUT", "/api/v1/image-policies/"+id, map[string]any{"image_pattern": "nginx", "max_failure_rate": 2}, admin())
	require.Equal(t, "invalid_max_failure_rate", res.errorCode(t))

	res = e.do("GET", "/api/v1/image-policies", nil, admin())
	require.Len(t, res.json(t)["policies"], 1)
	require.Equal(t, 404, e.do("GET", "/api/v1/image-policies/999", nil, admin()).status)
	require.Equal(t, 400, e.do("GET", "/api/v1/image-policies/abc", nil, admin()).status)
	require.Equal(t, 404, e.do("PUT", "/api/v1/image-policies/999", map[string]any{"image_pattern": "nginx"}, admin()).status)
	require.Equal(t, 204, e.do("DELETE", "/api/v1/image-policies/"+id, nil, admin()).status)
	require.Equal(t, 404, e.do("DELETE", "/api/v1/image-policies/"+id, nil, admin()).status)
}

func TestTokenScopes(t *testing.T) {
	t.Parallel()
	e := setup(t, options{})
	token := func(scope string) (string, string) {
		res := e.do("POST", "/api/v1/tokens", map[string]any{"name": scope + "-tok", "scope": scope}, admin())
		require.Equal(t, 201, res.status, string(res.body))
		m := res.json(t)
		return m["id"].(string), m["token"].(string)
	}
	readID, read := token("read")
	_, operate := token("operate")
	_, adminTok := token("admin")

	require.Equal(t, 401, e.do("GET", "/api/v1/devices", nil, nil).status)
	require.Equal(t, 401, e.do("GET", "/api/v1/devices", nil, bearer("nope")).status)
	require.Equal(t, 200, e.do("GET", "/api/v1/devices", nil, bearer(read)).status)
	require.Equal(t, 200, e.do("GET", "/api/v1/rollouts", nil, bearer(read)).status)
	res := e.do("POST", "/api/v1/devices", map[string]any{"device_name": "x"}, bearer(read))
	require.Equal(t, 403, res.status)
	require.Equal(t, "insufficient_scope", res.errorCode(t))
	require.Equal(t, 403, e.do("POST", "/api/v1/image-policies", map[string]any{"image_pattern": "nginx"}, bearer(read)).status)
	require.Equal(t, 201, e.do("POST", "/api/v1/devices", map[string]any{"device_name": "x"}, bearer(operate)).status)
	require.Equal(t, 201, e.do("POST", "/api/v1/image-policies", map[string]any{"image_pattern": "nginx"}, bearer(operate)).status)
	require.Equal(t, 403, e.do("POST", "/api/v1/tokens", map[string]any{"name": "y", "scope": "admin"}, bearer(operate)).status)
	require.Equal(t, 403, e.do("POST", "/api/v1/provisioning-keys", map[string]any{"fleet_id": "f"}, bearer(operate)).status)
	require.Equal(t, 403, e.do("GET", "/api/v1/tokens", nil, bearer(operate)).status)
	require.Equal(t, 201, e.do("POST", "/api/v1/provisioning-keys", map[string]any{"fleet_id": "f"}, bearer(adminTok)).status)

	res = e.do("GET", "/api/v1/tokens", nil, admin())
	require.Equal(t, 200, res.status)
	require.NotContains(t, string(res.body), read, "secrets are never listed")
	require.Len(t, res.json(t)["tokens"], 3)

	require.Equal(t, 204, e.do("DELETE", "/api/v1/tokens/"+readID, nil, admin()).status)
	require.Equal(t, 401, e.do("GET", "/api/v1/devices", nil, bearer(read)).status, "a revoked token opens nothing")
	require.Equal(t, 400, e.do("DELETE", "/api/v1/tokens/xyz", nil, admin()).status)
	require.Equal(t, 404, e.do("DELETE", "/api/v1/tokens/00000000-0000-0000-0000-000000000000", nil, admin()).status)
	res = e.do("POST", "/api/v1/tokens", map[string]any{"name": "z", "scope": "root"}, admin())
	require.Equal(t, "invalid_scope", res.errorCode(t))
}

func TestRolloutListCursorPagination(t *testing.T) {
	t.Parallel()
	e := setup(t, options{})
	// 7 rollouts, three sharing one created_at so the rollout_id tie-break matters.
	_, err := e.db.Pool.Exec(e.ctx, `INSERT INTO image_rollouts (image_name, repository, new_tag, new_image, strategy, status, created_at)
		SELECT CASE WHEN i % 2 = 0 THEN 'nginx' ELSE 'acme/app' END,
		       CASE WHEN i % 2 = 0 THEN 'docker.io/library/nginx' ELSE 'docker.io/acme/app' END,
		       'v' || i, 'x:v' || i, 'auto', CASE WHEN i < 3 THEN 'completed' ELSE 'in_progress' END,
		       CASE WHEN i BETWEEN 2 AND 4 THEN timestamptz '2026-01-01 00:00:00+00'
		            ELSE timestamptz '2026-01-01 00:00:00+00' + i * interval '1 minute' END
		FROM generate_series(0, 6) i`)
	require.NoError(t, err)

	page := func(q string) ([]string, string) {
		t.Helper()
		res := e.do("GET", "/api/v1/rollouts?"+q, nil, admin())
		require.Equal(t, 200, res.status, string(res.body))
		m := res.json(t)
		var ids []string
		for _, r := range m["rollouts"].([]any) {
			ids = append(ids, r.(map[string]any)["rollout_id"].(string))
		}
		next, _ := m["next_cursor"].(string)
		return ids, next
	}
	all, next := page("limit=500")
	require.Len(t, all, 7)
	require.Empty(t, next)

	var paged []string
	cursor := ""
	for i := 0; ; i++ {
		require.Less(t, i, 5)
		q := "limit=3"
		if cursor != "" {
			q += "&cursor=" + url.QueryEscape(cursor)
		}
		ids, next := page(q)
		paged = append(paged, ids...)
		if next == "" {
			break
		}
		cursor = next
	}
	require.Equal(t, all, paged, "pages cover every rollout once, in order")

	// Newest first.
	var newest string
	require.NoError(t, e.db.Pool.QueryRow(e.ctx, `SELECT rollout_id::text FROM image_rollouts ORDER BY created_at DESC, rollout_id DESC LIMIT 1`).Scan(&newest))
	require.Equal(t, newest, all[0])

	ids, _ := page("status=completed")
	require.Len(t, ids, 3)
	ids, _ = page("status=completed,in_progress")
	require.Len(t, ids, 7)
	for _, name := range []string{"nginx", "docker.io/library/nginx", "library/nginx:1.2"} {
		ids, _ = page("image_name=" + url.QueryEscape(name))
		require.Len(t, ids, 4, name)
	}
	ids, _ = page("image_name=acme/app&status=in_progress")
	require.Len(t, ids, 2)

	for _, q := range []string{"limit=0", "limit=501", "limit=x", "cursor=zzz", "status=bogus", "image_name=UPPER::bad"} {
		require.Equal(t, 400, e.do("GET", "/api/v1/rollouts?"+q, nil, admin()).status, q)
	}

	// Show, devices, events.
	res := e.do("GET", "/api/v1/rollouts/"+all[0], nil, admin())
	require.Equal(t, 200, res.status)
	require.Equal(t, all[0], res.json(t)["rollout_id"])
	require.Equal(t, 404, e.do("GET", "/api/v1/rollouts/00000000-0000-0000-0000-000000000000", nil, admin()).status)
	require.Equal(t, 400, e.do("GET", "/api/v1/rollouts/not-a-uuid", nil, admin()).status)
	require.Equal(t, 404, e.do("GET", "/api/v1/rollouts/00000000-0000-0000-0000-000000000000/devices", nil, admin()).status)
	require.Equal(t, 404, e.do("GET", "/api/v1/rollouts/00000000-0000-0000-0000-000000000000/events", nil, admin()).status)

	// Rollout devices page by (batch, uuid) with a status filter; events in order.
	for i := range 5 {
		e.createDevice(map[string]any{"uuid": fmt.Sprintf("dev-%d", i), "device_name": "d"})
	}
	_, err = e.db.Pool.Exec(e.ctx, `INSERT INTO device_rollout_status (rollout_id, device_uuid, batch_number, status)
		SELECT $1, 'dev-' || i, 1 + i / 2, CASE WHEN i = 0 THEN 'completed' ELSE 'pending' END FROM generate_series(0, 4) i`, all[0])
	require.NoError(t, err)
	_, err = e.db.Pool.Exec(e.ctx, `INSERT INTO rollout_events (rollout_id, event_type, message)
		SELECT $1, 'image.batch_started', 'batch ' || i FROM generate_series(1, 3) i`, all[0])
	require.NoError(t, err)

	var devs []string
	cursor = ""
	for {
		q := "/api/v1/rollouts/" + all[0] + "/devices?limit=2"
		if cursor != "" {
			q += "&cursor=" + url.QueryEscape(cursor)
		}
		res := e.do("GET", q, nil, admin())
		require.Equal(t, 200, res.status, string(res.body))
		m := res.json(t)
		for _, d := range m["devices"].([]any) {
			devs = append(devs, d.(map[string]any)["device_uuid"].(string))
		}
		next, _ := m["next_cursor"].(string)
		if next == "" {
			break
		}
		cursor = next
	}
	require.Equal(t, []string{"dev-0", "dev-1", "dev-2", "dev-3", "dev-4"}, devs)
	res = e.do("GET", "/api/v1/rollouts/"+all[0]+"/devices?status=completed", nil, admin())
	require.Len(t, res.json(t)["devices"], 1)
	require.Equal(t, 400, e.do("GET", "/api/v1/rollouts/"+all[0]+"/devices?status=nope", nil, admin()).status)

	res = e.do("GET", "/api/v1/rollouts/"+all[0]+"/events", nil, admin())
	require.Equal(t, 200, res.status)
	evs := res.json(t)["events"].([]any)
	require.Len(t, evs, 3)
	require.Equal(t, "batch 1", evs[0].(map[string]any)["message"])

	res = e.do("GET", "/api/v1/rollouts/"+all[0], nil, admin())
	require.True(t, strings.Contains(string(res.body), `"batches"`), string(res.body))
}

func TestDeviceAdmin(t *testing.T) {
	t.Parallel()
	e := setup(t, options{})
	for i := range 5 {
		fleet := "f1"
		if i >= 3 {
			fleet = "f2"
		}
		e.createDevice(map[string]any{"uuid": fmt.Sprintf("d%d", i), "device_name": "n", "fleet_id": fleet,
			"tags": []string{"site=a", fmt.Sprintf("n=%d", i%2)}})
	}
	res := e.do("POST", "/api/v1/devices", map[string]any{"uuid": "d0", "device_name": "dup"}, admin())
	require.Equal(t, 409, res.status)
	res = e.do("POST", "/api/v1/devices", map[string]any{"uuid": "bad.uuid", "device_name": "x"}, admin())
	require.Equal(t, "invalid_uuid", res.errorCode(t))
	res = e.do("POST", "/api/v1/devices", map[string]any{"device_name": ""}, admin())
	require.Equal(t, "invalid_device_name", res.errorCode(t))
	res = e.do("POST", "/api/v1/devices", map[string]any{"device_name": "x", "tags": 3}, admin())
	require.Equal(t, "invalid_tags", res.errorCode(t))

	list := func(q string) ([]string, string) {
		res := e.do("GET", "/api/v1/devices?"+q, nil, admin())
		require.Equal(t, 200, res.status, string(res.body))
		m := res.json(t)
		var ids []string
		for _, d := range m["devices"].([]any) {
			ids = append(ids, d.(map[string]any)["uuid"].(string))
		}
		next, _ := m["next_cursor"].(string)
		return ids, next
	}
	ids, next := list("limit=2")
	require.Equal(t, []string{"d0", "d1"}, ids)
	ids, _ = list("limit=2&cursor=" + url.QueryEscape(next))
	require.Equal(t, []string{"d2", "d3"}, ids)
	ids, _ = list("fleet_id=f2")
	require.Equal(t, []string{"d3", "d4"}, ids)
	ids, _ = list("tag=n%3D1")
	require.Equal(t, []string{"d1", "d3"}, ids)
	ids, _ = list("tag=n%3D1&tag=site%3Da&fleet_id=f1")
	require.Equal(t, []string{"d1"}, ids)

	res = e.do("GET", "/api/v1/devices/d1", nil, admin())
	require.Equal(t, 200, res.status)
	require.Equal(t, "f1", res.json(t)["fleet_id"])
	require.Equal(t, 404, e.do("GET", "/api/v1/devices/nosuch", nil, admin()).status)
	require.Equal(t, 404, e.do("PUT", "/api/v1/devices/nosuch/target-state", map[string]any{"apps": map[string]any{}}, admin()).status)
	res = e.do("PUT", "/api/v1/devices/d1/target-state", map[string]any{"apps": map[string]any{"a": map[string]any{"services": []any{map[string]any{"imageName": "Not A Ref!"}}}}}, admin())
	require.Equal(t, "invalid_apps", res.errorCode(t))
	res = e.do("PUT", "/api/v1/devices/d1/target-state", map[string]any{"config": map[string]any{}}, admin())
	require.Equal(t, "invalid_apps", res.errorCode(t))
	res = e.do("PUT", "/api/v1/devices/d1/target-state", map[string]any{"apps": map[string]any{}, "config": []int{1}}, admin())
	require.Equal(t, "invalid_config", res.errorCode(t))
	require.Equal(t, 404, e.do("GET", "/api/v1/fleets/nofleet/target-state", nil, admin()).status)

	// The image index follows operator target writes.
	require.Equal(t, 200, e.do("PUT", "/api/v1/devices/d1/target-state", map[string]any{"apps": appsWith("nginx:1.25")}, admin()).status)
	var repo string
	require.NoError(t, e.db.Pool.QueryRow(e.ctx, `SELECT repository FROM device_images WHERE device_uuid = 'd1'`).Scan(&repo))
	require.Equal(t, "docker.io/library/nginx", repo)
	res = e.do("GET", "/api/v1/devices/d1/current-state", nil, admin())
	require.Equal(t, 200, res.status)
	require.Nil(t, res.json(t)["reported_at"])

	require.Equal(t, 200, e.do("GET", "/healthz", nil, nil).status)
}

func TestPreviewWritesNothing(t *testing.T) {
	t.Parallel()
	e := setup(t, options{})
	for i := range 3 {
		id, _ := e.createDevice(map[string]any{"device_name": fmt.Sprintf("d%d", i)})
		require.Equal(t, 200, e.do("PUT", "/api/v1/devices/"+id+"/target-state", map[string]any{"apps": appsWith("acme/app:1.0")}, admin()).status)
	}
	res := e.do("POST", "/api/v1/image-policies", map[string]any{"image_pattern": "acme/app:*", "update_strategy": "staged"}, admin())
	require.Equal(t, 201, res.status, string(res.body))

	res = e.do("POST", "/api/v1/rollouts/preview", map[string]any{"image": "acme/app:1.1"}, bearer(adminToken))
	require.Equal(t, 200, res.status, string(res.body))
	m := res.json(t)
	require.NotNil(t, m["policy"])
	require.EqualValues(t, 3, m["total_devices"])

	var n int
	require.NoError(t, e.db.Pool.QueryRow(e.ctx, `SELECT count(*) FROM image_rollouts`).Scan(&n))
	require.Zero(t, n)
	res = e.do("POST", "/api/v1/rollouts/preview", map[string]any{"image": "acme/app"}, admin())
	require.Equal(t, "invalid_image", res.errorCode(t))
	res = e.do("POST", "/api/v1/rollouts/preview", map[string]any{"image": "acme/app:1", "digest": "md5:x"}, admin())
	require.Equal(t, "invalid_digest", res.errorCode(t))
}
