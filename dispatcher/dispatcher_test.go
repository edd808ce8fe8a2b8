package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/fleetshift/fleetshift/shared/logging"
	"github.com/fleetshift/fleetshift/shared/natstest"
	"github.com/fleetshift/fleetshift/shared/pgtest"
	"github.com/fleetshift/fleetshift/shared/target"
	"github.com/fleetshift/fleetshift/shared/wait"
	"github.com/fleetshift/fleetshift/streams"
)

// deviceApps is every fixture device's starting target: the rollout's repository in one service, and
// services and apps that must never change.
const deviceApps = `{
  "1": {"appId": 1, "appName": "shop", "services": [
    {"serviceId": 11, "serviceName": "web", "imageName": "acme/app:1.0", "config": {"image": "acme/app:1.0", "ports": ["80:80"]}},
    {"serviceId": 12, "serviceName": "db", "imageName": "postgres:15", "config": {"image": "postgres:15"}}
  ]},
  "2": {"appId": 2, "appName": "sidecar", "services": [
    {"serviceId": 21, "serviceName": "log", "imageName": "ghcr.io/acme/logger:3", "extra": {"keep": true}}
  ]}
}`

// otherApps is the target of a device that does not run the rollout's repository.
const otherApps = `{"9": {"appId": 9, "appName": "other", "services": [{"serviceName": "x", "imageName": "nginx:1.25"}]}}`

const (
	repository = "docker.io/acme/app"
	newImage   = "acme/app:1.1"
)

type bundle struct {
	db   *pgtest.DB
	ns   *natstest.Server
	svc  *Service
	ctx  context.Context
	stop func() // stops Run and checks it returned nil
}

func setup(t testing.TB) *bundle {
	t.Helper()
	db := pgtest.New(t)
	ns := natstest.New(t)
	svc, err := New(Config{Pool: db.Pool, JS: ns.JS, NC: ns.NC, Subjects: ns.Subjects,
		Log: logging.Component(logging.Nop(), "dispatcher"), AckWait: 30 * time.Second})
	require.NoError(t, err)
	return &bundle{db: db, ns: ns, svc: svc, ctx: context.Background()}
}

// run starts the service's consumer; it stops (and Run must return nil) at cleanup.
func (b *bundle) run(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithCancel(b.ctx)
	done := make(chan error, 1)
	go func() { done <- b.svc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v after its context ended", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("Run did not return after its context ended")
		}
	})
}

// devices creates n devices named <prefix>1..<prefix>n with target apps, set-based.
func (b *bundle) devices(t testing.TB, prefix string, n int, apps string) []string {
	t.Helper()
	_, err := b.db.Pool.Exec(b.ctx, `INSERT INTO devices (uuid, device_name, api_key_hash)
		SELECT $1 || g, $1 || g, decode(md5($1 || g), 'hex') FROM generate_series(1, $2) g`, prefix, n)
	require.NoError(t, err)
	a, err := target.ParseApps([]byte(apps))
	require.NoError(t, err)
	uuids := make([]string, n)
	writes := make([]target.Write, n)
	for i := range uuids {
		uuids[i] = fmt.Sprintf("%s%d", prefix, i+1)
		writes[i] = target.Write{DeviceUUID: uuids[i], Apps: a, Config: json.RawMessage(`{"RESIN_SUPERVISOR_POLL_INTERVAL":"60000"}`)}
	}
	tx, err := b.db.Pool.Begin(b.ctx)
	require.NoError(t, err)
	defer tx.Rollback(b.ctx)
	_, err = target.Apply(b.ctx, tx, writes)
	require.NoError(t, err)
	require.NoError(t, tx.Commit(b.ctx))
	return uuids
}

// rollout creates a rollout of acme/app:1.1 with status over batches (batch k: uuids), all pending.
func (b *bundle) rollout(t testing.TB, status string, batches ...[]string) string {
	t.Helper()
	id := uuid.NewString()
	sizes := make([]int32, len(batches))
	total := 0
	for i, bt := range batches {
		sizes[i] = int32(len(bt))
		total += len(bt)
	}
	_, err := b.db.Pool.Exec(b.ctx, `INSERT INTO image_rollouts (rollout_id, image_name, repository, old_tag, new_tag,
		new_image, strategy, status, total_batches, batch_sizes, total_devices, policy)
		VALUES ($1, 'acme/app', $2, '1.0', '1.1', $3, 'staged', $4, $5, $6, $7,
		        '{"image_pattern": "acme/app:*", "health_check_timeout_seconds": 120}')`,
		id, repository, newImage, status, len(batches), sizes, total)
	require.NoError(t, err)
	for k, bt := range batches {
		_, err := b.db.Pool.Exec(b.ctx, `INSERT INTO device_rollout_status (rollout_id, device_uuid, batch_number,
			old_image_tag, new_image_tag, old_image, new_image)
			SELECT $1, u, $2, '1.0', '1.1', 'acme/app:1.0', $3 FROM unnest($4::text[]) u`, id, k+1, newImage, bt)
		require.NoError(t, err)
	}
	return id
}

// command publishes a dispatch command as the planner's outbox would.
func (b *bundle) command(t testing.TB, rolloutID string, batch int, msgID string) {
	t.Helper()
	data, err := json.Marshal(streams.DispatchV1{RolloutID: rolloutID, Batch: batch})
	require.NoError(t, err)
	_, err = b.ns.JS.Publish(b.ctx, b.ns.Subjects.Command(streams.CommandDispatch, rolloutID), data, jetstream.WithMsgID(msgID))
	require.NoError(t, err)
}

// handled waits until the COMMANDS stream is empty and nothing awaits an ack: every command was
// settled.
func (b *bundle) handled(t testing.TB) {
	t.Helper()
	wait.For(t, 60*time.Second, func() error {
		st, err := b.ns.JS.Stream(b.ctx, b.ns.Subjects.CommandsStream())
		if err != nil {
			return err
		}
		info, err := st.Info(b.ctx)
		if err != nil {
			return err
		}
		if info.State.Msgs != 0 {
			return fmt.Errorf("%d commands still in the stream", info.State.Msgs)
		}
		return nil
	})
}

type targetRow struct {
	Apps    map[string]any
	Version int64
	ETag    string
}

func (b *bundle) target(t testing.TB, uuid string) targetRow {
	t.Helper()
	var raw []byte
	var r targetRow
	require.NoError(t, b.db.Pool.QueryRow(b.ctx, `SELECT apps, version, etag FROM device_target_state WHERE device_uuid = $1`, uuid).
		Scan(&raw, &r.Version, &r.ETag))
	require.NoError(t, json.Unmarshal(raw, &r.Apps))
	return r
}

func (b *bundle) count(t testing.TB, sql string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, b.db.Pool.QueryRow(b.ctx, sql, args...).Scan(&n))
	return n
}

func (b *bundle) lastTarget(t testing.TB, uuid string) (*jetstream.RawStreamMsg, error) {
	t.Helper()
	st, err := b.ns.JS.Stream(b.ctx, b.ns.Subjects.TargetsStream())
	require.NoError(t, err)
	return st.GetLastMsgForSubject(b.ctx, b.ns.Subjects.DeviceTarget(uuid))
}

func (b *bundle) targetsSeq(t testing.TB) uint64 {
	t.Helper()
	st, err := b.ns.JS.Stream(b.ctx, b.ns.Subjects.TargetsStream())
	require.NoError(t, err)
	info, err := st.Info(b.ctx)
	require.NoError(t, err)
	return info.State.LastSeq
}

func services(t testing.TB, apps map[string]any, app string) []map[string]any {
	t.Helper()
	a, ok := apps[app].(map[string]any)
	require.True(t, ok, "app %s missing", app)
	var out []map[string]any
	for _, s := range a["services"].([]any) {
		out = append(out, s.(map[string]any))
	}
	return out
}

func TestDispatchRewritesExactlyTheBatchAndNotifiesIt(t *testing.T) {
	t.Parallel()
	b := setup(t)
	batch1 := b.devices(t, "b1-", 4, deviceApps)
	moved := b.devices(t, "moved-", 1, otherApps) // in batch 1, but no longer runs acme/app
	batch2 := b.devices(t, "b2-", 3, deviceApps)
	outside := b.devices(t, "out-", 2, deviceApps) // runs acme/app, not in the rollout
	id := b.rollout(t, "in_progress", append(append([]string{}, batch1...), moved...), batch2)

	before := map[string]targetRow{}
	subs := map[string]*nats.Subscription{}
	for _, u := range append(append(append(append([]string{}, batch1...), moved...), batch2...), outside...) {
		before[u] = b.target(t, u)
		sub, err := b.ns.NC.SubscribeSync(b.ns.Subjects.DeviceTarget(u))
		require.NoError(t, err)
		subs[u] = sub
	}
	require.NoError(t, b.ns.NC.Flush())

	b.run(t)
	b.command(t, id, 1, id+"-dispatch-1")
	b.handled(t)

	// Batch 1: the acme/app service runs the new image; everything else is exactly as it was.
	for _, u := range batch1 {
		got := b.target(t, u)
		require.Equal(t, before[u].Version+1, got.Version, u)
		require.NotEqual(t, before[u].ETag, got.ETag, u)
		web := services(t, got.Apps, "1")
		require.Equal(t, newImage, web[0]["imageName"])
		require.Equal(t, map[string]any{"image": newImage, "ports": []any{"80:80"}}, web[0]["config"])
		require.Equal(t, services(t, before[u].Apps, "1")[1], web[1], "other service of the app changed")
		require.Equal(t, before[u].Apps["2"], got.Apps["2"], "other app changed")

		msg, err := subs[u].NextMsg(10 * time.Second)
		require.NoError(t, err, "live notification of %s", u)
		var doc streams.TargetV1
		require.NoError(t, json.Unmarshal(msg.Data, &doc))
		require.Equal(t, got.Version, doc[u].Version)
		require.Contains(t, string(doc[u].Apps), newImage)
		require.Equal(t, fmt.Sprintf("%s-%d", u, got.Version), msg.Header.Get(jetstream.MsgIDHeader))

		last, err := b.lastTarget(t, u)
		require.NoError(t, err, "TARGETS holds %s's latest target", u)
		require.Equal(t, msg.Data, last.Data)
	}
	// Untouched: batch 2, devices outside the rollout, and the batch-1 device that moved off acme/app.
	for _, u := range append(append(append([]string{}, batch2...), outside...), moved...) {
		require.Equal(t, before[u], b.target(t, u), u)
		_, err := subs[u].NextMsg(50 * time.Millisecond)
		require.ErrorIs(t, err, nats.ErrTimeout, "%s was notified", u)
		_, err = b.lastTarget(t, u)
		require.ErrorIs(t, err, jetstream.ErrMsgNotFound, "%s has a target message", u)
	}
	require.Equal(t, 4, b.count(t, `SELECT count(*) FROM device_images WHERE repository = $1 AND image = $2`, repository, newImage))

	// Device rows: scheduled with the written generation and the policy's health deadline.
	require.Equal(t, 4, b.count(t, `SELECT count(*) FROM device_rollout_status d JOIN device_target_state t USING (device_uuid)
		WHERE d.rollout_id = $1 AND d.batch_number = 1 AND d.status = 'scheduled' AND d.target_version = t.version
		  AND d.scheduled_at IS NOT NULL AND d.health_deadline = d.scheduled_at + interval '120 seconds'`, id))
	require.Equal(t, 1, b.count(t, `SELECT count(*) FROM device_rollout_status WHERE rollout_id = $1 AND status = 'skipped'
		AND device_uuid = $2`, id, moved[0]))
	require.Equal(t, 3, b.count(t, `SELECT count(*) FROM device_rollout_status WHERE rollout_id = $1 AND batch_number = 2
		AND status = 'pending' AND scheduled_at IS NULL`, id))
	require.Equal(t, 1, b.count(t, `SELECT count(*) FROM image_rollouts WHERE rollout_id = $1 AND current_batch = 1
		AND started_at IS NOT NULL AND status = 'in_progress'`, id))

	// Events: rows and outbox messages from the same transaction.
	// One image.batch_devices_scheduled event names the batch's scheduled devices; no per-device event.
	for typ, want := range map[string]int{streams.EventRolloutStarted: 1, streams.EventBatchStarted: 1,
		streams.EventBatchDevicesScheduled: 1, streams.EventDeviceScheduled: 0} {
		require.Equal(t, want, b.count(t, `SELECT count(*) FROM rollout_events WHERE rollout_id = $1 AND event_type = $2`, id, typ), typ)
		require.Equal(t, want, b.count(t, `SELECT count(*) FROM outbox WHERE subject = $1`, b.ns.Subjects.Event(typ, id)), typ)
	}
	require.Equal(t, 4, b.count(t, `SELECT count(*) FROM rollout_events e, jsonb_array_elements_text(e.data->'devices') u
		WHERE e.rollout_id = $1 AND e.event_type = $2 AND e.device_uuid IS NULL AND u = ANY($3)
		  AND (e.data->>'batch')::int = 1 AND (e.data->>'count')::int = 4 AND e.data->>'new_image' = $4`,
		id, streams.EventBatchDevicesScheduled, batch1, newImage))
	// A device's history stays in its row: old image, target version and when it was scheduled.
	require.Equal(t, 4, b.count(t, `SELECT count(*) FROM device_rollout_status WHERE rollout_id = $1 AND device_uuid = ANY($2)
		AND old_image = 'acme/app:1.0' AND target_version IS NOT NULL AND scheduled_at IS NOT NULL`, id, batch1))

	// Batch 2 next: only its devices change, and the rollout is not started twice.
	b.command(t, id, 2, id+"-dispatch-2")
	b.handled(t)
	for _, u := range batch2 {
		require.Equal(t, newImage, services(t, b.target(t, u).Apps, "1")[0]["imageName"])
	}
	for _, u := range batch1 {
		require.Equal(t, before[u].Version+1, b.target(t, u).Version, u)
	}
	require.Equal(t, 1, b.count(t, `SELECT count(*) FROM rollout_events WHERE rollout_id = $1 AND event_type = $2`, id, streams.EventRolloutStarted))
	require.Equal(t, 2, b.count(t, `SELECT count(*) FROM rollout_events WHERE rollout_id = $1 AND event_type = $2`, id, streams.EventBatchStarted))
	require.Equal(t, 1, b.count(t, `SELECT count(*) FROM image_rollouts WHERE rollout_id = $1 AND current_batch = 2`, id))
}

func TestRedeliveredCommandChangesNothingTwice(t *testing.T) {
	t.Parallel()
	b := setup(t)
	devs := b.devices(t, "d", 5, deviceApps)
	id := b.rollout(t, "in_progress", devs)

	// A crash after the commit and before notifying: the transaction's effects are durable, the
	// devices were never told.
	res, err := b.svc.schedule(b.ctx, streams.DispatchV1{RolloutID: id, Batch: 1})
	require.NoError(t, err)
	require.Equal(t, 5, res.Scheduled)
	_, err = b.lastTarget(t, devs[0])
	require.ErrorIs(t, err, jetstream.ErrMsgNotFound)
	stateAfter := func() string {
		var s string
		require.NoError(t, b.db.Pool.QueryRow(b.ctx, `SELECT
			(SELECT string_agg(device_uuid || ':' || version || ':' || etag, ',' ORDER BY device_uuid) FROM device_target_state) || '|' ||
			(SELECT string_agg(device_uuid || ':' || status || ':' || target_version || ':' || scheduled_at, ',' ORDER BY device_uuid) FROM device_rollout_status) || '|' ||
			(SELECT count(*) FROM rollout_events) || '|' || (SELECT count(*) FROM outbox) || '|' ||
			(SELECT current_batch || ':' || started_at || ':' || updated_at FROM image_rollouts)`).Scan(&s))
		return s
	}
	committed := stateAfter()

	// The redelivered command (the same one, twice over) only notifies.
	b.run(t)
	b.command(t, id, 1, "first-delivery")
	b.command(t, id, 1, "second-delivery")
	b.handled(t)
	require.Equal(t, committed, stateAfter())
	for _, u := range devs {
		last, err := b.lastTarget(t, u)
		require.NoError(t, err, "%s notified on redelivery", u)
		var doc streams.TargetV1
		require.NoError(t, json.Unmarshal(last.Data, &doc))
		require.Equal(t, int64(2), doc[u].Version)
	}

	// Once more directly: same message ids, so JetStream drops them as duplicates.
	seq := b.targetsSeq(t)
	res, err = b.svc.Dispatch(b.ctx, streams.DispatchV1{RolloutID: id, Batch: 1})
	require.NoError(t, err)
	require.Equal(t, Result{RolloutStatus: "in_progress", Notified: 5}, res)
	require.Equal(t, seq, b.targetsSeq(t))
	require.Equal(t, committed, stateAfter())
}

func TestPausedOrFinishedRolloutDispatchesNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.run(t)
	for i, status := range []string{"paused", "cancelled", "superseded", "completed", "pending"} {
		devs := b.devices(t, fmt.Sprintf("s%d-", i), 3, deviceApps)
		id := b.rollout(t, status, devs)
		b.command(t, id, 1, id)
		b.handled(t)
		require.Equal(t, 3, b.count(t, `SELECT count(*) FROM device_rollout_status WHERE rollout_id = $1 AND status = 'pending'
			AND scheduled_at IS NULL AND target_version IS NULL`, id), status)
		require.Equal(t, 3, b.count(t, `SELECT count(*) FROM device_target_state WHERE device_uuid = ANY($1) AND version = 1`, devs), status)
		require.Equal(t, 0, b.count(t, `SELECT count(*) FROM rollout_events WHERE rollout_id = $1`, id), status)
		require.Equal(t, 1, b.count(t, `SELECT count(*) FROM image_rollouts WHERE rollout_id = $1 AND current_batch = 0
			AND started_at IS NULL AND status = $2`, id, status), status)
		for _, u := range devs {
			_, err := b.lastTarget(t, u)
			require.ErrorIs(t, err, jetstream.ErrMsgNotFound, status)
		}
	}
	require.Equal(t, 0, b.count(t, `SELECT count(*) FROM outbox`))
}

func TestMalformedCommandsAreDroppedAndTheConsumerGoesOn(t *testing.T) {
	t.Parallel()
	b := setup(t)
	devs := b.devices(t, "m", 2, deviceApps)
	id := b.rollout(t, "in_progress", devs)
	b.run(t)
	_, err := b.ns.JS.Publish(b.ctx, b.ns.Subjects.Command(streams.CommandDispatch, "x"), []byte("not json"))
	require.NoError(t, err)
	_, err = b.ns.JS.Publish(b.ctx, b.ns.Subjects.Command(streams.CommandDispatch, "x"), []byte(`{"rollout_id":"not-a-uuid","batch":1}`))
	require.NoError(t, err)
	_, err = b.ns.JS.Publish(b.ctx, b.ns.Subjects.Command("unknown-kind", id), []byte(`{}`))
	require.NoError(t, err)
	b.command(t, id, 9, "batch-out-of-range")
	b.command(t, uuid.NewString(), 1, "no-such-rollout")
	b.command(t, id, 1, "good")
	b.handled(t)
	require.Equal(t, 2, b.count(t, `SELECT count(*) FROM device_rollout_status WHERE rollout_id = $1 AND status = 'scheduled'`, id))
}

func TestDispatchOf20000DeviceBatch(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const n = 20000
	devs := b.devices(t, "big", n+10, deviceApps)
	id := b.rollout(t, "in_progress", devs[:n], devs[n:])
	b.run(t)
	start := time.Now()
	b.command(t, id, 1, id+"-1")
	b.handled(t)
	t.Logf("dispatched and notified %d devices in %s", n, time.Since(start))

	require.Equal(t, n, b.count(t, `SELECT count(*) FROM device_rollout_status d JOIN device_target_state t USING (device_uuid)
		WHERE d.rollout_id = $1 AND d.status = 'scheduled' AND t.version = 2 AND d.target_version = 2`, id))
	require.Equal(t, 10, b.count(t, `SELECT count(*) FROM device_target_state WHERE version = 1`))
	// Chunked batch events: every device named once, at most streams.BatchDevicesChunk per event.
	require.Equal(t, n/streams.BatchDevicesChunk, b.count(t, `SELECT count(*) FROM rollout_events WHERE rollout_id = $1 AND event_type = $2`,
		id, streams.EventBatchDevicesScheduled))
	require.Equal(t, n, b.count(t, `SELECT count(DISTINCT u) FROM rollout_events e, jsonb_array_elements_text(e.data->'devices') u
		WHERE e.rollout_id = $1 AND e.event_type = $2`, id, streams.EventBatchDevicesScheduled))
	require.Zero(t, b.count(t, `SELECT count(*) FROM rollout_events WHERE rollout_id = $1 AND event_type = $2`, id, streams.EventDeviceScheduled))
	st, err := b.ns.JS.Stream(b.ctx, b.ns.Subjects.TargetsStream())
	require.NoError(t, err)
	info, err := st.Info(b.ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(n), info.State.Msgs)
	last, err := b.lastTarget(t, devs[n-1])
	require.NoError(t, err)
	require.Contains(t, string(last.Data), newImage)
}

func TestNewValidatesConfig(t *testing.T) {
	t.Parallel()
	_, err := New(Config{})
	require.Error(t, err)
	ns := natstest.New(t)
	_, err = New(Config{JS: ns.JS})
	require.Error(t, err)
}

func TestRewriteKeepsNumbersAndUnknownFields(t *testing.T) {
	t.Parallel()
	raw := `{"1":{"appId":12345678901234567,"services":[{"imageName":"docker.io/acme/app:1.0","x":{"y":[1.50,2]}}]}}`
	o, apps, err := rewriteOne([]byte(raw), repository, newImage, nil)
	require.NoError(t, err)
	require.Equal(t, outcomeWrite, o)
	out, err := json.Marshal(apps)
	require.NoError(t, err)
	require.JSONEq(t, `{"1":{"appId":12345678901234567,"services":[{"imageName":"acme/app:1.1","config":{"image":"acme/app:1.1"},"x":{"y":[1.50,2]}}]}}`, string(out))
	require.Contains(t, string(out), "12345678901234567")

	o, _, err = rewriteOne([]byte(`{"1":{"services":[{"imageName":"acme/app:1.1"}]}}`), repository, newImage, nil)
	require.NoError(t, err)
	require.Equal(t, outcomeCurrent, o)
	o, _, err = rewriteOne([]byte(otherApps), repository, newImage, nil)
	require.NoError(t, err)
	require.Equal(t, outcomeSkip, o)
	_, _, err = rewriteOne([]byte(`[`), repository, newImage, nil)
	require.Error(t, err)
	require.False(t, errors.Is(err, errPermanent))
}

// TestPolicyHealthCheckIsHandedToDevices: with health checks on, the policy's health_check_config goes to
// every moved service as "healthCheck" (with the policy's timeout as its deadline); with checks off it does not.
func TestPolicyHealthCheckIsHandedToDevices(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, c := range []struct {
		name    string
		enabled bool
	}{{"on", true}, {"off", false}} {
		devs := b.devices(t, "hc-"+c.name, 2, deviceApps)
		id := b.rollout(t, "in_progress", devs)
		_, err := b.db.Pool.Exec(b.ctx, `UPDATE image_rollouts SET policy = policy || jsonb_build_object('health_check_enabled', $2::boolean,
			'health_check_config', '{"type": "http", "url": "http://127.0.0.1:8080/healthz", "expected_status": 200}'::jsonb) WHERE rollout_id = $1`, id, c.enabled)
		require.NoError(t, err)
		_, err = b.svc.Dispatch(b.ctx, streams.DispatchV1{RolloutID: id, Batch: 1})
		require.NoError(t, err)
		var hc []byte
		require.NoError(t, b.db.Pool.QueryRow(b.ctx, `SELECT s->'healthCheck' FROM device_target_state t,
			jsonb_array_elements(t.apps->'1'->'services') s WHERE t.device_uuid = $1 AND s->>'imageName' = $2`, devs[0], newImage).Scan(&hc))
		if !c.enabled {
			require.Nil(t, hc, "health checks off: no healthCheck handed down")
			continue
		}
		require.JSONEq(t, `{"type": "http", "url": "http://127.0.0.1:8080/healthz", "expected_status": 200, "health_check_timeout_seconds": 120}`, string(hc))
	}
}

// TestPoisonCommandsAreDeadLettered: a command whose batch overflows int4 and an unreadable one are
// terminated and recorded in the dead-letter stream with their reason and origin, counted, and the good
// command published with them is dispatched.
func TestPoisonCommandsAreDeadLettered(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ns := natstest.New(t)
	counted := make(chan string, 8)
	svc, err := New(Config{Pool: db.Pool, JS: ns.JS, Subjects: ns.Subjects, Log: logging.Nop(), AckWait: 30 * time.Second,
		DeadLetterCount: func(consumer, reason string) { counted <- consumer + "/" + reason }})
	require.NoError(t, err)
	b := &bundle{db: db, ns: ns, svc: svc, ctx: context.Background()}
	devs := b.devices(t, "p", 2, deviceApps)
	id := b.rollout(t, "in_progress", devs)
	b.run(t)
	b.command(t, id, 3_000_000_000, "overflow")
	_, err = ns.JS.Publish(b.ctx, ns.Subjects.Command(streams.CommandDispatch, id), []byte(`{"rollout_id":`))
	require.NoError(t, err)
	b.command(t, id, 1, "good")
	b.handled(t)
	require.Equal(t, 2, b.count(t, `SELECT count(*) FROM device_rollout_status WHERE rollout_id = $1 AND status = 'scheduled'`, id))

	dl, err := ns.JS.Stream(b.ctx, ns.Subjects.DeadLetterStream())
	require.NoError(t, err)
	reasons := map[string]string{}
	for seq := uint64(1); seq <= 2; seq++ {
		m, err := dl.GetMsg(b.ctx, seq)
		require.NoError(t, err)
		require.Equal(t, ns.Subjects.DeadLetter(ns.Subjects.CommandsStream()), m.Subject)
		require.Equal(t, streams.ConsumerDispatcher, m.Header.Get(streams.HeaderDLConsumer))
		require.Equal(t, ns.Subjects.Command(streams.CommandDispatch, id), m.Header.Get(streams.HeaderDLSubject))
		reasons[m.Header.Get(streams.HeaderDLSeq)] = m.Header.Get(streams.HeaderDLReason)
	}
	require.Equal(t, map[string]string{"1": "invalid", "2": "decode"}, reasons)
	require.ElementsMatch(t, []string{"dispatcher/invalid", "dispatcher/decode"}, []string{<-counted, <-counted})
}
