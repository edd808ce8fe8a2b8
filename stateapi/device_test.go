package stateapi_test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/fleetshift/fleetshift/shared/broker"
	"github.com/fleetshift/fleetshift/shared/natstest"
	"github.com/fleetshift/fleetshift/shared/pgtest"
	"github.com/fleetshift/fleetshift/shared/wait"
	"github.com/fleetshift/fleetshift/streams"
)

func TestRegisterWithProvisioningKey(t *testing.T) {
	t.Parallel()
	e := setup(t, options{})

	res := e.do("PUT", "/api/v1/fleets/f1/target-state", map[string]any{"apps": appsWith("acme/app:1.0")}, admin())
	require.Equal(t, 200, res.status, string(res.body))
	res = e.do("GET", "/api/v1/fleets/f1/target-state", nil, admin())
	require.Equal(t, 200, res.status)
	require.EqualValues(t, 1, res.json(t)["version"])

	res = e.do("POST", "/api/v1/provisioning-keys", map[string]any{"fleet_id": "f1", "max_devices": 2}, admin())
	require.Equal(t, 201, res.status, string(res.body))
	key := res.json(t)["key"].(string)

	register := func(k, name string) response {
		return e.do("POST", "/api/v1/device/register", map[string]any{"device_name": name, "tags": map[string]any{"site": "a"}}, bearer(k))
	}
	res = register(key, "d1")
	require.Equal(t, 201, res.status, string(res.body))
	d1 := res.json(t)
	require.Equal(t, "nats://devices.example:4222", d1["nats_url"])
	uuid, apiKey := d1["uuid"].(string), d1["api_key"].(string)

	// Starts with the fleet's default target.
	res = e.do("GET", "/api/v1/device/"+uuid+"/state", nil, map[string]string{"X-Device-API-Key": apiKey})
	require.Equal(t, 200, res.status, string(res.body))
	require.Contains(t, string(res.body), "acme/app:1.0")

	// Keys are stored only hashed.
	var stored []byte
	var tags []string
	require.NoError(t, e.db.Pool.QueryRow(e.ctx, `SELECT api_key_hash, tags FROM devices WHERE uuid = $1`, uuid).Scan(&stored, &tags))
	sum := sha256.Sum256([]byte(apiKey))
	require.Equal(t, sum[:], stored)
	require.Equal(t, []string{"site=a"}, tags)
	var plain int
	require.NoError(t, e.db.Pool.QueryRow(e.ctx, `SELECT count(*) FROM provisioning_keys WHERE key_hash = $1`, []byte(key)).Scan(&plain))
	require.Zero(t, plain)

	require.Equal(t, 201, register(key, "d2").status)
	require.Equal(t, 401, register(key, "d3").status, "max_devices reached")

	// Revoked.
	res = e.do("POST", "/api/v1/provisioning-keys", map[string]any{"fleet_id": "f1"}, admin())
	revoked := res.json(t)
	require.Equal(t, 201, register(revoked["key"].(string), "r1").status)
	require.Equal(t, 204, e.do("DELETE", "/api/v1/provisioning-keys/"+revoked["id"].(string), nil, admin()).status)
	require.Equal(t, 401, register(revoked["key"].(string), "r2").status)

	// Expired.
	res = e.do("POST", "/api/v1/provisioning-keys", map[string]any{"fleet_id": "f1", "expires_at": time.Now().Add(time.Hour)}, admin())
	expiring := res.json(t)
	_, err := e.db.Pool.Exec(e.ctx, `UPDATE provisioning_keys SET expires_at = now() - interval '1 second' WHERE id = $1`, expiring["id"])
	require.NoError(t, err)
	require.Equal(t, 401, register(expiring["key"].(string), "x1").status)

	require.Equal(t, 401, register("not-a-key", "x2").status)
	require.Equal(t, 401, e.do("POST", "/api/v1/device/register", map[string]any{"device_name": "x"}, nil).status)
	res = e.do("POST", "/api/v1/provisioning-keys", map[string]any{"fleet_id": "f1", "expires_at": "2001-01-01T00:00:00Z"}, admin())
	require.Equal(t, 400, res.status)
	require.Equal(t, "invalid_expires_at", res.errorCode(t))

	var n int
	require.NoError(t, e.db.Pool.QueryRow(e.ctx, `SELECT count(*) FROM devices`).Scan(&n))
	require.Equal(t, 3, n)
}

func TestDeviceKeyOpensOnlyItsOwnDevice(t *testing.T) {
	t.Parallel()
	e := setup(t, options{})
	a, keyA := e.createDevice(map[string]any{"device_name": "a"})
	b, keyB := e.createDevice(map[string]any{"device_name": "b"})

	check := func(round string) {
		t.Helper()
		require.Equal(t, 200, e.do("GET", "/api/v1/device/"+a+"/state", nil, map[string]string{"X-Device-API-Key": keyA}).status, round)
		require.Equal(t, 200, e.do("GET", "/api/v1/device/"+b+"/state", nil, bearer(keyB)).status, round)
		require.Equal(t, 403, e.do("GET", "/api/v1/device/"+b+"/state", nil, map[string]string{"X-Device-API-Key": keyA}).status, round)
		require.Equal(t, 403, e.do("GET", "/api/v1/device/"+a+"/state", nil, bearer(keyB)).status, round)
		require.Equal(t, 403, e.do("GET", "/api/v1/device/nosuchdevice/state", nil, bearer(keyA)).status, round)
		require.Equal(t, 401, e.do("GET", "/api/v1/device/"+a+"/state", nil, bearer("wrong")).status, round)
		require.Equal(t, 401, e.do("GET", "/api/v1/device/"+a+"/state", nil, nil).status, round)
		require.Equal(t, 400, e.do("GET", "/api/v1/device/a.b/state", nil, bearer(keyA)).status, round)

		report := map[string]any{"apps": map[string]any{}}
		require.Equal(t, 403, e.do("PATCH", "/api/v1/device/state", map[string]any{b: report}, bearer(keyA)).status, round)
		require.Equal(t, 403, e.do("PATCH", "/api/v1/device/state", map[string]any{a: report, b: report}, bearer(keyA)).status, round)
		require.Equal(t, 401, e.do("PATCH", "/api/v1/device/state", map[string]any{a: report}, bearer("wrong")).status, round)
		var n int
		require.NoError(t, e.db.Pool.QueryRow(e.ctx, `SELECT count(*) FROM device_current_state`).Scan(&n))
		require.Zero(t, n, "a refused body stores nothing")
	}
	check("cold")
	check("cached") // the same answers once both devices are in the poll cache

	// Revoking a device closes it at once, even though it is cached.
	require.Equal(t, 204, e.do("DELETE", "/api/v1/devices/"+a, nil, admin()).status)
	require.Equal(t, 401, e.do("GET", "/api/v1/device/"+a+"/state", nil, bearer(keyA)).status)
	require.Equal(t, 401, e.do("PATCH", "/api/v1/device/state", map[string]any{a: map[string]any{"apps": map[string]any{}}}, bearer(keyA)).status)
	require.Equal(t, 404, e.do("DELETE", "/api/v1/devices/nosuch", nil, admin()).status)
}

func TestETagAndIfNoneMatch(t *testing.T) {
	t.Parallel()
	e := setup(t, options{})
	id, key := e.createDevice(map[string]any{"device_name": "a"})
	require.Equal(t, 200, e.do("PUT", "/api/v1/devices/"+id+"/target-state",
		map[string]any{"apps": appsWith("acme/app:1.0"), "config": map[string]any{"x": 1}}, admin()).status)

	poll := func(inm string) response {
		h := bearer(key)
		if inm != "" {
			h["If-None-Match"] = inm
		}
		return e.do("GET", "/api/v1/device/"+id+"/state", nil, h)
	}
	res := poll("")
	require.Equal(t, 200, res.status)
	etag := res.header.Get("ETag")
	require.Regexp(t, `^"[^"]+"$`, etag, "a quoted strong ETag")
	var body map[string]struct {
		Apps    map[string]any `json:"apps"`
		Config  map[string]any `json:"config"`
		Version int64          `json:"version"`
	}
	require.NoError(t, json.Unmarshal(res.body, &body))
	require.EqualValues(t, 2, body[id].Version)
	require.EqualValues(t, 1, body[id].Config["x"])
	require.Contains(t, body[id].Apps, "app1")
	var stored string
	require.NoError(t, e.db.Pool.QueryRow(e.ctx, `SELECT etag FROM device_target_state WHERE device_uuid = $1`, id).Scan(&stored))
	require.Equal(t, `"`+stored+`"`, etag)

	for _, inm := range []string{etag, `"other", ` + etag, `W/` + etag, `"a",W/"b" , ` + etag, `*`} {
		res := poll(inm)
		require.Equal(t, 304, res.status, inm)
		require.Empty(t, res.body)
		require.Equal(t, etag, res.header.Get("ETag"))
	}
	for _, inm := range []string{`"other"`, `W/"other", "x"`, `"` + strings.Trim(etag, `"`) + `x"`} {
		require.Equal(t, 200, poll(inm).status, inm)
	}

	// A new target changes the ETag: the old one no longer matches.
	require.Equal(t, 200, e.do("PUT", "/api/v1/devices/"+id+"/target-state", map[string]any{"apps": appsWith("acme/app:1.1")}, admin()).status)
	res = poll(etag)
	require.Equal(t, 200, res.status)
	require.NotEqual(t, etag, res.header.Get("ETag"))
	require.Contains(t, string(res.body), "acme/app:1.1")
	require.Contains(t, string(res.body), `"x":1`, "config kept when the PUT has none")
	require.Equal(t, 304, poll(res.header.Get("ETag")).status)
}

func TestUnchangedPollCostsNoDatabaseQuery(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	tracer := &countingTracer{}
	cfg, err := pgxpool.ParseConfig(db.URL)
	require.NoError(t, err)
	cfg.ConnConfig.Tracer = tracer
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	require.NoError(t, err)
	e := setup(t, options{db: db, pool: pool})
	id, key := e.createDevice(map[string]any{"device_name": "a"})

	res := e.do("GET", "/api/v1/device/"+id+"/state", nil, bearer(key))
	require.Equal(t, 200, res.status)
	etag := res.header.Get("ETag")

	before := tracer.n.Load()
	for range 50 {
		require.Equal(t, 304, e.do("GET", "/api/v1/device/"+id+"/state", nil,
			map[string]string{"X-Device-API-Key": key, "If-None-Match": etag}).status)
	}
	require.Equal(t, before, tracer.n.Load(), "an unchanged poll must not query the database")

	// Even with the database gone, unchanged polls are answered.
	pool.Close()
	require.Equal(t, 304, e.do("GET", "/api/v1/device/"+id+"/state", nil, map[string]string{"X-Device-API-Key": key, "If-None-Match": etag}).status)
	// The cache checks the key: a wrong key is not answered from it.
	require.NotEqual(t, 304, e.do("GET", "/api/v1/device/"+id+"/state", nil, map[string]string{"X-Device-API-Key": key + "x", "If-None-Match": etag}).status)
}

// Another replica writes a new target; its outbox message reaches this replica, whose cached entry must
// stop answering 304 for the old ETag.
func TestCacheFollowsTargetMessages(t *testing.T) {
	t.Parallel()
	e := setup(t, options{relay: true})
	other := setup(t, options{db: e.db, nats: e.nats})
	id, key := e.createDevice(map[string]any{"device_name": "a"})

	res := e.do("GET", "/api/v1/device/"+id+"/state", nil, bearer(key))
	require.Equal(t, 200, res.status)
	etag := res.header.Get("ETag")
	require.Equal(t, 304, e.do("GET", "/api/v1/device/"+id+"/state", nil, map[string]string{"Authorization": "Bearer " + key, "If-None-Match": etag}).status)

	res = other.do("PUT", "/api/v1/devices/"+id+"/target-state", map[string]any{"apps": appsWith("acme/app:2.0")}, admin())
	require.Equal(t, 200, res.status, string(res.body))
	version := int64(res.json(t)["version"].(float64))

	wait.For(t, 10*time.Second, func() error {
		res := e.do("GET", "/api/v1/device/"+id+"/state", nil, map[string]string{"Authorization": "Bearer " + key, "If-None-Match": etag})
		if res.status != 200 {
			return fmt.Errorf("still %d", res.status)
		}
		return nil
	})

	// The device can also read its latest target from JetStream, with a deduplicating message id.
	stream, err := e.nats.JS.Stream(e.ctx, e.nats.Subjects.TargetsStream())
	require.NoError(t, err)
	msg, err := stream.GetLastMsgForSubject(e.ctx, e.nats.Subjects.DeviceTarget(id))
	require.NoError(t, err)
	require.Equal(t, fmt.Sprintf("%s-%d", id, version), msg.Header.Get(jetstream.MsgIDHeader))
	var tv streams.TargetV1
	require.NoError(t, json.Unmarshal(msg.Data, &tv))
	require.Equal(t, version, tv[id].Version)
	require.Contains(t, string(tv[id].Apps), "acme/app:2.0")
}

func TestReportStoredAndPublished(t *testing.T) {
	t.Parallel()
	e := setup(t, options{})
	id, key := e.createDevice(map[string]any{"device_name": "a"})
	report := map[string]any{id: map[string]any{
		"apps": map[string]any{"app1": map[string]any{"services": []any{map[string]any{
			"serviceName": "web", "imageName": "acme/app:1.0", "status": "running",
			"health": map[string]any{"status": "healthy"}}}}},
		"version": 3,
	}}
	res := e.do("PATCH", "/api/v1/device/state", report, map[string]string{"X-Device-API-Key": key})
	require.Equal(t, 200, res.status, string(res.body))

	var apps, rep []byte
	var online bool
	require.NoError(t, e.db.Pool.QueryRow(e.ctx, `SELECT s.apps, s.report, d.is_online FROM device_current_state s
		JOIN devices d ON d.uuid = s.device_uuid WHERE s.device_uuid = $1`, id).Scan(&apps, &rep, &online))
	require.True(t, online)
	require.Contains(t, string(apps), "acme/app:1.0")
	require.Contains(t, string(rep), `"version": 3`)

	stream, err := e.nats.JS.Stream(e.ctx, e.nats.Subjects.ReportsStream())
	require.NoError(t, err)
	msg, err := stream.GetLastMsgForSubject(e.ctx, e.nats.Subjects.DeviceState(id))
	require.NoError(t, err)
	var rv streams.ReportV1
	require.NoError(t, json.Unmarshal(msg.Data, &rv))
	require.Equal(t, "running", rv[id].Apps["app1"].Services[0].Status)
	require.Equal(t, "healthy", rv[id].Apps["app1"].Services[0].Health.Status)
	require.EqualValues(t, 3, rv[id].TargetVersion)

	res = e.do("GET", "/api/v1/devices/"+id+"/current-state", nil, admin())
	require.Equal(t, 200, res.status)
	require.Contains(t, string(res.body), "running")

	// Bad bodies are 400 and store nothing new.
	require.Equal(t, 400, e.do("PATCH", "/api/v1/device/state", "{", bearer(key)).status)
	require.Equal(t, 400, e.do("PATCH", "/api/v1/device/state", map[string]any{id: map[string]any{"apps": "x"}}, bearer(key)).status)
	require.Equal(t, 400, e.do("PATCH", "/api/v1/device/state", map[string]any{}, bearer(key)).status)
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
	tracer := &countingTracer{}
	cfg, err := pgxpool.ParseConfig(db.URL)
	require.NoError(t, err)
	cfg.ConnConfig.Tracer = tracer
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	e := setup(t, options{db: db, pool: pool, nats: &natstest.Server{NC: nc, JS: js, Subjects: ns.Subjects, URL: ns.URL}})
	id, key := e.createDevice(map[string]any{"device_name": "a"})
	h := map[string]string{"X-Device-API-Key": key}
	res := e.do("GET", "/api/v1/device/"+id+"/state", nil, h)
	h["If-None-Match"] = res.header.Get("ETag")
	before := tracer.n.Load()
	require.Equal(t, 304, e.do("GET", "/api/v1/device/"+id+"/state", nil, h).status)
	require.Equal(t, before, tracer.n.Load())

	nc.Close()
	wait.For(t, 10*time.Second, func() error {
		before := tracer.n.Load()
		if st := e.do("GET", "/api/v1/device/"+id+"/state", nil, h).status; st != 304 {
			return fmt.Errorf("status %d", st)
		}
		if tracer.n.Load() == before {
			return errors.New("still answered from memory")
		}
		return nil
	})
}

func TestConcurrentRegistrationsRespectMaxDevices(t *testing.T) {
	t.Parallel()
	e := setup(t, options{})
	res := e.do("POST", "/api/v1/provisioning-keys", map[string]any{"fleet_id": "f", "max_devices": 3}, admin())
	key := res.json(t)["key"].(string)
	statuses := make(chan int, 10)
	for i := range 10 {
		go func() {
			req := httptest.NewRequest("POST", "/api/v1/device/register", strings.NewReader(fmt.Sprintf(`{"device_name":"d%d"}`, i)))
			req.Header.Set("Authorization", "Bearer "+key)
			resp, err := e.app.Test(req, -1)
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
	require.NoError(t, e.db.Pool.QueryRow(e.ctx, `SELECT count(*) FROM devices`).Scan(&n))
	require.Equal(t, 3, n)
}
