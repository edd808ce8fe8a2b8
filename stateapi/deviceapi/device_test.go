package deviceapi_test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/fleetshift/fleetshift/stateapi/internal/apitest"

	"github.com/fleetshift/fleetshift/shared/broker"
	"github.com/fleetshift/fleetshift/shared/natstest"
	"github.com/fleetshift/fleetshift/shared/pgtest"
	"github.com/fleetshift/fleetshift/shared/wait"
	"github.com/fleetshift/fleetshift/streams"
)

func TestRegisterWithProvisioningKey(t *testing.T) {
	t.Parallel()
	e := apitest.Setup(t, apitest.Options{})

	res := e.Do("PUT", "/api/v1/fleets/f1/target-state", map[string]any{"apps": apitest.AppsWith("acme/app:1.0")}, apitest.Admin())
	require.Equal(t, 200, res.Status, string(res.Body))
	res = e.Do("GET", "/api/v1/fleets/f1/target-state", nil, apitest.Admin())
	require.Equal(t, 200, res.Status)
	require.EqualValues(t, 1, res.JSON(t)["version"])

	res = e.Do("POST", "/api/v1/provisioning-keys", map[string]any{"fleet_id": "f1", "max_devices": 2}, apitest.Admin())
	require.Equal(t, 201, res.Status, string(res.Body))
	key := res.JSON(t)["key"].(string)

	register := func(k, name string) apitest.Response {
		return e.Do("POST", "/api/v1/device/register", map[string]any{"device_name": name, "tags": map[string]any{"site": "a"}}, apitest.Bearer(k))
	}
	res = register(key, "d1")
	require.Equal(t, 201, res.Status, string(res.Body))
	d1 := res.JSON(t)
	require.Equal(t, "nats://devices.example:4222", d1["nats_url"])
	uuid, apiKey := d1["uuid"].(string), d1["api_key"].(string)

	// Starts with the fleet's default target.
	res = e.Do("GET", "/api/v1/device/"+uuid+"/state", nil, map[string]string{"X-Device-API-Key": apiKey})
	require.Equal(t, 200, res.Status, string(res.Body))
	require.Contains(t, string(res.Body), "acme/app:1.0")

	// Keys are stored only hashed.
	var stored []byte
	var tags []string
	require.NoError(t, e.DB.Pool.QueryRow(e.Ctx, `SELECT api_key_hash, tags FROM devices WHERE uuid = $1`, uuid).Scan(&stored, &tags))
	sum := sha256.Sum256([]byte(apiKey))
	require.Equal(t, sum[:], stored)
	require.Equal(t, []string{"site=a"}, tags)
	var plain int
	require.NoError(t, e.DB.Pool.QueryRow(e.Ctx, `SELECT count(*) FROM provisioning_keys WHERE key_hash = $1`, []byte(key)).Scan(&plain))
	require.Zero(t, plain)

	require.Equal(t, 201, register(key, "d2").Status)
	require.Equal(t, 401, register(key, "d3").Status, "max_devices reached")

	// Revoked.
	res = e.Do("POST", "/api/v1/provisioning-keys", map[string]any{"fleet_id": "f1"}, apitest.Admin())
	revoked := res.JSON(t)
	require.Equal(t, 201, register(revoked["key"].(string), "r1").Status)
	require.Equal(t, 204, e.Do("DELETE", "/api/v1/provisioning-keys/"+revoked["id"].(string), nil, apitest.Admin()).Status)
	require.Equal(t, 401, register(revoked["key"].(string), "r2").Status)

	// Expired.
	res = e.Do("POST", "/api/v1/provisioning-keys", map[string]any{"fleet_id": "f1", "expires_at": time.Now().Add(time.Hour)}, apitest.Admin())
	expiring := res.JSON(t)
	_, err := e.DB.Pool.Exec(e.Ctx, `UPDATE provisioning_keys SET expires_at = now() - interval '1 second' WHERE id = $1`, expiring["id"])
	require.NoError(t, err)
	require.Equal(t, 401, register(expiring["key"].(string), "x1").Status)

	require.Equal(t, 401, register("not-a-key", "x2").Status)
	require.Equal(t, 401, e.Do("POST", "/api/v1/device/register", map[string]any{"device_name": "x"}, nil).Status)
	res = e.Do("POST", "/api/v1/provisioning-keys", map[string]any{"fleet_id": "f1", "expires_at": "2001-01-01T00:00:00Z"}, apitest.Admin())
	require.Equal(t, 400, res.Status)
	require.Equal(t, "invalid_expires_at", res.ErrorCode(t))

	var n int
	require.NoError(t, e.DB.Pool.QueryRow(e.Ctx, `SELECT count(*) FROM devices`).Scan(&n))
	require.Equal(t, 3, n)
}

func TestDeviceKeyOpensOnlyItsOwnDevice(t *testing.T) {
	t.Parallel()
	e := apitest.Setup(t, apitest.Options{})
	a, keyA := e.CreateDevice(map[string]any{"device_name": "a"})
	b, keyB := e.CreateDevice(map[string]any{"device_name": "b"})

	check := func(round string) {
		t.Helper()
		require.Equal(t, 200, e.Do("GET", "/api/v1/device/"+a+"/state", nil, map[string]string{"X-Device-API-Key": keyA}).Status, round)
		require.Equal(t, 200, e.Do("GET", "/api/v1/device/"+b+"/state", nil, apitest.Bearer(keyB)).Status, round)
		require.Equal(t, 403, e.Do("GET", "/api/v1/device/"+b+"/state", nil, map[string]string{"X-Device-API-Key": keyA}).Status, round)
		require.Equal(t, 403, e.Do("GET", "/api/v1/device/"+a+"/state", nil, apitest.Bearer(keyB)).Status, round)
		require.Equal(t, 403, e.Do("GET", "/api/v1/device/nosuchdevice/state", nil, apitest.Bearer(keyA)).Status, round)
		require.Equal(t, 401, e.Do("GET", "/api/v1/device/"+a+"/state", nil, apitest.Bearer("wrong")).Status, round)
		require.Equal(t, 401, e.Do("GET", "/api/v1/device/"+a+"/state", nil, nil).Status, round)
		require.Equal(t, 400, e.Do("GET", "/api/v1/device/a.b/state", nil, apitest.Bearer(keyA)).Status, round)

		report := map[string]any{"apps": map[string]any{}}
		require.Equal(t, 403, e.Do("PATCH", "/api/v1/device/state", map[string]any{b: report}, apitest.Bearer(keyA)).Status, round)
		require.Equal(t, 403, e.Do("PATCH", "/api/v1/device/state", map[string]any{a: report, b: report}, apitest.Bearer(keyA)).Status, round)
		require.Equal(t, 401, e.Do("PATCH", "/api/v1/device/state", map[string]any{a: report}, apitest.Bearer("wrong")).Status, round)
		var n int
		require.NoError(t, e.DB.Pool.QueryRow(e.Ctx, `SELECT count(*) FROM device_current_state`).Scan(&n))
		require.Zero(t, n, "a refused body stores nothing")
	}
	check("cold")
	check("cached") // the same answers once both devices are in the poll cache

	// Revoking a device closes it at once, even though it is cached.
	require.Equal(t, 204, e.Do("DELETE", "/api/v1/devices/"+a, nil, apitest.Admin()).Status)
	require.Equal(t, 401, e.Do("GET", "/api/v1/device/"+a+"/state", nil, apitest.Bearer(keyA)).Status)
	require.Equal(t, 401, e.Do("PATCH", "/api/v1/device/state", map[string]any{a: map[string]any{"apps": map[string]any{}}}, apitest.Bearer(keyA)).Status)
	require.Equal(t, 404, e.Do("DELETE", "/api/v1/devices/nosuch", nil, apitest.Admin()).Status)
}

func TestETagAndIfNoneMatch(t *testing.T) {
	t.Parallel()
	e := apitest.Setup(t, apitest.Options{})
	id, key := e.CreateDevice(map[string]any{"device_name": "a"})
	require.Equal(t, 200, e.Do("PUT", "/api/v1/devices/"+id+"/target-state",
		map[string]any{"apps": apitest.AppsWith("acme/app:1.0"), "config": map[string]any{"x": 1}}, apitest.Admin()).Status)

	poll := func(inm string) apitest.Response {
		h := apitest.Bearer(key)
		if inm != "" {
			h["If-None-Match"] = inm
		}
		return e.Do("GET", "/api/v1/device/"+id+"/state", nil, h)
	}
	res := poll("")
	require.Equal(t, 200, res.Status)
	etag := res.Header.Get("ETag")
	require.Regexp(t, `^"[^"]+"$`, etag, "a quoted strong ETag")
	var body map[string]struct {
		Apps    map[string]any `json:"apps"`
		Config  map[string]any `json:"config"`
		Version int64          `json:"version"`
	}
	require.NoError(t, json.Unmarshal(res.Body, &body))
	require.EqualValues(t, 2, body[id].Version)
	require.EqualValues(t, 1, body[id].Config["x"])
	require.Contains(t, body[id].Apps, "app1")
	var stored string
	require.NoError(t, e.DB.Pool.QueryRow(e.Ctx, `SELECT etag FROM device_target_state WHERE device_uuid = $1`, id).Scan(&stored))
	require.Equal(t, `"`+stored+`"`, etag)

	for _, inm := range []string{etag, `"other", ` + etag, `W/` + etag, `"a",W/"b" , ` + etag, `*`} {
		res := poll(inm)
		require.Equal(t, 304, res.Status, inm)
		require.Empty(t, res.Body)
		require.Equal(t, etag, res.Header.Get("ETag"))
	}
	for _, inm := range []string{`"other"`, `W/"other", "x"`, `"` + strings.Trim(etag, `"`) + `x"`} {
		require.Equal(t, 200, poll(inm).Status, inm)
	}

	// A new target changes the ETag: the old one no longer matches.
	require.Equal(t, 200, e.Do("PUT", "/api/v1/devices/"+id+"/target-state", map[string]any{"apps": apitest.AppsWith("acme/app:1.1")}, apitest.Admin()).Status)
	res = poll(etag)
	require.Equal(t, 200, res.Status)
	require.NotEqual(t, etag, res.Header.Get("ETag"))
	require.Contains(t, string(res.Body), "acme/app:1.1")
	require.Contains(t, string(res.Body), `"x":1`, "config kept when the PUT has none")
	require.Equal(t, 304, poll(res.Header.Get("ETag")).Status)
}

func TestUnchangedPollCostsNoDatabaseQuery(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	tracer := &apitest.CountingTracer{}
	cfg, err := pgxpool.ParseConfig(db.URL)
	require.NoError(t, err)
	cfg.ConnConfig.Tracer = tracer
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	require.NoError(t, err)
	e := apitest.Setup(t, apitest.Options{DB: db, Pool: pool})
	id, key := e.CreateDevice(map[string]any{"device_name": "a"})

	res := e.Do("GET", "/api/v1/device/"+id+"/state", nil, apitest.Bearer(key))
	require.Equal(t, 200, res.Status)
	etag := res.Header.Get("ETag")

	before := tracer.N.Load()
	for range 50 {
		require.Equal(t, 304, e.Do("GET", "/api/v1/device/"+id+"/state", nil,
			map[string]string{"X-Device-API-Key": key, "If-None-Match": etag}).Status)
	}
	require.Equal(t, before, tracer.N.Load(), "an unchanged poll must not query the database")

	// Even with the database gone, unchanged polls are answered.
	pool.Close()
	require.Equal(t, 304, e.Do("GET", "/api/v1/device/"+id+"/state", nil, map[string]string{"X-Device-API-Key": key, "If-None-Match": etag}).Status)
	// The cache checks the key: a wrong key is not answered from it.
	require.NotEqual(t, 304, e.Do("GET", "/api/v1/device/"+id+"/state", nil, map[string]string{"X-Device-API-Key": key + "x", "If-None-Match": etag}).Status)
}

// Another replica writes a new target; its outbox message reaches this replica, whose cached entry must
// stop answering 304 for the old ETag.
func TestCacheFollowsTargetMessages(t *testing.T) {
	t.Parallel()
	e := apitest.Setup(t, apitest.Options{Relay: true})
	other := apitest.Setup(t, apitest.Options{DB: e.DB, NATS: e.NATS})
	id, key := e.CreateDevice(map[string]any{"device_name": "a"})

	res := e.Do("GET", "/api/v1/device/"+id+"/state", nil, apitest.Bearer(key))
	require.Equal(t, 200, res.Status)
	etag := res.Header.Get("ETag")
	require.Equal(t, 304, e.Do("GET", "/api/v1/device/"+id+"/state", nil, map[string]string{"Authorization": "Bearer " + key, "If-None-Match": etag}).Status)

	res = other.Do("PUT", "/api/v1/devices/"+id+"/target-state", map[string]any{"apps": apitest.AppsWith("acme/app:2.0")}, apitest.Admin())
	require.Equal(t, 200, res.Status, string(res.Body))
	version := int64(res.JSON(t)["version"].(float64))

	wait.For(t, 10*time.Second, func() error {
		res := e.Do("GET", "/api/v1/device/"+id+"/state", nil, map[string]string{"Authorization": "Bearer " + key, "If-None-Match": etag})
		if res.Status != 200 {
			return fmt.Errorf("still %d", res.Status)
		}
		return nil
	})

	// The device can also read its latest target from JetStream, with a deduplicating message id.
	stream, err := e.NATS.JS.Stream(e.Ctx, e.NATS.Subjects.TargetsStream())
	require.NoError(t, err)
	msg, err := stream.GetLastMsgForSubject(e.Ctx, e.NATS.Subjects.DeviceTarget(id))
	require.NoError(t, err)
	require.Equal(t, fmt.Sprintf("%s-%d", id, version), msg.Header.Get(jetstream.MsgIDHeader))
	var tv streams.TargetV1
	require.NoError(t, json.Unmarshal(msg.Data, &tv))
	require.Equal(t, version, tv[id].Version)
	require.Contains(t, string(tv[id].Apps), "acme/app:2.0")
}

// A PATCH report is published on the REPORTS stream (the message a device would publish over NATS) and
// answered after JetStream's ack; healthwatch, the one writer of device_current_state, stores it.
func TestReportPublishedAndStoredByHealthwatch(t *testing.T) {
	t.Parallel()
	e := apitest.Setup(t, apitest.Options{Healthwatch: true})
	id, key := e.CreateDevice(map[string]any{"device_name": "a"})
	report := map[string]any{id: map[string]any{
		"apps": map[string]any{"app1": map[string]any{"services": []any{map[string]any{
			"serviceName": "web", "imageName": "acme/app:1.0", "status": "running",
			"health": map[string]any{"status": "healthy"}}}}},
		"version": 3,
	}}
	res := e.Do("PATCH", "/api/v1/device/state", report, map[string]string{"X-Device-API-Key": key})
	require.Equal(t, 200, res.Status, string(res.Body))

	// Acknowledged by JetStream before the answer: the message is there now.
	stream, err := e.NATS.JS.Stream(e.Ctx, e.NATS.Subjects.ReportsStream())
	require.NoError(t, err)
	msg, err := stream.GetLastMsgForSubject(e.Ctx, e.NATS.Subjects.DeviceState(id))
	require.NoError(t, err)
	var rv streams.ReportV1
	require.NoError(t, json.Unmarshal(msg.Data, &rv))
	require.Len(t, rv, 1)
	require.Equal(t, "running", rv[id].Apps["app1"].Services[0].Status)
	require.Equal(t, "healthy", rv[id].Apps["app1"].Services[0].Health.Status)
	require.EqualValues(t, 3, rv[id].TargetVersion)

	var apps, rep []byte
	var online bool
	wait.For(t, 10*time.Second, func() error {
		return e.DB.Pool.QueryRow(e.Ctx, `SELECT s.apps, s.report, d.is_online FROM device_current_state s
			JOIN devices d ON d.uuid = s.device_uuid WHERE s.device_uuid = $1`, id).Scan(&apps, &rep, &online)
	})
	require.True(t, online)
	require.Contains(t, string(apps), "acme/app:1.0")
	require.Contains(t, string(rep), `"version": 3`)

	res = e.Do("GET", "/api/v1/devices/"+id+"/current-state", nil, apitest.Admin())
	require.Equal(t, 200, res.Status)
	require.Contains(t, string(res.Body), "running")

	// Bad bodies are 400 and publish nothing.
	before, err := stream.Info(e.Ctx)
	require.NoError(t, err)
	require.Equal(t, 400, e.Do("PATCH", "/api/v1/device/state", "{", apitest.Bearer(key)).Status)
	res = e.Do("PATCH", "/api/v1/device/state", map[string]any{id: map[string]any{"apps": "x"}}, apitest.Bearer(key))
	require.Equal(t, 400, res.Status)
	require.Equal(t, "invalid_apps", res.ErrorCode(t))
	require.Equal(t, 400, e.Do("PATCH", "/api/v1/device/state", map[string]any{}, apitest.Bearer(key)).Status)
	after, err := stream.Info(e.Ctx)
	require.NoError(t, err)
	require.Equal(t, before.State.Msgs, after.State.Msgs)
}

// healthwatch is the one writer of device_current_state: no statement of this module writes it.
func TestStateAPIDoesNotWriteCurrentState(t *testing.T) {
	t.Parallel()
	write := regexp.MustCompile(`(?is)(INSERT\s+INTO|UPDATE|DELETE\s+FROM|TRUNCATE|COPY)\s+device_current_state\b`)
	var checked int
	err := filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		checked++
		require.False(t, write.Match(src), "%s writes device_current_state", path)
		return nil
	})
	require.NoError(t, err)
	require.Greater(t, checked, 10)
}

// Without NATS the cache cannot learn of new targets, so it stops answering and polls read the database.
func TestCacheOffWhileNATSDisconnected(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ns := natstest.New(t)
	nc, err := broker.Connect(ns.URL, "stateapi-test", natstest.Creds())
	require.NoError(t, err)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	tracer := &apitest.CountingTracer{}
	cfg, err := pgxpool.ParseConfig(db.URL)
	require.NoError(t, err)
	cfg.ConnConfig.Tracer = tracer
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	e := apitest.Setup(t, apitest.Options{DB: db, Pool: pool, NATS: &natstest.Server{NC: nc, JS: js, Subjects: ns.Subjects, URL: ns.URL}})
	id, key := e.CreateDevice(map[string]any{"device_name": "a"})
	h := map[string]string{"X-Device-API-Key": key}
	res := e.Do("GET", "/api/v1/device/"+id+"/state", nil, h)
	h["If-None-Match"] = res.Header.Get("ETag")
	before := tracer.N.Load()
	require.Equal(t, 304, e.Do("GET", "/api/v1/device/"+id+"/state", nil, h).Status)
	require.Equal(t, before, tracer.N.Load())

	nc.Close()
	wait.For(t, 10*time.Second, func() error {
		before := tracer.N.Load()
		if st := e.Do("GET", "/api/v1/device/"+id+"/state", nil, h).Status; st != 304 {
			return fmt.Errorf("status %d", st)
		}
		if tracer.N.Load() == before {
			return errors.New("still answered from memory")
		}
		return nil
	})
}

func TestConcurrentRegistrationsRespectMaxDevices(t *testing.T) {
	t.Parallel()
	e := apitest.Setup(t, apitest.Options{})
	res := e.Do("POST", "/api/v1/provisioning-keys", map[string]any{"fleet_id": "f", "max_devices": 3}, apitest.Admin())
	key := res.JSON(t)["key"].(string)
	statuses := make(chan int, 10)
	for i := range 10 {
		go func() {
			req := httptest.NewRequest("POST", "/api/v1/device/register", strings.NewReader(fmt.Sprintf(`{"device_name":"d%d"}`, i)))
			req.Header.Set("Authorization", "Bearer "+key)
			resp, err := e.App.Test(req, -1)
			if err != nil {
				statuses <- 0
				return
			}
			statuses <- resp.StatusCode
		}()
	}
	counts := map[int]int{}
	for range 10 {
		counts[<-statuses]++
	}
	require.Equal(t, map[int]int{201: 3, 401: 7}, counts)
	var n int
	require.NoError(t, e.DB.Pool.QueryRow(e.Ctx, `SELECT count(*) FROM devices`).Scan(&n))
	require.Equal(t, 3, n)
}
