package operatorapi_test

import (
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fleetshift/fleetshift/stateapi/internal/apitest"
)

func TestPolicyValidationNamesTheField(t *testing.T) {
	t.Parallel()
	e := apitest.Setup(t, apitest.Options{})
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
		res := e.Do("POST", "/api/v1/image-policies", body, apitest.Admin())
		require.Equal(t, 400, res.Status, "%s=%v: %s", tc.field, tc.value, res.Body)
		require.Equal(t, "invalid_"+tc.field, res.ErrorCode(t), "%s=%v: %s", tc.field, tc.value, res.Body)
		require.Contains(t, string(res.Body), tc.field)
	}
	// Cross-field rules name a field too.
	body := valid()
	body["staged_batches"] = 4
	res := e.Do("POST", "/api/v1/image-policies", body, apitest.Admin())
	require.Equal(t, "invalid_batch_percentages", res.ErrorCode(t))
	body = valid()
	delete(body, "maintenance_window_end")
	res = e.Do("POST", "/api/v1/image-policies", body, apitest.Admin())
	require.Equal(t, "invalid_maintenance_window_end", res.ErrorCode(t))
	res = e.Do("POST", "/api/v1/image-policies", map[string]any{"image_pattern": "acme/*", "update_strategy": "scheduled"}, apitest.Admin())
	require.Equal(t, "invalid_maintenance_window_start", res.ErrorCode(t))
	res = e.Do("POST", "/api/v1/image-policies", map[string]any{"image_pattern": "acme/*", "semver_range": "^2"}, apitest.Admin())
	require.Equal(t, "invalid_semver_range", res.ErrorCode(t), "a range needs tag_policy semver")
	res = e.Do("POST", "/api/v1/image-policies", "[1]", apitest.Admin())
	require.Equal(t, 400, res.Status)

	var n int
	require.NoError(t, e.DB.Pool.QueryRow(e.Ctx, `SELECT count(*) FROM image_update_policies`).Scan(&n))
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
	res = e.Do("POST", "/api/v1/image-policies", full, apitest.Admin())
	require.Equal(t, 201, res.Status, string(res.Body))
	p := res.JSON(t)
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

	res = e.Do("GET", "/api/v1/image-policies/"+id, nil, apitest.Admin())
	require.Equal(t, 200, res.Status)
	// A GET body can be PUT back unchanged.
	res = e.Do("PUT", "/api/v1/image-policies/"+id, res.Body, apitest.Admin())
	require.Equal(t, 200, res.Status, string(res.Body))
	// PUT replaces: absent fields return to their defaults.
	res = e.Do("PUT", "/api/v1/image-policies/"+id, map[string]any{"image_pattern": "nginx"}, apitest.Admin())
	require.Equal(t, 200, res.Status, string(res.Body))
	p = res.JSON(t)
	require.Equal(t, "auto", p["update_strategy"])
	require.Nil(t, p["fleet_id"])
	require.Nil(t, p["maintenance_window_start"])
	res = e.Do("PUT", "/api/v1/image-policies/"+id, map[string]any{"image_pattern": "nginx", "max_failure_rate": 2}, apitest.Admin())
	require.Equal(t, "invalid_max_failure_rate", res.ErrorCode(t))

	res = e.Do("GET", "/api/v1/image-policies", nil, apitest.Admin())
	require.Len(t, res.JSON(t)["policies"], 1)
	require.Equal(t, 404, e.Do("GET", "/api/v1/image-policies/999", nil, apitest.Admin()).Status)
	require.Equal(t, 400, e.Do("GET", "/api/v1/image-policies/abc", nil, apitest.Admin()).Status)
	require.Equal(t, 404, e.Do("PUT", "/api/v1/image-policies/999", map[string]any{"image_pattern": "nginx"}, apitest.Admin()).Status)
	require.Equal(t, 204, e.Do("DELETE", "/api/v1/image-policies/"+id, nil, apitest.Admin()).Status)
	require.Equal(t, 404, e.Do("DELETE", "/api/v1/image-policies/"+id, nil, apitest.Admin()).Status)
}

func TestTokenScopes(t *testing.T) {
	t.Parallel()
	e := apitest.Setup(t, apitest.Options{})
	token := func(scope string) (string, string) {
		res := e.Do("POST", "/api/v1/tokens", map[string]any{"name": scope + "-tok", "scope": scope}, apitest.Admin())
		require.Equal(t, 201, res.Status, string(res.Body))
		m := res.JSON(t)
		return m["id"].(string), m["token"].(string)
	}
	readID, read := token("read")
	_, operate := token("operate")
	_, adminTok := token("admin")

	require.Equal(t, 401, e.Do("GET", "/api/v1/devices", nil, nil).Status)
	require.Equal(t, 401, e.Do("GET", "/api/v1/devices", nil, apitest.Bearer("nope")).Status)
	require.Equal(t, 200, e.Do("GET", "/api/v1/devices", nil, apitest.Bearer(read)).Status)
	require.Equal(t, 200, e.Do("GET", "/api/v1/rollouts", nil, apitest.Bearer(read)).Status)
	res := e.Do("POST", "/api/v1/devices", map[string]any{"device_name": "x"}, apitest.Bearer(read))
	require.Equal(t, 403, res.Status)
	require.Equal(t, "insufficient_scope", res.ErrorCode(t))
	require.Equal(t, 403, e.Do("POST", "/api/v1/image-policies", map[string]any{"image_pattern": "nginx"}, apitest.Bearer(read)).Status)
	require.Equal(t, 201, e.Do("POST", "/api/v1/devices", map[string]any{"device_name": "x"}, apitest.Bearer(operate)).Status)
	require.Equal(t, 201, e.Do("POST", "/api/v1/image-policies", map[string]any{"image_pattern": "nginx"}, apitest.Bearer(operate)).Status)
	require.Equal(t, 403, e.Do("POST", "/api/v1/tokens", map[string]any{"name": "y", "scope": "admin"}, apitest.Bearer(operate)).Status)
	require.Equal(t, 403, e.Do("POST", "/api/v1/provisioning-keys", map[string]any{"fleet_id": "f"}, apitest.Bearer(operate)).Status)
	require.Equal(t, 403, e.Do("GET", "/api/v1/tokens", nil, apitest.Bearer(operate)).Status)
	require.Equal(t, 201, e.Do("POST", "/api/v1/provisioning-keys", map[string]any{"fleet_id": "f"}, apitest.Bearer(adminTok)).Status)

	res = e.Do("GET", "/api/v1/tokens", nil, apitest.Admin())
	require.Equal(t, 200, res.Status)
	require.NotContains(t, string(res.Body), read, "secrets are never listed")
	require.Len(t, res.JSON(t)["tokens"], 3)

	require.Equal(t, 204, e.Do("DELETE", "/api/v1/tokens/"+readID, nil, apitest.Admin()).Status)
	require.Equal(t, 401, e.Do("GET", "/api/v1/devices", nil, apitest.Bearer(read)).Status, "a revoked token opens nothing")
	require.Equal(t, 400, e.Do("DELETE", "/api/v1/tokens/xyz", nil, apitest.Admin()).Status)
	require.Equal(t, 404, e.Do("DELETE", "/api/v1/tokens/00000000-0000-0000-0000-000000000000", nil, apitest.Admin()).Status)
	res = e.Do("POST", "/api/v1/tokens", map[string]any{"name": "z", "scope": "root"}, apitest.Admin())
	require.Equal(t, "invalid_scope", res.ErrorCode(t))
}

func TestRolloutListCursorPagination(t *testing.T) {
	t.Parallel()
	e := apitest.Setup(t, apitest.Options{})
	// 7 rollouts, three sharing one created_at so the rollout_id tie-break matters.
	_, err := e.DB.Pool.Exec(e.Ctx, `INSERT INTO image_rollouts (image_name, repository, new_tag, new_image, strategy, status, created_at)
		SELECT CASE WHEN i % 2 = 0 THEN 'nginx' ELSE 'acme/app' END,
		       CASE WHEN i % 2 = 0 THEN 'docker.io/library/nginx' ELSE 'docker.io/acme/app' END,
		       'v' || i, 'x:v' || i, 'auto', CASE WHEN i < 3 THEN 'completed' ELSE 'in_progress' END,
		       CASE WHEN i BETWEEN 2 AND 4 THEN timestamptz '2026-01-01 00:00:00+00'
		            ELSE timestamptz '2026-01-01 00:00:00+00' + i * interval '1 minute' END
		FROM generate_series(0, 6) i`)
	require.NoError(t, err)

	page := func(q string) ([]string, string) {
		t.Helper()
		res := e.Do("GET", "/api/v1/rollouts?"+q, nil, apitest.Admin())
		require.Equal(t, 200, res.Status, string(res.Body))
		m := res.JSON(t)
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
	require.NoError(t, e.DB.Pool.QueryRow(e.Ctx, `SELECT rollout_id::text FROM image_rollouts ORDER BY created_at DESC, rollout_id DESC LIMIT 1`).Scan(&newest))
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
		require.Equal(t, 400, e.Do("GET", "/api/v1/rollouts?"+q, nil, apitest.Admin()).Status, q)
	}

	// Show, devices, events.
	res := e.Do("GET", "/api/v1/rollouts/"+all[0], nil, apitest.Admin())
	require.Equal(t, 200, res.Status)
	require.Equal(t, all[0], res.JSON(t)["rollout_id"])
	require.Equal(t, 404, e.Do("GET", "/api/v1/rollouts/00000000-0000-0000-0000-000000000000", nil, apitest.Admin()).Status)
	require.Equal(t, 400, e.Do("GET", "/api/v1/rollouts/not-a-uuid", nil, apitest.Admin()).Status)
	require.Equal(t, 404, e.Do("GET", "/api/v1/rollouts/00000000-0000-0000-0000-000000000000/devices", nil, apitest.Admin()).Status)
	require.Equal(t, 404, e.Do("GET", "/api/v1/rollouts/00000000-0000-0000-0000-000000000000/events", nil, apitest.Admin()).Status)

	// Rollout devices page by (batch, uuid) with a status filter; events in order.
	for i := range 5 {
		e.CreateDevice(map[string]any{"uuid": fmt.Sprintf("dev-%d", i), "device_name": "d"})
	}
	_, err = e.DB.Pool.Exec(e.Ctx, `INSERT INTO device_rollout_status (rollout_id, device_uuid, batch_number, status)
		SELECT $1, 'dev-' || i, 1 + i / 2, CASE WHEN i = 0 THEN 'completed' ELSE 'pending' END FROM generate_series(0, 4) i`, all[0])
	require.NoError(t, err)
	_, err = e.DB.Pool.Exec(e.Ctx, `INSERT INTO rollout_events (rollout_id, event_type, message)
		SELECT $1, 'image.batch_started', 'batch ' || i FROM generate_series(1, 3) i`, all[0])
	require.NoError(t, err)

	var devs []string
	cursor = ""
	for {
		q := "/api/v1/rollouts/" + all[0] + "/devices?limit=2"
		if cursor != "" {
			q += "&cursor=" + url.QueryEscape(cursor)
		}
		res := e.Do("GET", q, nil, apitest.Admin())
		require.Equal(t, 200, res.Status, string(res.Body))
		m := res.JSON(t)
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
	res = e.Do("GET", "/api/v1/rollouts/"+all[0]+"/devices?status=completed", nil, apitest.Admin())
	require.Len(t, res.JSON(t)["devices"], 1)
	require.Equal(t, 400, e.Do("GET", "/api/v1/rollouts/"+all[0]+"/devices?status=nope", nil, apitest.Admin()).Status)

	res = e.Do("GET", "/api/v1/rollouts/"+all[0]+"/events", nil, apitest.Admin())
	require.Equal(t, 200, res.Status)
	evs := res.JSON(t)["events"].([]any)
	require.Len(t, evs, 3)
	require.Equal(t, "batch 1", evs[0].(map[string]any)["message"])

	res = e.Do("GET", "/api/v1/rollouts/"+all[0], nil, apitest.Admin())
	require.True(t, strings.Contains(string(res.Body), `"batches"`), string(res.Body))
}

func TestDeviceAdmin(t *testing.T) {
	t.Parallel()
	e := apitest.Setup(t, apitest.Options{})
	for i := range 5 {
		fleet := "f1"
		if i >= 3 {
			fleet = "f2"
		}
		e.CreateDevice(map[string]any{"uuid": fmt.Sprintf("d%d", i), "device_name": "n", "fleet_id": fleet,
			"tags": []string{"site=a", fmt.Sprintf("n=%d", i%2)}})
	}
	res := e.Do("POST", "/api/v1/devices", map[string]any{"uuid": "d0", "device_name": "dup"}, apitest.Admin())
	require.Equal(t, 409, res.Status)
	res = e.Do("POST", "/api/v1/devices", map[string]any{"uuid": "bad.uuid", "device_name": "x"}, apitest.Admin())
	require.Equal(t, "invalid_uuid", res.ErrorCode(t))
	res = e.Do("POST", "/api/v1/devices", map[string]any{"device_name": ""}, apitest.Admin())
	require.Equal(t, "invalid_device_name", res.ErrorCode(t))
	res = e.Do("POST", "/api/v1/devices", map[string]any{"device_name": "x", "tags": 3}, apitest.Admin())
	require.Equal(t, "invalid_tags", res.ErrorCode(t))

	list := func(q string) ([]string, string) {
		res := e.Do("GET", "/api/v1/devices?"+q, nil, apitest.Admin())
		require.Equal(t, 200, res.Status, string(res.Body))
		m := res.JSON(t)
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

	res = e.Do("GET", "/api/v1/devices/d1", nil, apitest.Admin())
	require.Equal(t, 200, res.Status)
	require.Equal(t, "f1", res.JSON(t)["fleet_id"])
	require.Equal(t, 404, e.Do("GET", "/api/v1/devices/nosuch", nil, apitest.Admin()).Status)
	require.Equal(t, 404, e.Do("PUT", "/api/v1/devices/nosuch/target-state", map[string]any{"apps": map[string]any{}}, apitest.Admin()).Status)
	res = e.Do("PUT", "/api/v1/devices/d1/target-state", map[string]any{"apps": map[string]any{"a": map[string]any{"services": []any{map[string]any{"imageName": "Not A Ref!"}}}}}, apitest.Admin())
	require.Equal(t, "invalid_apps", res.ErrorCode(t))
	res = e.Do("PUT", "/api/v1/devices/d1/target-state", map[string]any{"config": map[string]any{}}, apitest.Admin())
	require.Equal(t, "invalid_apps", res.ErrorCode(t))
	res = e.Do("PUT", "/api/v1/devices/d1/target-state", map[string]any{"apps": map[string]any{}, "config": []int{1}}, apitest.Admin())
	require.Equal(t, "invalid_config", res.ErrorCode(t))
	require.Equal(t, 404, e.Do("GET", "/api/v1/fleets/nofleet/target-state", nil, apitest.Admin()).Status)

	// The image index follows operator target writes.
	require.Equal(t, 200, e.Do("PUT", "/api/v1/devices/d1/target-state", map[string]any{"apps": apitest.AppsWith("nginx:1.25")}, apitest.Admin()).Status)
	var repo string
	require.NoError(t, e.DB.Pool.QueryRow(e.Ctx, `SELECT repository FROM device_images WHERE device_uuid = 'd1'`).Scan(&repo))
	require.Equal(t, "docker.io/library/nginx", repo)
	res = e.Do("GET", "/api/v1/devices/d1/current-state", nil, apitest.Admin())
	require.Equal(t, 200, res.Status)
	require.Nil(t, res.JSON(t)["reported_at"])

	require.Equal(t, 200, e.Do("GET", "/healthz", nil, nil).Status)
}

func TestPreviewWritesNothing(t *testing.T) {
	t.Parallel()
	e := apitest.Setup(t, apitest.Options{})
	for i := range 3 {
		id, _ := e.CreateDevice(map[string]any{"device_name": fmt.Sprintf("d%d", i)})
		require.Equal(t, 200, e.Do("PUT", "/api/v1/devices/"+id+"/target-state", map[string]any{"apps": apitest.AppsWith("acme/app:1.0")}, apitest.Admin()).Status)
	}
	res := e.Do("POST", "/api/v1/image-policies", map[string]any{"image_pattern": "acme/app:*", "update_strategy": "staged"}, apitest.Admin())
	require.Equal(t, 201, res.Status, string(res.Body))

	res = e.Do("POST", "/api/v1/rollouts/preview", map[string]any{"image": "acme/app:1.1"}, apitest.Bearer(apitest.AdminToken))
	require.Equal(t, 200, res.Status, string(res.Body))
	m := res.JSON(t)
	require.NotNil(t, m["policy"])
	require.EqualValues(t, 3, m["total_devices"])

	var n int
	require.NoError(t, e.DB.Pool.QueryRow(e.Ctx, `SELECT count(*) FROM image_rollouts`).Scan(&n))
	require.Zero(t, n)
	res = e.Do("POST", "/api/v1/rollouts/preview", map[string]any{"image": "acme/app"}, apitest.Admin())
	require.Equal(t, "invalid_image", res.ErrorCode(t))
	res = e.Do("POST", "/api/v1/rollouts/preview", map[string]any{"image": "acme/app:1", "digest": "md5:x"}, apitest.Admin())
	require.Equal(t, "invalid_digest", res.ErrorCode(t))
}
