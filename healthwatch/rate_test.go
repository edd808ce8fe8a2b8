package healthwatch

import (
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/fleetshift/fleetshift/shared/logging"
	"github.com/fleetshift/fleetshift/streams"
)

// testClock is the injectable clock of the rate timer.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

// clockedService is a Service whose rate timer reads clock.
func (b *bundle) clockedService(clock *testClock) *Service {
	b.t.Helper()
	s, err := New(Config{Pool: b.pool, JS: noJS{}, Subjects: b.subj, Log: logging.Nop(), Now: clock.Now,
		TickInterval: 50 * time.Millisecond, FetchWait: 50 * time.Millisecond})
	require.NoError(b.t, err)
	return s
}

// rateRollout creates an in_progress rate rollout of acme/app over devs, as the planner would: one
// batch, every device pending, rate_per_minute = the base, no timer (due at once).
func (b *bundle) rateRollout(devs []string, policy map[string]any) string {
	b.t.Helper()
	policy["update_strategy"] = "rate"
	if _, ok := policy["health_check_timeout_seconds"]; !ok {
		policy["health_check_timeout_seconds"] = 3600
	}
	pol, err := json.Marshal(policy)
	require.NoError(b.t, err)
	var id string
	require.NoError(b.t, b.pool.QueryRow(b.ctx, `INSERT INTO image_rollouts (image_name, repository, old_tag, new_tag,
		new_image, strategy, status, total_batches, batch_sizes, total_devices, policy, rate_per_minute, started_at)
		VALUES ('acme/app', 'docker.io/acme/app', '1.0', '2.0', $1, 'rate', 'in_progress', 1, $2, $3, $4,
		        ($4::jsonb->>'rate_base_per_minute')::int, now())
		RETURNING rollout_id::text`, newImg, []int{len(devs)}, len(devs), pol).Scan(&id))
	b.exec(`INSERT INTO device_rollout_status (rollout_id, device_uuid, batch_number, old_image_tag, new_image_tag,
			old_image, new_image)
		SELECT $1, i.device_uuid, 1, i.tag, '2.0', i.image, $3
		FROM device_images i WHERE i.device_uuid = ANY($2) AND i.repository = 'docker.io/acme/app'`, id, devs, newImg)
	return id
}

// rateChunks does what the dispatcher does with the rate chunks waiting in the outbox (DispatchV1 with
// UpTo), in order, and removes them: while the rollout is in progress, pending devices (by uuid) get
// the new image and become scheduled until rate_dispatched reaches UpTo. It returns how many commands
// it found.
func (b *bundle) rateChunks(id string) int {
	b.t.Helper()
	rows, err := b.pool.Query(b.ctx, `DELETE FROM outbox WHERE subject = $1 RETURNING seq, payload`,
		b.subj.Command(streams.CommandDispatch, id))
	require.NoError(b.t, err)
	type cmd struct {
		seq     int64
		payload []byte
	}
	cmds, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (cmd, error) {
		var c cmd
		return c, r.Scan(&c.seq, &c.payload)
	})
	require.NoError(b.t, err)
	for i := range cmds {
		for j := i + 1; j < len(cmds); j++ {
			if cmds[j].seq < cmds[i].seq {
				cmds[i], cmds[j] = cmds[j], cmds[i]
			}
		}
	}
	for _, c := range cmds {
		var d streams.DispatchV1
		require.NoError(b.t, json.Unmarshal(c.payload, &d))
		require.Positive(b.t, d.UpTo, "a rate rollout is asked only for chunks")
		b.tx(func(tx pgx.Tx) {
			var status string
			var dispatched, timeout int
			require.NoError(b.t, tx.QueryRow(b.ctx, `SELECT status, rate_dispatched,
					COALESCE((policy->>'health_check_timeout_seconds')::int, 300)
				FROM image_rollouts WHERE rollout_id = $1 FOR UPDATE`, id).Scan(&status, &dispatched, &timeout))
			if status != rolloutInProgress || d.UpTo <= dispatched {
				return
			}
			rows, err := tx.Query(b.ctx, `SELECT s.device_uuid, t.apps FROM device_rollout_status s
				JOIN device_target_state t ON t.device_uuid = s.device_uuid
				WHERE s.rollout_id = $1 AND s.status = 'pending' ORDER BY s.device_uuid LIMIT $2`, id, d.UpTo-dispatched)
			require.NoError(b.t, err)
			n := b.scheduleFrom(tx, id, rows, newImg, timeout)
			_, err = tx.Exec(b.ctx, `UPDATE image_rollouts SET current_batch = 1, rate_dispatched = rate_dispatched + $2
				WHERE rollout_id = $1`, id, n)
			require.NoError(b.t, err)
		})
	}
	return len(cmds)
}

type pacing struct {
	rate, dispatched int
	next             *time.Time
}

func (b *bundle) rateState(id string) pacing {
	b.t.Helper()
	var st pacing
	require.NoError(b.t, b.pool.QueryRow(b.ctx, `SELECT rate_per_minute, rate_dispatched, next_batch_at FROM image_rollouts
		WHERE rollout_id = $1`, id).Scan(&st.rate, &st.dispatched, &st.next))
	return st
}

// rateRaises lists the rollout's image.rollout_rate_increased events as from->to pairs with their data.
func (b *bundle) rateRaises(id string) []map[string]any {
	b.t.Helper()
	rows, err := b.pool.Query(b.ctx, `SELECT data FROM rollout_events WHERE rollout_id = $1 AND event_type = $2 ORDER BY id`,
		id, streams.EventRolloutRateIncreased)
	require.NoError(b.t, err)
	out, err := pgx.CollectRows(rows, pgx.RowTo[map[string]any])
	require.NoError(b.t, err)
	return out
}

// rampStep is a clock instant (offset from the start) and the devices dispatched once the rate timer
// ran then.
type rampStep struct {
	at         time.Duration
	dispatched int
	rate       int
}

// The ramp of base 6/min, factor 2, threshold 6 notified, maximum 24 over 18 devices: one device every
// 10 s until 6 are out, then (12/min) every 5 s until 12, then (24/min) every 2.5 s; between due times
// nothing goes out.
var notifiedRamp = []rampStep{
	{0, 1, 6}, {5 * time.Second, 1, 6}, {10 * time.Second, 2, 6}, {20 * time.Second, 3, 6}, {30 * time.Second, 4, 6},
	{40 * time.Second, 5, 6}, {50 * time.Second, 6, 6}, {55 * time.Second, 6, 6}, {60 * time.Second, 7, 12},
	{62 * time.Second, 7, 12}, {65 * time.Second, 8, 12}, {70 * time.Second, 9, 12}, {75 * time.Second, 10, 12},
	{80 * time.Second, 11, 12}, {85 * time.Second, 12, 12}, {90 * time.Second, 13, 24}, {92500 * time.Millisecond, 14, 24},
	{95 * time.Second, 15, 24}, {97500 * time.Millisecond, 16, 24}, {100 * time.Second, 17, 24},
	{101 * time.Second, 17, 24}, {102500 * time.Millisecond, 18, 24},
}

// runRamp drives a notified ramp through notifiedRamp; with restartAt > 0 the Service is replaced by a
// new one (the same database, nothing carried over in memory) at that instant.
func runRamp(t *testing.T, restartAt time.Duration) {
	b := setup(t, false)
	devs := b.devices("ramp", 18, "fleet-ramp", oldImg)
	id := b.rateRollout(devs, map[string]any{"rate_base_per_minute": 6, "rate_increment_factor": 2,
		"rate_increase_criteria": "notified", "rate_increase_threshold": 6, "rate_maximum_per_minute": 24})
	start := time.Date(2030, 3, 1, 12, 0, 0, 0, time.UTC)
	clock := &testClock{t: start}
	s := b.clockedService(clock)
	for _, step := range notifiedRamp {
		if restartAt > 0 && step.at >= restartAt && s != nil {
			s = b.clockedService(clock)
			restartAt = 0
		}
		clock.Set(start.Add(step.at))
		_, err := s.paceRates(b.ctx)
		require.NoError(t, err)
		b.rateChunks(id)
		st := b.rateState(id)
		require.Equal(t, step.dispatched, st.dispatched, "devices dispatched at +%s", step.at)
		require.Equal(t, step.rate, st.rate, "rate at +%s", step.at)
	}
	raises := b.rateRaises(id)
	require.Len(t, raises, 2)
	require.EqualValues(t, 6, raises[0]["from"])
	require.EqualValues(t, 12, raises[0]["to"])
	require.EqualValues(t, 6, raises[0]["count"])
	require.Equal(t, "notified", raises[0]["criteria"])
	require.EqualValues(t, 12, raises[1]["from"])
	require.EqualValues(t, 24, raises[1]["to"])
	require.EqualValues(t, 12, raises[1]["count"])

	// Every device is out: the timer, once due, stops and asks for nothing more.
	clock.Set(start.Add(105 * time.Second))
	n, err := s.paceRates(b.ctx)
	require.NoError(t, err)
	require.Zero(t, n)
	require.Zero(t, b.rateChunks(id))
	require.Nil(t, b.rateState(id).next, "no timer once nothing is pending")
	n, err = s.paceRates(b.ctx)
	require.NoError(t, err)
	require.Zero(t, n)
	require.Equal(t, map[string]int{"scheduled": 18}, b.statuses(id))
}

// TestRateRampNotified: a rate rollout dispatches at its rate and raises it after every threshold of
// notified devices, up to its maximum, each raise an event; the timer stops when nothing is pending.
func TestRateRampNotified(t *testing.T) {
	t.Parallel()
	runRamp(t, 0)
}

// TestRateRampResumesAfterRestart: a new Service on the same database, started mid-ramp (after the
// first raise), continues exactly where the old one was: the pacing lives on the rollout row.
func TestRateRampResumesAfterRestart(t *testing.T) {
	t.Parallel()
	runRamp(t, 62*time.Second)
}

// TestRateRampSucceededWaitsForHealthyReports: with criteria succeeded, notified devices do not raise
// the rate; it rises at the first due time after threshold devices reported healthy.
func TestRateRampSucceededWaitsForHealthyReports(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	devs := b.devices("succ", 8, "fleet-succ", oldImg)
	id := b.rateRollout(devs, map[string]any{"rate_base_per_minute": 6, "rate_increase_criteria": "succeeded",
		"rate_increase_threshold": 2, "rate_maximum_per_minute": 24, "max_failure_rate": 1.0})
	start := time.Date(2030, 3, 1, 12, 0, 0, 0, time.UTC)
	clock := &testClock{t: start}
	s := b.clockedService(clock)
	tick := func(at time.Duration) pacing {
		t.Helper()
		clock.Set(start.Add(at))
		_, err := s.paceRates(b.ctx)
		require.NoError(t, err)
		b.rateChunks(id)
		return b.rateState(id)
	}
	tick(0)
	tick(10 * time.Second)
	st := tick(20 * time.Second)
	require.Equal(t, 3, st.dispatched)
	require.Equal(t, 6, st.rate, "3 notified, none succeeded: no raise")
	require.True(t, st.next.Equal(start.Add(30*time.Second)), "next chunk at the base rate: %v", st.next)
	require.Empty(t, b.rateRaises(id))

	// Two devices report healthy (succ-000 and succ-001 were dispatched first).
	b.apply(s, devs[0], web(devs[0], newImg, "running", "healthy"))
	require.Equal(t, 6, b.rateState(id).rate, "a report raises nothing by itself; the rate timer does")
	b.apply(s, devs[1], web(devs[1], newImg, "running", "healthy"))
	st = tick(30 * time.Second)
	require.Equal(t, 4, st.dispatched)
	require.Equal(t, 12, st.rate)
	require.True(t, st.next.Equal(start.Add(35*time.Second)), "next chunk at 12/min: %v", st.next)
	raises := b.rateRaises(id)
	require.Len(t, raises, 1)
	require.Equal(t, "succeeded", raises[0]["criteria"])
	require.EqualValues(t, 2, raises[0]["count"])
	require.EqualValues(t, 6, raises[0]["from"])
	require.EqualValues(t, 12, raises[0]["to"])
	st = tick(35 * time.Second)
	require.Equal(t, 5, st.dispatched)
	require.Equal(t, 12, st.rate, "no more successes: no more raises")
}

// TestPausedRateRolloutDispatchesNothing: failures above max_failure_rate (after min_sample_size) pause
// a rate rollout; paused, its timer asks for nothing however much time passes and the dispatcher would
// schedule nothing; resumed, it goes on at once at the rate it had.
func TestPausedRateRolloutDispatchesNothing(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	devs := b.devices("rp", 10, "fleet-rp", oldImg)
	id := b.rateRollout(devs, map[string]any{"rate_base_per_minute": 6, "rate_increase_criteria": "notified",
		"rate_increase_threshold": 2, "rate_maximum_per_minute": 60, "max_failure_rate": 0.2, "min_sample_size": 2})
	start := time.Date(2030, 3, 1, 12, 0, 0, 0, time.UTC)
	clock := &testClock{t: start}
	s := b.clockedService(clock)
	for _, at := range []time.Duration{0, 10 * time.Second, 20 * time.Second} {
		clock.Set(start.Add(at))
		_, err := s.paceRates(b.ctx)
		require.NoError(t, err)
		b.rateChunks(id)
	}
	st := b.rateState(id)
	require.Equal(t, 3, st.dispatched)
	require.Equal(t, 12, st.rate, "raised at 2 notified")

	b.apply(s, devs[0], web(devs[0], newImg, "exited", ""))
	require.Equal(t, rolloutInProgress, b.rolloutStatus(id), "below min_sample_size nothing pauses")
	b.apply(s, devs[1], web(devs[1], newImg, "running", "unhealthy"))
	require.Equal(t, rolloutPaused, b.rolloutStatus(id))
	require.Nil(t, b.rateState(id).next, "a pause stops the rate timer")

	// An hour passes: nothing is asked for, nothing moves.
	for _, at := range []time.Duration{25 * time.Second, time.Minute, time.Hour} {
		clock.Set(start.Add(at))
		n, err := s.paceRates(b.ctx)
		require.NoError(t, err)
		require.Zero(t, n)
		s.timersOnce(b.ctx)
	}
	require.Zero(t, b.rateChunks(id))
	st = b.rateState(id)
	require.Equal(t, 3, st.dispatched)
	require.Equal(t, 7, b.statuses(id)["pending"])

	// Resume (as the control API does): RequestDispatch asks the dispatcher for nothing (the rate timer
	// owns a rate rollout's dispatch), and the next tick goes on at once at 12/min.
	b.tx(func(tx pgx.Tx) {
		_, err := tx.Exec(b.ctx, `UPDATE image_rollouts SET status = 'in_progress', auto_paused = false, next_batch_at = NULL
			WHERE rollout_id = $1`, id)
		require.NoError(t, err)
		batch, err := RequestDispatch(b.ctx, tx, b.subj, id)
		require.NoError(t, err)
		require.Zero(t, batch)
	})
	require.Empty(t, b.dispatchCommands(id))
	clock.Set(start.Add(time.Hour + time.Second))
	n, err := s.paceRates(b.ctx)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	b.rateChunks(id)
	st = b.rateState(id)
	require.Equal(t, 4, st.dispatched)
	require.Equal(t, 12, st.rate, "the rate it had when it paused")
	require.True(t, st.next.Equal(start.Add(time.Hour+6*time.Second)), "next chunk at 12/min: %v", st.next)
	// The ramp goes on from where it was: 4 notified, 2 since the last raise: 24/min.
	clock.Set(start.Add(time.Hour + 6*time.Second))
	_, err = s.paceRates(b.ctx)
	require.NoError(t, err)
	b.rateChunks(id)
	st = b.rateState(id)
	require.Equal(t, 5, st.dispatched)
	require.Equal(t, 24, st.rate)
}
