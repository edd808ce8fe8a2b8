package healthwatch

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/fleetshift/fleetshift/shared/logging"
	"github.com/fleetshift/fleetshift/shared/natstest"
	"github.com/fleetshift/fleetshift/shared/pgtest"
	"github.com/fleetshift/fleetshift/shared/target"
	"github.com/fleetshift/fleetshift/streams"
)

// bundle is what a test works with: a fresh database, optionally a JetStream server, and helpers that
// build fixtures the way the planner and the dispatcher would leave them.
type bundle struct {
	t    testing.TB
	ctx  context.Context
	pool *pgxpool.Pool
	ns   *natstest.Server
	subj streams.Subjects
}

func setup(t testing.TB, withNATS bool) *bundle {
	t.Helper()
	b := &bundle{t: t, ctx: context.Background(), pool: pgtest.New(t).Pool, subj: streams.New("")}
	if withNATS {
		b.ns = natstest.New(t)
		b.subj = b.ns.Subjects
	}
	return b
}

func (b *bundle) exec(sql string, args ...any) {
	b.t.Helper()
	_, err := b.pool.Exec(b.ctx, sql, args...)
	require.NoError(b.t, err, sql)
}

func (b *bundle) tx(fn func(tx pgx.Tx)) {
	b.t.Helper()
	tx, err := b.pool.Begin(b.ctx)
	require.NoError(b.t, err)
	defer tx.Rollback(b.ctx)
	fn(tx)
	require.NoError(b.t, tx.Commit(b.ctx))
}

func appsFor(image string) target.Apps {
	var a target.Apps
	doc := fmt.Sprintf(`{"1":{"appId":1,"appName":"main","services":[
		{"serviceName":"web","imageName":%q,"config":{"image":%q}},
		{"serviceName":"cache","imageName":"redis:7","config":{"image":"redis:7"}}]}}`, image, image)
	if err := json.Unmarshal([]byte(doc), &a); err != nil {
		panic(err)
	}
	return a
}

// devices creates n devices named <prefix>-<i> in fleet, each with a target running image (and redis).
func (b *bundle) devices(prefix string, n int, fleet, image string) []string {
	b.t.Helper()
	uuids := make([]string, n)
	for i := range uuids {
		uuids[i] = fmt.Sprintf("%s-%03d", prefix, i)
	}
	b.exec(`INSERT INTO devices (uuid, device_name, fleet_id, api_key_hash)
		SELECT u, u, $2, decode(md5(u), 'hex') FROM unnest($1::text[]) u`, uuids, fleet)
	writes := make([]target.Write, n)
	for i, u := range uuids {
		writes[i] = target.Write{DeviceUUID: u, Apps: appsFor(image)}
	}
	b.tx(func(tx pgx.Tx) {
		_, err := target.Apply(b.ctx, tx, writes)
		require.NoError(b.t, err)
	})
	return uuids
}

type rolloutSpec struct {
	devices  []string
	sizes    []int // batch sizes, in device order (default: one batch)
	policy   map[string]any
	newImage string        // default acme/app:2.0
	timeout  time.Duration // health deadline from dispatch (default 1h)
}

// rollout creates an in_progress rollout of acme/app over spec.devices, as the planner would, and
// dispatches batch 1 as the dispatcher would.
func (b *bundle) rollout(spec rolloutSpec) string {
	b.t.Helper()
	if spec.newImage == "" {
		spec.newImage = "acme/app:2.0"
	}
	if spec.sizes == nil {
		spec.sizes = []int{len(spec.devices)}
	}
	if spec.policy == nil {
		spec.policy = map[string]any{}
	}
	if spec.timeout == 0 {
		spec.timeout = time.Hour
	}
	spec.policy["health_check_timeout_seconds"] = int(spec.timeout.Seconds())
	pol, err := json.Marshal(spec.policy)
	require.NoError(b.t, err)
	var id string
	require.NoError(b.t, b.pool.QueryRow(b.ctx, `INSERT INTO image_rollouts (image_name, repository, old_tag, new_tag,
		new_image, strategy, status, total_batches, batch_sizes, total_devices, policy, started_at)
		VALUES ('acme/app', 'docker.io/acme/app', '1.0', '2.0', $1, 'staged', 'in_progress', $2, $3, $4, $5, now())
		RETURNING rollout_id::text`, spec.newImage, len(spec.sizes), spec.sizes, len(spec.devices), pol).Scan(&id))
	batches := make([]int, 0, len(spec.devices))
	for k, size := range spec.sizes {
		for range size {
			batches = append(batches, k+1)
		}
	}
	require.Len(b.t, batches, len(spec.devices))
	b.exec(`INSERT INTO device_rollout_status (rollout_id, device_uuid, batch_number, old_image_tag, new_image_tag,
			old_image, new_image)
		SELECT $1, u.d, u.b, i.tag, '2.0', i.image, $4
		FROM unnest($2::text[], $3::int[]) AS u(d, b)
		JOIN device_images i ON i.device_uuid = u.d AND i.repository = 'docker.io/acme/app'`,
		id, spec.devices, batches, spec.newImage)
	b.dispatch(id, 1)
	return id
}

// dispatch does what the dispatcher does for DispatchV1{id, k}: batch k's pending devices get the new
// image and become scheduled with a health deadline; current_batch = k.
// scheduleFrom moves the devices rows yields (device_uuid, apps) to newImage and marks their pending
// rows of rollout id scheduled with a health deadline timeout seconds away, as the dispatcher does; it
// returns how many it scheduled.
func (b *bundle) scheduleFrom(tx pgx.Tx, id string, rows pgx.Rows, newImage string, timeout int) int {
	b.t.Helper()
	var writes []target.Write
	for rows.Next() {
		var u string
		var apps target.Apps
		require.NoError(b.t, rows.Scan(&u, &apps))
		moved, _, _ := target.SetImage(apps, "docker.io/acme/app", newImage, nil)
		writes = append(writes, target.Write{DeviceUUID: u, Apps: moved})
	}
	require.NoError(b.t, rows.Err())
	written, err := target.Apply(b.ctx, tx, writes)
	require.NoError(b.t, err)
	uuids, versions := make([]string, len(written)), make([]int64, len(written))
	for i, w := range written {
		uuids[i], versions[i] = w.DeviceUUID, w.Version
	}
	_, err = tx.Exec(b.ctx, `UPDATE device_rollout_status s SET status = 'scheduled', scheduled_at = now(),
		target_version = u.v, health_deadline = now() + make_interval(secs => $3)
		FROM unnest($2::text[], $4::bigint[]) AS u(d, v)
		WHERE s.rollout_id = $1 AND s.device_uuid = u.d AND s.status = 'pending'`, id, uuids, timeout, versions)
	require.NoError(b.t, err)
	return len(uuids)
}

func (b *bundle) dispatch(id string, k int) {
	b.t.Helper()
	b.tx(func(tx pgx.Tx) {
		var newImage string
		var timeout int
		require.NoError(b.t, tx.QueryRow(b.ctx, `SELECT new_image, COALESCE((policy->>'health_check_timeout_seconds')::int, 300)
			FROM image_rollouts WHERE rollout_id = $1 FOR UPDATE`, id).Scan(&newImage, &timeout))
		rows, err := tx.Query(b.ctx, `SELECT s.device_uuid, t.apps FROM device_rollout_status s
			JOIN device_target_state t ON t.device_uuid = s.device_uuid
			WHERE s.rollout_id = $1 AND s.batch_number = $2 AND s.status = 'pending'`, id, k)
		require.NoError(b.t, err)
		b.scheduleFrom(tx, id, rows, newImage, timeout)
		_, err = tx.Exec(b.ctx, `UPDATE image_rollouts SET current_batch = greatest(current_batch, $2) WHERE rollout_id = $1`, id, k)
		require.NoError(b.t, err)
	})
}

// service starts a Service; it stops when the test ends or stop is called.
func (b *bundle) service() (s *Service, stop func()) {
	b.t.Helper()
	s = b.newService()
	require.NotNil(b.t, b.ns, "service needs NATS")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once bool
	stop = func() {
		if once {
			return
		}
		once = true
		cancel()
		require.NoError(b.t, <-done)
	}
	b.t.Cleanup(stop)
	return s, stop
}

func (b *bundle) newService() *Service {
	b.t.Helper()
	var js jetstream.JetStream
	if b.ns != nil {
		js = b.ns.JS
	} else {
		js = noJS{}
	}
	s, err := New(Config{Pool: b.pool, JS: js, Subjects: b.subj, Log: logging.Nop(),
		TickInterval: 50 * time.Millisecond, FetchWait: 50 * time.Millisecond})
	require.NoError(b.t, err)
	return s
}

// noJS stands in for JetStream in tests that call the service's steps directly.
type noJS struct{ jetstream.JetStream }

type svc struct {
	name, image, status, health string
}

func body(device string, svcs ...svc) []byte {
	list := make([]map[string]any, 0, len(svcs))
	for _, s := range svcs {
		m := map[string]any{"serviceName": s.name, "imageName": s.image, "status": s.status}
		if s.health != "" {
			m["health"] = map[string]any{"status": s.health}
		}
		list = append(list, m)
	}
	doc := map[string]any{device: map[string]any{"apps": map[string]any{"1": map[string]any{"appId": 1, "services": list}}}}
	out, err := json.Marshal(doc)
	if err != nil {
		panic(err)
	}
	return out
}

// web is a report of the web service on image with status and health, plus a running redis.
func web(device, image, status, health string) []byte {
	return body(device, svc{"web", image, status, health}, svc{"cache", "redis:7", "running", ""})
}

func decodeReport(t testing.TB, device string, raw []byte) report {
	t.Helper()
	var r map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(raw, &r))
	var rep streams.DeviceReport
	require.NoError(t, json.Unmarshal(r[device], &rep))
	return report{device: device, body: rep, raw: r[device], at: time.Now()}
}

func (b *bundle) publish(device string, raw []byte) {
	b.t.Helper()
	_, err := b.ns.JS.Publish(b.ctx, b.subj.DeviceState(device), raw)
	require.NoError(b.t, err)
}

func (b *bundle) apply(s *Service, device string, raw []byte) {
	b.t.Helper()
	require.NoError(b.t, s.applyReports(b.ctx, []report{decodeReport(b.t, device, raw)}))
}

func (b *bundle) status(id, device string) string {
	b.t.Helper()
	var st string
	require.NoError(b.t, b.pool.QueryRow(b.ctx, `SELECT status FROM device_rollout_status WHERE rollout_id = $1 AND device_uuid = $2`,
		id, device).Scan(&st))
	return st
}

func (b *bundle) rolloutStatus(id string) string {
	b.t.Helper()
	var st string
	require.NoError(b.t, b.pool.QueryRow(b.ctx, `SELECT status FROM image_rollouts WHERE rollout_id = $1`, id).Scan(&st))
	return st
}

// statuses counts device rows by status.
func (b *bundle) statuses(id string) map[string]int {
	b.t.Helper()
	rows, err := b.pool.Query(b.ctx, `SELECT status, count(*) FROM device_rollout_status WHERE rollout_id = $1 GROUP BY status`, id)
	require.NoError(b.t, err)
	out := map[string]int{}
	for rows.Next() {
		var s string
		var n int
		require.NoError(b.t, rows.Scan(&s, &n))
		out[s] = n
	}
	require.NoError(b.t, rows.Err())
	return out
}

// eventTypes lists the rollout's event types in order, optionally for one device.
func (b *bundle) eventTypes(id, device string) []string {
	b.t.Helper()
	rows, err := b.pool.Query(b.ctx, `SELECT event_type FROM rollout_events WHERE rollout_id = $1
		AND ($2 = '' OR device_uuid = $2) ORDER BY id`, id, device)
	require.NoError(b.t, err)
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(b.t, err)
	return out
}

func count(list []string, s string) int {
	n := 0
	for _, x := range list {
		if x == s {
			n++
		}
	}
	return n
}

// dispatchCommands lists the DispatchV1 commands waiting in the outbox for a rollout (msg id -> batch).
func (b *bundle) dispatchCommands(id string) map[string]int {
	b.t.Helper()
	rows, err := b.pool.Query(b.ctx, `SELECT msg_id, subject, payload FROM outbox WHERE subject = $1 ORDER BY seq`,
		b.subj.Command(streams.CommandDispatch, id))
	require.NoError(b.t, err)
	out := map[string]int{}
	n := 0
	for rows.Next() {
		var msgID, subject string
		var payload []byte
		require.NoError(b.t, rows.Scan(&msgID, &subject, &payload))
		var cmd streams.DispatchV1
		require.NoError(b.t, json.Unmarshal(payload, &cmd))
		require.Equal(b.t, id, cmd.RolloutID)
		out[msgID] = cmd.Batch
		n++
	}
	require.NoError(b.t, rows.Err())
	require.Equal(b.t, n, len(out), "duplicate dispatch command in the outbox")
	return out
}

// checkCounters fails unless the rollout's counters equal a full recount of its device rows.
func (b *bundle) checkCounters(id string) {
	b.t.Helper()
	var updated, failed, healthy, rolledBack, storedFailures, downloaded int
	var rate float64
	require.NoError(b.t, b.pool.QueryRow(b.ctx, `SELECT updated_devices, failed_devices, healthy_devices,
		rolled_back_devices, failures, failure_rate, downloaded_devices FROM image_rollouts WHERE rollout_id = $1`, id).
		Scan(&updated, &failed, &healthy, &rolledBack, &storedFailures, &rate, &downloaded))
	var wantCompleted, wantFailed, wantRB, failures, finished, wantDownloaded int
	require.NoError(b.t, b.pool.QueryRow(b.ctx, `SELECT
		count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status = 'failed'),
		count(*) FILTER (WHERE status = 'rolled_back'),
		count(*) FILTER (WHERE status = 'failed' OR (status = 'rolled_back' AND error_message IS NOT NULL)),
		count(*) FILTER (WHERE status IN ('completed', 'failed', 'rolled_back')),
		count(*) FILTER (WHERE downloaded_at IS NOT NULL)
		FROM device_rollout_status WHERE rollout_id = $1`, id).Scan(&wantCompleted, &wantFailed, &wantRB, &failures, &finished, &wantDownloaded))
	require.Equal(b.t, wantDownloaded, downloaded, "downloaded_devices")
	require.Equal(b.t, wantCompleted, updated, "updated_devices")
	require.Equal(b.t, wantCompleted, healthy, "healthy_devices")
	require.Equal(b.t, wantFailed, failed, "failed_devices")
	require.Equal(b.t, wantRB, rolledBack, "rolled_back_devices")
	require.Equal(b.t, failures, storedFailures, "failures")
	wantRate := 0.0
	if finished > 0 {
		wantRate = float64(failures) / float64(finished)
	}
	require.InDelta(b.t, wantRate, rate, 1e-9, "failure_rate")
}

// targetImage returns the web service image in a device's target and the target version.
func (b *bundle) targetImage(device string) (string, int64) {
	b.t.Helper()
	var img string
	var v int64
	require.NoError(b.t, b.pool.QueryRow(b.ctx, `SELECT t.apps->'1'->'services'->0->>'imageName', t.version
		FROM device_target_state t WHERE t.device_uuid = $1`, device).Scan(&img, &v))
	return img, v
}

func sorted(m map[string]int) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
