package deviceapi_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/fleetshift/fleetshift/shared/pgtest"
	"github.com/fleetshift/fleetshift/shared/wait"
	"github.com/fleetshift/fleetshift/stateapi/deviceapi"
	"github.com/fleetshift/fleetshift/stateapi/internal/apitest"
)

// Every device route refuses input that could not be stored downstream with a 4xx naming the field
// (never a 500, never a Go type) and writes or publishes nothing.
func TestDeviceRoutesRefuseBadInput(t *testing.T) {
	t.Parallel()
	e := apitest.Setup(t, apitest.Options{})
	id, key := e.CreateDevice(map[string]any{"uuid": "dev-1", "device_name": "d"})
	res := e.Do("POST", "/api/v1/provisioning-keys", map[string]any{"fleet_id": "f1"}, apitest.Admin())
	require.Equal(t, 201, res.Status, string(res.Body))
	provKey := res.JSON(t)["key"].(string)
	reports, err := e.NATS.JS.Stream(e.Ctx, e.NATS.Subjects.ReportsStream())
	require.NoError(t, err)
	published := func() uint64 {
		info, err := reports.Info(e.Ctx)
		require.NoError(t, err)
		return info.State.Msgs
	}
	devices := func() int {
		var n int
		require.NoError(t, e.DB.Pool.QueryRow(e.Ctx, `SELECT count(*) FROM devices`).Scan(&n))
		return n
	}
	report := func(inner string) string { return `{"` + id + `":` + inner + `}` }
	svc := func(field string) string {
		return `{"apps":{"a":{"services":[{"serviceName":"web",` + field + `}]}}}`
	}
	cases := []struct {
		name, method, path, key, body string
		status                        int
		code, field, message          string
	}{
		{"register NUL name", "POST", "/api/v1/device/register", provKey, `{"device_name":"a\u0000"}`, 400, "invalid_device_name", "device_name", "NUL"},
		{"register bad UTF-8 name", "POST", "/api/v1/device/register", provKey, "{\"device_name\":\"a\xc3\"}", 400, "invalid_device_name", "device_name", "UTF-8"},
		{"register NUL tag", "POST", "/api/v1/device/register", provKey, `{"device_name":"a","tags":{"k":"v\u0000"}}`, 400, "invalid_tags", "tags", "NUL"},
		{"register NUL uuid", "POST", "/api/v1/device/register", provKey, `{"device_name":"a","uuid":"\u0000"}`, 400, "invalid_uuid", "uuid", "NUL"},
		{"register huge", "POST", "/api/v1/device/register", provKey, `{"device_name":"` + strings.Repeat("a", 20<<10) + `"}`, 413, "body_too_large", "", "16384"},
		{"report NUL", "PATCH", "/api/v1/device/state", key, report(svc(`"status":"run\u0000"`)), 400, "invalid_apps", "apps.a.services[0].status", "NUL"},
		{"report bad UTF-8", "PATCH", "/api/v1/device/state", key, report(svc("\"status\":\"\xff\xfe\"")), 400, "invalid_apps", "apps.a.services[0].status", "UTF-8"},
		{"report lone surrogate", "PATCH", "/api/v1/device/state", key, report(svc(`"status":"\ud800"`)), 400, "invalid_apps", "apps.a.services[0].status", "surrogate"},
		{"report lone low surrogate key", "PATCH", "/api/v1/device/state", key, report(`{"apps":{},"x\udc01":1}`), 400, "invalid_x\\udc01", "", "surrogate"},
		{"report wrong shape", "PATCH", "/api/v1/device/state", key, report(svc(`"health":"healthy"`)), 400, "invalid_apps", "apps.services.health", "expected object, got string"},
		{"report huge", "PATCH", "/api/v1/device/state", key, report(svc(`"status":"` + strings.Repeat("x", 70<<10) + `"`)), 413, "body_too_large", "", "65536"},
	}
	before := devices()
	for _, tc := range cases {
		res := e.Do(tc.method, tc.path, tc.body, apitest.Bearer(tc.key))
		require.Equal(t, tc.status, res.Status, "%s: %s", tc.name, res.Body)
		m := res.JSON(t)["error"].(map[string]any)
		require.Equal(t, tc.code, m["code"], "%s: %s", tc.name, res.Body)
		require.Contains(t, m["message"], tc.message, "%s: %s", tc.name, res.Body)
		if tc.field != "" {
			require.Contains(t, m["field"], tc.field, "%s: %s", tc.name, res.Body) // the field or a path inside it
			require.Contains(t, m["message"], tc.field, tc.name)
		}
		for _, goish := range []string{"Go struct", "streams.", "int64", "ReportedApp"} {
			require.NotContains(t, m["message"], goish, tc.name)
		}
	}
	require.Equal(t, before, devices(), "no device registered")
	require.Zero(t, published(), "no report published")
	require.Equal(t, 200, e.Do("PATCH", "/api/v1/device/state", report(svc(`"status":"running"`)), apitest.Bearer(key)).Status)
	require.EqualValues(t, 1, published())
}

// Each device's reports are rate-limited: over the burst the answer is 429 with Retry-After, and the
// report is not published.
func TestReportRateLimited(t *testing.T) {
	t.Parallel()
	e := apitest.Setup(t, apitest.Options{Device: deviceapi.Config{ReportBurst: 2, ReportInterval: time.Hour}})
	id, key := e.CreateDevice(map[string]any{"device_name": "a"})
	other, otherKey := e.CreateDevice(map[string]any{"device_name": "b"})
	body := func(id string) string { return `{"` + id + `":{"apps":{}}}` }
	for range 2 {
		require.Equal(t, 200, e.Do("PATCH", "/api/v1/device/state", body(id), apitest.Bearer(key)).Status)
	}
	res := e.Do("PATCH", "/api/v1/device/state", body(id), apitest.Bearer(key))
	require.Equal(t, 429, res.Status, string(res.Body))
	require.Equal(t, "rate_limited", res.ErrorCode(t))
	retry, err := strconv.Atoi(res.Header.Get("Retry-After"))
	require.NoError(t, err)
	require.Positive(t, retry)
	// Another device has its own budget.
	require.Equal(t, 200, e.Do("PATCH", "/api/v1/device/state", body(other), apitest.Bearer(otherKey)).Status)

	reports, err := e.NATS.JS.Stream(e.Ctx, e.NATS.Subjects.ReportsStream())
	require.NoError(t, err)
	info, err := reports.Info(e.Ctx)
	require.NoError(t, err)
	require.EqualValues(t, 3, info.State.Msgs)
}

// blockTable holds an ACCESS EXCLUSIVE lock on table until the test ends (or release is called), so
// every query reading it waits: requests that reach the database stay in flight.
func blockTable(t *testing.T, e *apitest.Env, table string) (release func()) {
	t.Helper()
	tx, err := e.DB.Pool.Begin(e.Ctx)
	require.NoError(t, err)
	_, err = tx.Exec(e.Ctx, `LOCK TABLE `+table+` IN ACCESS EXCLUSIVE MODE`)
	require.NoError(t, err)
	done := false
	release = func() {
		if !done {
			done = true
			require.NoError(t, tx.Rollback(context.Background()))
		}
	}
	t.Cleanup(release)
	return release
}

// waitForLockWaiters waits until n backends wait for a lock (the requests in flight).
func waitForLockWaiters(t *testing.T, e *apitest.Env, n int) {
	t.Helper()
	wait.For(t, 10*time.Second, func() error {
		var waiting int
		if err := e.DB.Pool.QueryRow(e.Ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&waiting); err != nil {
			return err
		}
		if waiting < n {
			return fmt.Errorf("%d of %d requests waiting", waiting, n)
		}
		return nil
	})
}

// Registrations beyond what the server carries are refused at once with 503 overloaded + Retry-After,
// not queued; the ones in flight complete.
func TestRegistrationsLimited(t *testing.T) {
	t.Parallel()
	e := apitest.Setup(t, apitest.Options{Device: deviceapi.Config{MaxRegistrations: 1}})
	res := e.Do("POST", "/api/v1/provisioning-keys", map[string]any{"fleet_id": "f1"}, apitest.Admin())
	require.Equal(t, 201, res.Status, string(res.Body))
	key := res.JSON(t)["key"].(string)

	release := blockTable(t, e, "provisioning_keys")
	first := make(chan int, 1)
	go func() {
		req := httptest.NewRequest("POST", "/api/v1/device/register", strings.NewReader(`{"device_name":"first"}`))
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := e.App.Test(req, -1)
		if err != nil {
			first <- 0
			return
		}
		first <- resp.StatusCode
	}()
	waitForLockWaiters(t, e, 1)

	res = e.Do("POST", "/api/v1/device/register", `{"device_name":"second"}`, apitest.Bearer(key))
	require.Equal(t, 503, res.Status, string(res.Body))
	require.Equal(t, "overloaded", res.ErrorCode(t))
	require.Equal(t, "2", res.Header.Get("Retry-After"))

	release()
	require.Equal(t, 201, <-first)
	require.Equal(t, 201, e.Do("POST", "/api/v1/device/register", `{"device_name":"third"}`, apitest.Bearer(key)).Status)
}

// Polls that must read the database are bounded too; polls answered from memory never are.
func TestColdPollsLimited(t *testing.T) {
	t.Parallel()
	e := apitest.Setup(t, apitest.Options{Device: deviceapi.Config{MaxColdPolls: 1}})
	warm, warmKey := e.CreateDevice(map[string]any{"device_name": "warm"})
	a, keyA := e.CreateDevice(map[string]any{"device_name": "a"})
	b, keyB := e.CreateDevice(map[string]any{"device_name": "b"})
	res := e.Do("GET", "/api/v1/device/"+warm+"/state", nil, apitest.Bearer(warmKey))
	require.Equal(t, 200, res.Status)
	etag := res.Header.Get("ETag")

	release := blockTable(t, e, "devices")
	first := make(chan int, 1)
	go func() {
		req := httptest.NewRequest("GET", "/api/v1/device/"+a+"/state", nil)
		req.Header.Set("X-Device-API-Key", keyA)
		resp, err := e.App.Test(req, -1)
		if err != nil {
			first <- 0
			return
		}
		first <- resp.StatusCode
	}()
	waitForLockWaiters(t, e, 1)

	res = e.Do("GET", "/api/v1/device/"+b+"/state", nil, apitest.Bearer(keyB))
	require.Equal(t, 503, res.Status, string(res.Body))
	require.Equal(t, "overloaded", res.ErrorCode(t))
	require.NotEmpty(t, res.Header.Get("Retry-After"))
	// The cached device is answered from memory meanwhile.
	require.Equal(t, 304, e.Do("GET", "/api/v1/device/"+warm+"/state", nil,
		map[string]string{"X-Device-API-Key": warmKey, "If-None-Match": etag}).Status)

	release()
	require.Equal(t, 200, <-first)
	require.Equal(t, 200, e.Do("GET", "/api/v1/device/"+b+"/state", nil, apitest.Bearer(keyB)).Status)
}

// While the database is unreachable the API answers 503 unavailable with Retry-After, never 500.
func TestDatabaseOutageIs503(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	// A pool pointed at a port where nothing listens: every query fails to connect.
	down, err := pgxpool.New(context.Background(), "postgres://postgres@127.0.0.1:1/none?sslmode=disable&connect_timeout=2")
	require.NoError(t, err)
	t.Cleanup(down.Close)
	e := apitest.Setup(t, apitest.Options{DB: db, Pool: down, SkipReady: true})
	for _, r := range []struct{ method, path, body string }{
		{"GET", "/api/v1/devices", ""},
		{"POST", "/api/v1/devices", `{"device_name":"x"}`},
		{"GET", "/api/v1/image-policies", ""},
		{"GET", "/api/v1/rollouts", ""},
		{"GET", "/api/v1/device/dev-1/state", ""},
		{"POST", "/api/v1/device/register", `{"device_name":"x"}`},
		{"PATCH", "/api/v1/device/state", `{"dev-1":{"apps":{}}}`},
		{"GET", "/readyz", ""},
	} {
		var body any
		if r.body != "" {
			body = r.body
		}
		res := e.Do(r.method, r.path, body, apitest.Bearer("some-key"))
		if r.path != "/readyz" && !strings.HasPrefix(r.path, "/api/v1/device/") {
			res = e.Do(r.method, r.path, body, apitest.Admin())
		}
		require.Equal(t, 503, res.Status, "%s %s: %s", r.method, r.path, res.Body)
		require.NotEmpty(t, res.Header.Get("Retry-After"), "%s %s", r.method, r.path)
		require.NotContains(t, string(res.Body), "127.0.0.1", "%s %s", r.method, r.path)
	}
}

// The database goes away under a running service (its connections terminated, new ones refused): the API
// answers 503 unavailable with Retry-After, unchanged polls are still answered from memory, and it
// recovers by itself when the database is back.
func TestDatabaseTerminatedIs503(t *testing.T) {
	t.Parallel()
	e := apitest.Setup(t, apitest.Options{})
	id, key := e.CreateDevice(map[string]any{"device_name": "a"})
	res := e.Do("GET", "/api/v1/device/"+id+"/state", nil, apitest.Bearer(key))
	require.Equal(t, 200, res.Status)
	etag := res.Header.Get("ETag")

	admin, err := pgx.Connect(e.Ctx, pgtest.ServerURL())
	require.NoError(t, err)
	t.Cleanup(func() { _ = admin.Close(context.Background()) })
	db := pgx.Identifier{e.DB.Name}.Sanitize()
	_, err = admin.Exec(e.Ctx, `ALTER DATABASE `+db+` ALLOW_CONNECTIONS false`)
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = admin.Exec(context.Background(), `ALTER DATABASE `+db+` ALLOW_CONNECTIONS true`) })
	_, err = admin.Exec(e.Ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1`, e.DB.Name)
	require.NoError(t, err)

	for _, r := range []struct {
		method, path, body string
		headers            map[string]string
	}{
		{"GET", "/api/v1/devices", "", apitest.Admin()},
		{"PUT", "/api/v1/devices/" + id + "/target-state", `{"apps":{}}`, apitest.Admin()},
		{"GET", "/api/v1/device/" + id + "/state", "", apitest.Bearer("unknown-key")},
		{"PATCH", "/api/v1/device/state", `{"` + id + `":{"apps":{}}}`, apitest.Bearer("unknown-key")},
	} {
		var body any
		if r.body != "" {
			body = r.body
		}
		// The first request on a terminated connection may meet it closing; every answer is a 503.
		for range 3 {
			res := e.Do(r.method, r.path, body, r.headers)
			require.Equal(t, 503, res.Status, "%s %s: %s", r.method, r.path, res.Body)
			require.Equal(t, "5", res.Header.Get("Retry-After"), "%s %s", r.method, r.path)
			require.Equal(t, "unavailable", res.ErrorCode(t), "%s %s", r.method, r.path)
		}
	}
	require.Equal(t, 304, e.Do("GET", "/api/v1/device/"+id+"/state", nil,
		map[string]string{"X-Device-API-Key": key, "If-None-Match": etag}).Status, "the hot path needs no database")

	_, err = admin.Exec(e.Ctx, `ALTER DATABASE `+db+` ALLOW_CONNECTIONS true`)
	require.NoError(t, err)
	wait.For(t, 10*time.Second, func() error {
		if res := e.Do("GET", "/api/v1/devices", nil, apitest.Admin()); res.Status != 200 {
			return fmt.Errorf("still %d: %s", res.Status, res.Body)
		}
		return nil
	})
}

// With every pool connection busy (a hung or saturated database), a request waits at most the request
// timeout for one and is then answered 503 unavailable with Retry-After, not left hanging or a 500.
func TestPoolExhaustedIs503(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	cfg, err := pgxpool.ParseConfig(db.URL)
	require.NoError(t, err)
	cfg.MaxConns = 1
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	// Set up through a service on the test database's own pool, unhurried.
	setup := apitest.Setup(t, apitest.Options{DB: db})
	id, key := setup.CreateDevice(map[string]any{"device_name": "a"})
	res := setup.Do("POST", "/api/v1/provisioning-keys", map[string]any{"fleet_id": "f1"}, apitest.Admin())
	require.Equal(t, 201, res.Status, string(res.Body))
	provKey := res.JSON(t)["key"].(string)

	e := apitest.Setup(t, apitest.Options{DB: db, NATS: setup.NATS, Pool: pool, RequestTimeout: 300 * time.Millisecond})
	held, err := pool.Acquire(e.Ctx)
	require.NoError(t, err)
	for _, r := range []struct {
		method, path, body string
		headers            map[string]string
	}{
		{"GET", "/api/v1/devices", "", apitest.Bearer("not-the-bootstrap-token")},
		{"GET", "/api/v1/devices/" + id, "", apitest.Admin()},
		{"POST", "/api/v1/device/register", `{"device_name":"b"}`, apitest.Bearer(provKey)},
		{"GET", "/api/v1/device/" + id + "/state", "", apitest.Bearer(key + "-other")},
		{"PATCH", "/api/v1/device/state", `{"` + id + `":{"apps":{}}}`, apitest.Bearer(key + "-other")},
	} {
		var body any
		if r.body != "" {
			body = r.body
		}
		res := e.Do(r.method, r.path, body, r.headers)
		require.Equal(t, 503, res.Status, "%s %s: %s", r.method, r.path, res.Body)
		require.Equal(t, "unavailable", res.ErrorCode(t), "%s %s", r.method, r.path)
		require.NotEmpty(t, res.Header.Get("Retry-After"), "%s %s", r.method, r.path)
	}
	held.Release()
	wait.For(t, 10*time.Second, func() error {
		if res := e.Do("GET", "/api/v1/devices/"+id, nil, apitest.Admin()); res.Status != 200 {
			return fmt.Errorf("still %d: %s", res.Status, res.Body)
		}
		return nil
	})
}
