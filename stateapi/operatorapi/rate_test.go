package operatorapi_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fleetshift/fleetshift/stateapi/internal/apitest"
)

// TestRatePolicyFields: a rate policy is created with its defaults filled and reads back (GET, PUT of the
// GET body); a bad rate field, or a rate field on another strategy, is a 400 naming it, over POST and
// PUT, and stores nothing; the preview of a push shows the rate rollout as one batch and its pacing.
func TestRatePolicyFields(t *testing.T) {
	t.Parallel()
	e := apitest.Setup(t, apitest.Options{})
	rate := func(extra map[string]any) map[string]any {
		body := map[string]any{"image_pattern": "acme/app:*", "update_strategy": "rate", "rate_base_per_minute": 6}
		for k, v := range extra {
			body[k] = v
		}
		return body
	}
	cases := []struct {
		field string
		body  map[string]any
	}{
		{"rate_base_per_minute", rate(map[string]any{"rate_base_per_minute": nil})},
		{"rate_base_per_minute", rate(map[string]any{"rate_base_per_minute": 0})},
		{"rate_base_per_minute", rate(map[string]any{"rate_base_per_minute": 1000001})},
		{"rate_base_per_minute", rate(map[string]any{"rate_base_per_minute": 4294967296})},
		{"rate_base_per_minute", rate(map[string]any{"rate_base_per_minute": "6"})},
		{"rate_increment_factor", rate(map[string]any{"rate_increment_factor": 1})},
		{"rate_increment_factor", rate(map[string]any{"rate_increment_factor": 5.01})},
		{"rate_increase_criteria", rate(map[string]any{"rate_increase_criteria": "healthy"})},
		{"rate_increase_threshold", rate(map[string]any{"rate_increase_threshold": 0})},
		{"rate_increase_threshold", rate(map[string]any{"rate_increase_threshold": 2147483648})},
		{"rate_maximum_per_minute", rate(map[string]any{"rate_maximum_per_minute": 5})},
		{"rate_maximum_per_minute", rate(map[string]any{"rate_maximum_per_minute": 2000000})},
		{"rate_base_per_minute", map[string]any{"image_pattern": "acme/app:*", "update_strategy": "staged", "rate_base_per_minute": 6}},
		{"rate_increase_criteria", map[string]any{"image_pattern": "acme/app:*", "rate_increase_criteria": "notified"}},
	}
	for _, c := range cases {
		res := e.Do("POST", "/api/v1/image-policies", c.body, apitest.Admin())
		require.Equal(t, 400, res.Status, "%v: %s", c.body, res.Body)
		require.Equal(t, "invalid_"+c.field, res.ErrorCode(t), "%v: %s", c.body, res.Body)
		require.Contains(t, string(res.Body), c.field)
	}
	var n int
	require.NoError(t, e.DB.Pool.QueryRow(e.Ctx, `SELECT count(*) FROM image_update_policies`).Scan(&n))
	require.Zero(t, n, "bad input writes nothing")

	res := e.Do("POST", "/api/v1/image-policies", rate(map[string]any{"rate_increase_criteria": "notified"}), apitest.Admin())
	require.Equal(t, 201, res.Status, string(res.Body))
	p := res.JSON(t)
	id := fmt.Sprint(p["id"])
	for k, want := range map[string]any{"update_strategy": "rate", "rate_base_per_minute": 6.0, "rate_increment_factor": 2.0,
		"rate_increase_criteria": "notified", "rate_increase_threshold": 6.0, "rate_maximum_per_minute": 60.0} {
		require.Equal(t, want, p[k], k)
	}
	res = e.Do("GET", "/api/v1/image-policies/"+id, nil, apitest.Admin())
	require.Equal(t, 200, res.Status)
	res = e.Do("PUT", "/api/v1/image-policies/"+id, res.Body, apitest.Admin())
	require.Equal(t, 200, res.Status, "a GET body PUT back: %s", res.Body)

	// PUT to another strategy keeping a rate field: refused, the stored policy unchanged.
	res = e.Do("PUT", "/api/v1/image-policies/"+id, map[string]any{"image_pattern": "acme/app:*", "update_strategy": "auto",
		"rate_maximum_per_minute": 60}, apitest.Admin())
	require.Equal(t, "invalid_rate_maximum_per_minute", res.ErrorCode(t))
	var strategy string
	require.NoError(t, e.DB.Pool.QueryRow(e.Ctx, `SELECT update_strategy FROM image_update_policies WHERE id = $1`, id).Scan(&strategy))
	require.Equal(t, "rate", strategy)

	// A staged policy reads back with null rate fields, and its GET body PUTs back.
	res = e.Do("POST", "/api/v1/image-policies", map[string]any{"image_pattern": "nginx:*", "update_strategy": "staged"}, apitest.Admin())
	require.Equal(t, 201, res.Status, string(res.Body))
	staged := res.JSON(t)
	require.Contains(t, staged, "rate_base_per_minute")
	require.Nil(t, staged["rate_base_per_minute"])
	res = e.Do("PUT", "/api/v1/image-policies/"+fmt.Sprint(staged["id"]), res.Body, apitest.Admin())
	require.Equal(t, 200, res.Status, string(res.Body))

	// The preview: one batch with every device, and the pacing.
	for i := range 4 {
		dev, _ := e.CreateDevice(map[string]any{"device_name": fmt.Sprintf("r%d", i)})
		require.Equal(t, 200, e.Do("PUT", "/api/v1/devices/"+dev+"/target-state", map[string]any{"apps": apitest.AppsWith("acme/app:1.0")}, apitest.Admin()).Status)
	}
	res = e.Do("POST", "/api/v1/rollouts/preview", map[string]any{"image": "acme/app:1.1"}, apitest.Admin())
	require.Equal(t, 200, res.Status, string(res.Body))
	m := res.JSON(t)
	require.Equal(t, "rate", m["strategy"])
	require.Equal(t, "in_progress", m["status"])
	batches := m["batches"].([]any)
	require.Len(t, batches, 1)
	require.EqualValues(t, 4, batches[0].(map[string]any)["size"])
	r := m["rate"].(map[string]any)
	require.EqualValues(t, 6, r["base_per_minute"])
	require.EqualValues(t, 60, r["maximum_per_minute"])
	require.EqualValues(t, 1, r["chunk_size"])
	require.EqualValues(t, 10, r["interval_seconds"])
	require.EqualValues(t, 30, r["min_dispatch_seconds"], "4 devices at 6/min (notified, threshold 6): 3 x 10 s")
}
