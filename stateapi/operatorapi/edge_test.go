package operatorapi_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fleetshift/fleetshift/stateapi/internal/apitest"
)

// Every operator route refuses input PostgreSQL could not store, or that does not fit its column, with a
// 4xx naming the field (never a 500, never a Go type), and writes nothing.
func TestOperatorRoutesRefuseBadInput(t *testing.T) {
	t.Parallel()
	e := apitest.Setup(t, apitest.Options{})
	dev, _ := e.CreateDevice(map[string]any{"uuid": "dev-1", "device_name": "d"})
	res := e.Do("POST", "/api/v1/image-policies", map[string]any{"image_pattern": "acme/app:*"}, apitest.Admin())
	require.Equal(t, 201, res.Status, string(res.Body))
	policyID := fmt.Sprint(res.JSON(t)["id"])
	rollout := "00000000-0000-0000-0000-000000000001"
	_, err := e.DB.Pool.Exec(e.Ctx, `INSERT INTO image_rollouts (rollout_id, image_name, repository, new_tag, new_image, strategy, status)
		VALUES ($1, 'acme/app', 'docker.io/acme/app', '2', 'acme/app:2', 'auto', 'completed')`, rollout)
	require.NoError(t, err)

	type state struct{ devices, policies, keys, tokens, fleets, outbox, targetVersion int64 }
	snapshot := func() state {
		var s state
		require.NoError(t, e.DB.Pool.QueryRow(e.Ctx, `SELECT (SELECT count(*) FROM devices),
			(SELECT count(*) FROM image_update_policies), (SELECT count(*) FROM provisioning_keys),
			(SELECT count(*) FROM api_tokens), (SELECT count(*) FROM fleet_target_state),
			(SELECT count(*) FROM outbox), (SELECT version FROM device_target_state WHERE device_uuid = $1)`, dev).
			Scan(&s.devices, &s.policies, &s.keys, &s.tokens, &s.fleets, &s.outbox, &s.targetVersion))
		return s
	}
	before := snapshot()

	const int4Over = "3000000000"
	big := `{"apps":{},"config":{"x":"` + strings.Repeat("a", 600<<10) + `"}}`
	manyUUIDs := make([]string, 10001)
	for i := range manyUUIDs {
		manyUUIDs[i] = fmt.Sprintf(`"d%d"`, i)
	}
	manyTags := make([]string, 65)
	for i := range manyTags {
		manyTags[i] = fmt.Sprintf(`"t%d"`, i)
	}
	policy := func(field, value string) string {
		return `{"image_pattern":"acme/app:*",` + `"` + field + `":` + value + `}`
	}
	cases := []struct {
		method, path, body string
		status             int
		code, field        string
	}{
		// Devices.
		{"POST", "/api/v1/devices", `{"device_name":"a\u0000b"}`, 400, "invalid_device_name", "device_name"},
		{"POST", "/api/v1/devices", "{\"device_name\":\"a\xffb\"}", 400, "invalid_device_name", "device_name"},
		{"POST", "/api/v1/devices", `{"device_name":"a\ud800b"}`, 400, "invalid_device_name", "device_name"},
		{"POST", "/api/v1/devices", `{"device_name":"x","fleet_id":"f\u0000"}`, 400, "invalid_fleet_id", "fleet_id"},
		{"POST", "/api/v1/devices", `{"device_name":"x","uuid":"u\u0000"}`, 400, "invalid_uuid", "uuid"},
		{"POST", "/api/v1/devices", `{"device_name":"x","tags":["a\u0000"]}`, 400, "invalid_tags", "tags"},
		{"POST", "/api/v1/devices", `{"device_name":"x","tags":{"k":"\u0000"}}`, 400, "invalid_tags", "tags"},
		{"POST", "/api/v1/devices", `{"device_name":"x","tags":[` + strings.Join(manyTags, ",") + `]}`, 400, "invalid_tags", "tags"},
		{"POST", "/api/v1/devices", `{"device_name":5}`, 400, "invalid_device_name", "device_name"},
		{"GET", "/api/v1/devices?fleet_id=%00", "", 400, "invalid_fleet_id", "fleet_id"},
		{"GET", "/api/v1/devices?tag=%FF", "", 400, "invalid_tag", "tag"},
		{"GET", "/api/v1/devices?cursor=ZAB4", "", 400, "invalid_cursor", "cursor"},
		// Targets.
		{"PUT", "/api/v1/devices/" + dev + "/target-state", `{"apps":{},"config":{"a":"\u0000"}}`, 400, "invalid_config", "config.a"},
		{"PUT", "/api/v1/devices/" + dev + "/target-state", `{"apps":{"x\u0000":{}}}`, 400, "invalid_apps", ""},
		{"PUT", "/api/v1/devices/" + dev + "/target-state", `{"apps":{},"config":{"a":"\udc00"}}`, 400, "invalid_config", "config.a"},
		{"PUT", "/api/v1/devices/" + dev + "/target-state", big, 413, "body_too_large", ""},
		{"PUT", "/api/v1/devices/" + dev + "/target-state", `{"apps":{"a":{"services":"x"}}}`, 400, "invalid_apps", "apps"},
		{"PUT", "/api/v1/devices/" + dev + "/target-state", `{"apps":[]}`, 400, "invalid_apps", "apps"},
		{"PUT", "/api/v1/fleets/f1/target-state", `{"apps":{},"config":{"a":"\u0000"}}`, 400, "invalid_config", "config.a"},
		{"PUT", "/api/v1/fleets/f1/target-state", big, 413, "body_too_large", ""},
		// Provisioning keys.
		{"POST", "/api/v1/provisioning-keys", `{"fleet_id":"f\u0000"}`, 400, "invalid_fleet_id", "fleet_id"},
		{"POST", "/api/v1/provisioning-keys", `{"fleet_id":"f","description":"\u0000"}`, 400, "invalid_description", "description"},
		{"POST", "/api/v1/provisioning-keys", `{"fleet_id":"f","max_devices":` + int4Over + `}`, 400, "invalid_max_devices", "max_devices"},
		{"POST", "/api/v1/provisioning-keys", `{"fleet_id":"f","expires_at":"tomorrow"}`, 400, "invalid_expires_at", "expires_at"},
		{"POST", "/api/v1/provisioning-keys", `{"fleet_id":"f","description":"` + strings.Repeat("d", 2001) + `"}`, 400, "invalid_description", "description"},
		{"GET", "/api/v1/provisioning-keys?fleet_id=a%00", "", 400, "invalid_fleet_id", "fleet_id"},
		// Tokens.
		{"POST", "/api/v1/tokens", `{"name":"n\u0000","scope":"read"}`, 400, "invalid_name", "name"},
		{"POST", "/api/v1/tokens", `{"name":"n","scope":"read\u0000"}`, 400, "invalid_scope", "scope"},
		{"DELETE", "/api/v1/tokens/%00", "", 400, "invalid_id", ""},
		// Policies.
		{"POST", "/api/v1/image-policies", policy("description", `"\u0000"`), 400, "invalid_description", "description"},
		{"POST", "/api/v1/image-policies", `{"image_pattern":"acme/\u0000"}`, 400, "invalid_image_pattern", "image_pattern"},
		{"POST", "/api/v1/image-policies", policy("timezone", `"UTC\u0000"`), 400, "invalid_timezone", "timezone"},
		{"POST", "/api/v1/image-policies", policy("fleet_id", `"f\u0000"`), 400, "invalid_fleet_id", "fleet_id"},
		{"POST", "/api/v1/image-policies", policy("device_tags", `["a\u0000"]`), 400, "invalid_device_tags", "device_tags"},
		{"POST", "/api/v1/image-policies", policy("health_check_config", `{"url":"\ud800"}`), 400, "invalid_health_check_config", "health_check_config.url"},
		{"POST", "/api/v1/image-policies", policy("priority", int4Over), 400, "invalid_priority", "priority"},
		{"POST", "/api/v1/image-policies", policy("batch_delay_minutes", int4Over), 400, "invalid_batch_delay_minutes", "batch_delay_minutes"},
		{"POST", "/api/v1/image-policies", policy("batch_delay_seconds", int4Over), 400, "invalid_batch_delay_seconds", "batch_delay_seconds"},
		{"POST", "/api/v1/image-policies", policy("health_check_timeout_seconds", int4Over), 400, "invalid_health_check_timeout_seconds", "health_check_timeout_seconds"},
		{"POST", "/api/v1/image-policies", policy("min_sample_size", int4Over), 400, "invalid_min_sample_size", "min_sample_size"},
		{"POST", "/api/v1/image-policies", policy("staged_batches", "-"+int4Over), 400, "invalid_staged_batches", "staged_batches"},
		{"POST", "/api/v1/image-policies", policy("batch_percentages", "[10,"+int4Over+"]"), 400, "invalid_batch_percentages", "batch_percentages"},
		{"POST", "/api/v1/image-policies", policy("device_uuids", "["+strings.Join(manyUUIDs, ",")+"]"), 400, "invalid_device_uuids", "device_uuids"},
		{"POST", "/api/v1/image-policies", policy("description", `"`+strings.Repeat("d", 2001)+`"`), 400, "invalid_description", "description"},
		{"PUT", "/api/v1/image-policies/" + policyID, policy("priority", int4Over), 400, "invalid_priority", "priority"},
		{"PUT", "/api/v1/image-policies/" + policyID, policy("description", `"\u0000"`), 400, "invalid_description", "description"},
		// Rollouts.
		{"POST", "/api/v1/rollouts/preview", `{"image":"acme/app:1\u0000"}`, 400, "invalid_image", "image"},
		{"GET", "/api/v1/rollouts?image_name=%00", "", 400, "invalid_image_name", "image_name"},
		{"GET", "/api/v1/rollouts?cursor=MjAyNC0wMS0wMVQwMDowMDowMFoAbm90LWEtdXVpZA", "", 400, "invalid_cursor", "cursor"},
		{"GET", "/api/v1/rollouts/" + rollout + "/devices?cursor=OTk5OTk5OTk5OTkAeA", "", 400, "invalid_cursor", "cursor"},
		{"GET", "/api/v1/rollouts/" + rollout + "/events?type=%00", "", 400, "invalid_type", "type"},
	}
	for _, tc := range cases {
		name := tc.method + " " + tc.path + " " + tc.body[:min(len(tc.body), 80)]
		var body any
		if tc.body != "" {
			body = tc.body
		}
		res := e.Do(tc.method, tc.path, body, apitest.Admin())
		require.Equal(t, tc.status, res.Status, "%s: %s", name, res.Body)
		m := res.JSON(t)["error"].(map[string]any)
		require.Equal(t, tc.code, m["code"], "%s: %s", name, res.Body)
		require.NotEmpty(t, m["message"], name)
		if tc.field != "" {
			// The field, or a path inside it (tags[0], config.a).
			require.Contains(t, m["field"], tc.field, "%s: %s", name, res.Body)
			require.Contains(t, m["message"], tc.field, name)
		}
		for _, goish := range []string{"Go struct", "Go value", "int32", "int64", "float64", "json:", "json.", "operatorapi.", "target."} {
			require.NotContains(t, m["message"], goish, name)
		}
	}
	require.Equal(t, before, snapshot(), "refused requests write nothing")
}
