package healthwatch

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/command"
	"github.com/fleetshift/fleetshift/shared/wait"
	"github.com/fleetshift/fleetshift/streams"
)

const (
	oldImg = "acme/app:1.0"
	newImg = "acme/app:2.0"
)

func TestReportsDriveTransitionsThroughJetStream(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	devs := b.devices("tr", 4, "fleet-a", oldImg)
	id := b.rollout(rolloutSpec{devices: devs, policy: map[string]any{"max_failure_rate": 1.0}})
	b.service()

	until := func(device, want string) {
		t.Helper()
		wait.For(t, 10*time.Second, func() error {
			if got := b.status(id, device); got != want {
				return fmt.Errorf("%s is %s, want %s", device, got, want)
			}
			return nil
		})
	}
	// d0: pulling -> updating -> health_checking -> completed.
	b.publish(devs[0], web(devs[0], newImg, "downloading", ""))
	until(devs[0], statusUpdating)
	b.publish(devs[0], web(devs[0], newImg, "running", "starting"))
	until(devs[0], statusHealthChecking)
	b.publish(devs[0], web(devs[0], newImg, "running", "healthy"))
	until(devs[0], statusCompleted)
	// Out of order and duplicates change nothing.
	b.publish(devs[0], web(devs[0], oldImg, "running", ""))
	b.publish(devs[0], web(devs[0], newImg, "exited", ""))
	b.publish(devs[0], web(devs[0], newImg, "running", "healthy"))
	// d1: unhealthy -> failed; a later healthy report does not revive it.
	b.publish(devs[1], web(devs[1], newImg, "running", "unhealthy"))
	until(devs[1], statusFailed)
	b.publish(devs[1], web(devs[1], newImg, "running", "healthy"))
	// d2: exited -> failed. d3: a report in another device's name is ignored.
	b.publish(devs[2], web(devs[2], newImg, "exited", ""))
	until(devs[2], statusFailed)
	b.publish(devs[3], web(devs[0], newImg, "running", "healthy"))
	// A marker: once d3 updates, every earlier report has been applied (one consumer, in order).
	b.publish(devs[3], web(devs[3], newImg, "running", "starting"))
	until(devs[3], statusHealthChecking)

	require.Equal(t, statusCompleted, b.status(id, devs[0]))
	require.Equal(t, statusFailed, b.status(id, devs[1]))
	require.Equal(t, []string{streams.EventDeviceUpdated, streams.EventHealthPassed}, b.eventTypes(id, devs[0]))
	require.Equal(t, []string{streams.EventHealthFailed, streams.EventDeviceFailed}, b.eventTypes(id, devs[1]))
	require.Equal(t, []string{streams.EventDeviceFailed}, b.eventTypes(id, devs[2]))
	require.Equal(t, []string{streams.EventDeviceUpdated}, b.eventTypes(id, devs[3]))
	var msg string
	require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT error_message FROM device_rollout_status WHERE rollout_id = $1 AND device_uuid = $2`,
		id, devs[2]).Scan(&msg))
	require.Contains(t, msg, "exited")
	b.checkCounters(id)
	var updated, failed int
	require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT updated_devices, failed_devices FROM active_rollouts WHERE rollout_id = $1`, id).
		Scan(&updated, &failed))
	require.Equal(t, []int{1, 2}, []int{updated, failed})
	// Every event is also in the outbox for the EVENTS stream.
	var outboxEvents int
	require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT count(*) FROM outbox WHERE subject LIKE $1`, "fleet.events.%."+id).Scan(&outboxEvents))
	require.Equal(t, len(b.eventTypes(id, "")), outboxEvents)
}

// TestCountersInvariantRandomized applies a randomized stream of duplicated, reordered and stale reports,
// with timers and dispatches in between, and checks after every step that the counters equal the device
// rows and that no device ever leaves a terminal status except failed -> rolled_back.
func TestCountersInvariantRandomized(t *testing.T) {
	t.Parallel()
	for seed := uint64(1); seed <= 3; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Parallel()
			b := setup(t, false)
			rng := rand.New(rand.NewPCG(seed, 42))
			devs := b.devices(fmt.Sprintf("rnd%d", seed), 24, "fleet-r", oldImg)
			pol := map[string]any{"batch_delay_seconds": 0, "max_failure_rate": 0.4, "min_sample_size": 6,
				"auto_rollback_enabled": seed%2 == 1, "health_check_enabled": seed != 3}
			id := b.rollout(rolloutSpec{devices: devs, sizes: []int{4, 8, 12}, policy: pol})
			s := b.newService()
			kinds := [][3]string{
				{oldImg, "running", ""}, {newImg, "downloading", ""}, {oldImg, "exited", ""},
				{newImg, "running", "starting"}, {newImg, "running", ""}, {newImg, "running", "healthy"},
				{newImg, "running", "healthy"}, {newImg, "running", "healthy"}, {newImg, "running", "unhealthy"},
				{newImg, "exited", ""},
			}
			last := map[string]string{}
			for step := range 400 {
				switch r := rng.IntN(20); {
				case r == 0:
					_, err := s.sweep(b.ctx)
					require.NoError(t, err)
				case r == 1:
					_, err := s.startDueBatches(b.ctx)
					require.NoError(t, err)
					for _, batch := range b.dispatchCommands(id) {
						b.dispatch(id, batch)
					}
				default:
					n := 1 + rng.IntN(6)
					reps := make([]report, 0, n)
					for range n {
						d := devs[rng.IntN(len(devs))]
						k := kinds[rng.IntN(len(kinds))]
						reps = append(reps, decodeReport(t, d, web(d, k[0], k[1], k[2])))
					}
					require.NoError(t, s.applyReports(b.ctx, reps))
				}
				b.checkCounters(id)
				rows, err := b.pool.Query(b.ctx, `SELECT device_uuid, status FROM device_rollout_status WHERE rollout_id = $1`, id)
				require.NoError(t, err)
				now, err := pgx.CollectRows(rows, pgx.RowToStructByPos[struct{ D, S string }])
				require.NoError(t, err)
				for _, r := range now {
					d, st := r.D, r.S
					if prev := last[d]; prev != "" && rank(prev) == rank(statusCompleted) && prev != st {
						require.True(t, prev == statusFailed && st == statusRolledBack, "step %d: %s went %s -> %s", step, d, prev, st)
					}
					if prev := last[d]; st != prev && prev != "" {
						require.GreaterOrEqual(t, rank(st), rank(prev), "step %d: %s went back %s -> %s", step, d, prev, st)
					}
					last[d] = st
				}
			}
			t.Logf("rollout %s, devices %v, events %d", b.rolloutStatus(id), b.statuses(id), len(b.eventTypes(id, "")))
			// Each device reported its transitions once: at most one device_updated and one terminal event.
			for _, d := range devs {
				evs := b.eventTypes(id, d)
				require.LessOrEqual(t, count(evs, streams.EventDeviceUpdated), 1, d)
				require.LessOrEqual(t, count(evs, streams.EventDeviceFailed), 1, d)
				require.LessOrEqual(t, count(evs, streams.EventHealthPassed), 1, d)
			}
		})
	}
}

func TestBatchCompletionStartsNextBatchAfterDelay(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	devs := b.devices("bd", 4, "fleet-bd", oldImg)
	b.exec(`INSERT INTO fleet_target_state (fleet_id, apps) VALUES ('fleet-bd', $1), ('fleet-other', $1)`, appsFor(oldImg))
	id := b.rollout(rolloutSpec{devices: devs, sizes: []int{2, 2},
		policy: map[string]any{"batch_delay_minutes": 60, "batch_delay_seconds": 1}})
	b.service()

	for _, d := range devs[:2] {
		b.publish(d, web(d, newImg, "running", "healthy"))
	}
	wait.For(t, 10*time.Second, func() error {
		if n := count(b.eventTypes(id, ""), streams.EventBatchCompleted); n != 1 {
			return fmt.Errorf("%d batch_completed events", n)
		}
		return nil
	})
	var delay float64
	require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT extract(epoch FROM next_batch_at - updated_at) FROM image_rollouts
		WHERE rollout_id = $1`, id).Scan(&delay))
	require.InDelta(t, 1.0, delay, 0.2, "batch_delay_seconds wins over batch_delay_minutes")
	require.Empty(t, b.dispatchCommands(id), "the next batch waits for its delay")

	wait.For(t, 10*time.Second, func() error {
		if cmds := b.dispatchCommands(id); cmds[nextBatchID(id, 2)] != 2 {
			return fmt.Errorf("commands %v", cmds)
		}
		return nil
	})
	var nextAt *time.Time
	require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT next_batch_at FROM image_rollouts WHERE rollout_id = $1`, id).Scan(&nextAt))
	require.Nil(t, nextAt, "the timer is cleared when the command is written")

	b.dispatch(id, 2)
	for _, d := range devs[2:] {
		b.publish(d, web(d, newImg, "running", "healthy"))
	}
	wait.For(t, 10*time.Second, func() error {
		if st := b.rolloutStatus(id); st != rolloutCompleted {
			return fmt.Errorf("rollout is %s", st)
		}
		return nil
	})
	require.Len(t, b.dispatchCommands(id), 1, "no command after the last batch")
	evs := b.eventTypes(id, "")
	require.Equal(t, 2, count(evs, streams.EventBatchCompleted))
	require.Equal(t, streams.EventRolloutCompleted, evs[len(evs)-1])
	b.checkCounters(id)
	var completedAt *time.Time
	require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT completed_at FROM image_rollouts WHERE rollout_id = $1`, id).Scan(&completedAt))
	require.NotNil(t, completedAt)
	// The covered fleet's default moved to the new image; another fleet's did not.
	var covered, other string
	var version int64
	require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT apps->'1'->'services'->0->>'imageName', version FROM fleet_target_state
		WHERE fleet_id = 'fleet-bd'`).Scan(&covered, &version))
	require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT apps->'1'->'services'->0->>'imageName' FROM fleet_target_state
		WHERE fleet_id = 'fleet-other'`).Scan(&other))
	require.Equal(t, newImg, covered)
	require.Equal(t, int64(2), version)
	require.Equal(t, oldImg, other)
}

func TestPauseAboveFailureRateStopsDispatch(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	devs := b.devices("pz", 10, "fleet-p", oldImg)
	id := b.rollout(rolloutSpec{devices: devs, sizes: []int{5, 5},
		policy: map[string]any{"max_failure_rate": 0.2, "min_sample_size": 3, "batch_delay_seconds": 0}})
	s := b.newService()

	b.apply(s, devs[0], web(devs[0], newImg, "exited", ""))
	b.apply(s, devs[1], web(devs[1], newImg, "running", "unhealthy"))
	require.Equal(t, rolloutInProgress, b.rolloutStatus(id), "below min_sample_size nothing pauses")
	b.apply(s, devs[2], web(devs[2], newImg, "running", "healthy"))
	require.Equal(t, rolloutPaused, b.rolloutStatus(id))
	var autoPaused bool
	require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT auto_paused FROM image_rollouts WHERE rollout_id = $1`, id).Scan(&autoPaused))
	require.True(t, autoPaused)
	var data map[string]any
	require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT data FROM rollout_events WHERE rollout_id = $1 AND event_type = $2`,
		id, streams.EventRolloutPaused).Scan(&data))
	require.InDelta(t, 2.0/3.0, data["failure_rate"], 1e-9)
	require.EqualValues(t, 2, data["failed_devices"])
	require.EqualValues(t, 3, data["finished_devices"])
	require.EqualValues(t, 0.2, data["max_failure_rate"])

	// The rest of batch 1 finishes: the batch completes, but no next batch is ever requested.
	for _, d := range devs[3:5] {
		b.apply(s, d, web(d, newImg, "running", "healthy"))
	}
	require.Equal(t, 1, count(b.eventTypes(id, ""), streams.EventBatchCompleted))
	for range 3 {
		s.timersOnce(b.ctx)
	}
	require.Empty(t, b.dispatchCommands(id))
	require.Equal(t, map[string]int{statusCompleted: 3, statusFailed: 2, statusPending: 5}, b.statuses(id))
	for _, d := range devs[5:] {
		img, _ := b.targetImage(d)
		require.Equal(t, oldImg, img, "no batch-2 device gets the new image")
	}
	// Without auto rollback, failed devices keep their target.
	img, _ := b.targetImage(devs[0])
	require.Equal(t, newImg, img)
	b.checkCounters(id)
}

func TestAutoRollbackRestoresEachDevicesOldImage(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	a := b.devices("ar-a", 3, "fleet-ar", "acme/app:1.0")
	c := b.devices("ar-c", 3, "fleet-ar", "acme/app:1.1")
	devs := append(append([]string{}, a...), c...)
	id := b.rollout(rolloutSpec{devices: devs, sizes: []int{4, 2},
		policy: map[string]any{"max_failure_rate": 0.2, "min_sample_size": 2, "auto_rollback_enabled": true}})
	s := b.newService()
	_, v0 := b.targetImage(a[0])

	b.apply(s, a[0], web(a[0], newImg, "exited", ""))
	b.apply(s, c[0], web(c[0], newImg, "running", "unhealthy"))
	require.Equal(t, rolloutPaused, b.rolloutStatus(id))
	require.Equal(t, statusRolledBack, b.status(id, a[0]))
	require.Equal(t, statusRolledBack, b.status(id, c[0]))
	imgA, vA := b.targetImage(a[0])
	imgC, _ := b.targetImage(c[0])
	require.Equal(t, "acme/app:1.0", imgA, "each device gets its own old image")
	require.Equal(t, "acme/app:1.1", imgC)
	require.Equal(t, v0+1, vA)
	// The other service of the target is untouched, and the device is told through the outbox.
	var cache string
	require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT apps->'1'->'services'->1->>'imageName' FROM device_target_state
		WHERE device_uuid = $1`, a[0]).Scan(&cache))
	require.Equal(t, "redis:7", cache)
	var payload []byte
	require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT payload FROM outbox WHERE msg_id = $1 AND subject LIKE '%.' || $2`,
		fmt.Sprintf("%s-%d", a[0], vA), b.subj.DeviceTarget(a[0])).Scan(&payload), "an ordered notification (target.Save)")
	var msg streams.TargetV1
	require.NoError(t, json.Unmarshal(payload, &msg))
	require.Equal(t, vA, msg[a[0]].Version)
	require.Contains(t, string(msg[a[0]].Apps), "acme/app:1.0")
	evs := b.eventTypes(id, "")
	require.Equal(t, 2, count(evs, streams.EventDeviceRolledBack))
	require.Equal(t, 1, count(evs, streams.EventRolloutPaused))

	// A device of the paused batch failing later is rolled back too; healthy ones stay.
	b.apply(s, a[1], web(a[1], newImg, "running", "healthy"))
	b.apply(s, a[2], web(a[2], newImg, "exited", ""))
	require.Equal(t, statusRolledBack, b.status(id, a[2]))
	require.Equal(t, statusCompleted, b.status(id, a[1]))
	img, _ := b.targetImage(a[1])
	require.Equal(t, newImg, img)
	b.checkCounters(id)
	var rate float64
	var rb int
	require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT failure_rate, rolled_back_devices FROM image_rollouts WHERE rollout_id = $1`, id).
		Scan(&rate, &rb))
	require.Equal(t, 3, rb)
	require.InDelta(t, 0.75, rate, 1e-9, "rolled-back failures still count as failures")
	for _, d := range c[1:] {
		img, _ := b.targetImage(d)
		require.Equal(t, "acme/app:1.1", img, "batch 2 never dispatched")
	}
	require.Empty(t, b.dispatchCommands(id))
}

func TestHealthTimeoutFailsSilentDevices(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	devs := b.devices("ht", 3, "fleet-h", oldImg)
	id := b.rollout(rolloutSpec{devices: devs, timeout: 2 * time.Second, policy: map[string]any{"max_failure_rate": 1.0}})
	b.service()
	b.publish(devs[0], web(devs[0], newImg, "running", "healthy"))
	b.publish(devs[1], web(devs[1], newImg, "running", "starting"))
	wait.For(t, 10*time.Second, func() error {
		if st := b.rolloutStatus(id); st != rolloutCompleted {
			return fmt.Errorf("rollout %s, devices %v", st, b.statuses(id))
		}
		return nil
	})
	require.Equal(t, statusCompleted, b.status(id, devs[0]))
	require.Equal(t, statusFailed, b.status(id, devs[1]))
	require.Equal(t, statusFailed, b.status(id, devs[2]))
	var msg string
	require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT error_message FROM device_rollout_status WHERE rollout_id = $1 AND device_uuid = $2`,
		id, devs[2]).Scan(&msg))
	require.Equal(t, "health check timeout", msg)
	require.Equal(t, []string{streams.EventDeviceUpdated, streams.EventHealthFailed, streams.EventDeviceFailed}, b.eventTypes(id, devs[1]))
	require.Equal(t, []string{streams.EventDeviceFailed}, b.eventTypes(id, devs[2]))
	// A late healthy report changes nothing.
	s := b.newService()
	b.apply(s, devs[2], web(devs[2], newImg, "running", "healthy"))
	require.Equal(t, statusFailed, b.status(id, devs[2]))
	b.checkCounters(id)
}

func TestTwoReplicasShareTheWork(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	devs := b.devices("rep", 200, "fleet-rep", oldImg)
	id := b.rollout(rolloutSpec{devices: devs, sizes: []int{100, 100}, policy: map[string]any{"batch_delay_seconds": 0}})
	b.service()
	b.service()
	report := func(batch []string) {
		for _, d := range batch {
			b.publish(d, web(d, newImg, "running", "starting"))
			b.publish(d, web(d, newImg, "running", "healthy"))
			b.publish(d, web(d, newImg, "running", "healthy"))
		}
	}
	report(devs[:100])
	wait.For(t, 20*time.Second, func() error {
		if cmds := b.dispatchCommands(id); len(cmds) != 1 {
			return fmt.Errorf("commands %v, devices %v", cmds, b.statuses(id))
		}
		return nil
	})
	b.dispatch(id, 2)
	report(devs[100:])
	wait.For(t, 20*time.Second, func() error {
		if st := b.rolloutStatus(id); st != rolloutCompleted {
			return fmt.Errorf("rollout %s, devices %v", st, b.statuses(id))
		}
		return nil
	})
	evs := b.eventTypes(id, "")
	require.Equal(t, 200, count(evs, streams.EventDeviceUpdated), "each device updated once")
	require.Equal(t, 200, count(evs, streams.EventHealthPassed))
	require.Equal(t, 2, count(evs, streams.EventBatchCompleted))
	require.Equal(t, 1, count(evs, streams.EventRolloutCompleted))
	require.Len(t, b.dispatchCommands(id), 1)
	b.checkCounters(id)
}

func TestRestartDuringBatchDelayRequestsNextBatchOnce(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	devs := b.devices("rs", 4, "fleet-rs", oldImg)
	id := b.rollout(rolloutSpec{devices: devs, sizes: []int{2, 2}, policy: map[string]any{"batch_delay_seconds": 2}})
	_, stop := b.service()
	for _, d := range devs[:2] {
		b.publish(d, web(d, newImg, "running", "healthy"))
	}
	wait.For(t, 10*time.Second, func() error {
		var pending bool
		if err := b.pool.QueryRow(b.ctx, `SELECT next_batch_at IS NOT NULL FROM image_rollouts WHERE rollout_id = $1`, id).Scan(&pending); err != nil {
			return err
		}
		if !pending {
			return errors.New("no timer yet")
		}
		return nil
	})
	stop() // the process dies during the batch delay
	require.Empty(t, b.dispatchCommands(id))

	s2, _ := b.service()
	wait.For(t, 10*time.Second, func() error {
		if cmds := b.dispatchCommands(id); len(cmds) != 1 || cmds[nextBatchID(id, 2)] != 2 {
			return fmt.Errorf("commands %v", cmds)
		}
		return nil
	})
	for range 3 {
		s2.timersOnce(b.ctx)
	}
	require.Len(t, b.dispatchCommands(id), 1, "the next batch is requested exactly once")
	require.Equal(t, 1, count(b.eventTypes(id, ""), streams.EventBatchCompleted))
}

func TestBatchApprovalWaits(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	devs := b.devices("ap", 2, "fleet-ap", oldImg)
	id := b.rollout(rolloutSpec{devices: devs, sizes: []int{1, 1}, policy: map[string]any{"batch_approval": true}})
	s := b.newService()
	b.apply(s, devs[0], web(devs[0], newImg, "running", "healthy"))
	require.Equal(t, rolloutAwaitingApproval, b.rolloutStatus(id))
	s.timersOnce(b.ctx)
	require.Empty(t, b.dispatchCommands(id))
	// Approval (the operator API) sets in_progress; the sweep then requests the next batch at once.
	b.exec(`UPDATE image_rollouts SET status = 'in_progress' WHERE rollout_id = $1`, id)
	s.timersOnce(b.ctx)
	s.timersOnce(b.ctx)
	require.Equal(t, map[string]int{nextBatchID(id, 2): 2}, b.dispatchCommands(id))
}

func TestEmptiedBatchesDoNotStall(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	devs := b.devices("em", 4, "fleet-em", oldImg)
	id := b.rollout(rolloutSpec{devices: devs, sizes: []int{2, 2}, policy: map[string]any{"batch_delay_seconds": 0}})
	s := b.newService()
	// Supersede (or the dispatcher) skipped all of batch 1: the sweep completes it and requests batch 2.
	b.exec(`UPDATE device_rollout_status SET status = 'skipped' WHERE rollout_id = $1 AND batch_number = 1`, id)
	s.timersOnce(b.ctx)
	s.timersOnce(b.ctx)
	require.Equal(t, map[string]int{nextBatchID(id, 2): 2}, b.dispatchCommands(id))
	// Batch 2 emptied as well: after its dispatch the rollout completes by itself.
	b.exec(`UPDATE device_rollout_status SET status = 'skipped' WHERE rollout_id = $1 AND batch_number = 2`, id)
	b.dispatch(id, 2)
	s.timersOnce(b.ctx)
	require.Equal(t, rolloutCompleted, b.rolloutStatus(id))
	require.Equal(t, 2, count(b.eventTypes(id, ""), streams.EventBatchCompleted))
}

func TestRollbackAll(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	devs := b.devices("ra", 6, "fleet-ra", oldImg)
	b.exec(`INSERT INTO fleet_target_state (fleet_id, apps) VALUES ('fleet-ra', $1)`, appsFor(oldImg))
	id := b.rollout(rolloutSpec{devices: devs, sizes: []int{4, 2}, policy: map[string]any{"max_failure_rate": 1.0}})
	s := b.newService()
	b.apply(s, devs[0], web(devs[0], newImg, "running", "healthy"))
	b.apply(s, devs[1], web(devs[1], newImg, "exited", ""))
	b.apply(s, devs[2], web(devs[2], newImg, "downloading", ""))
	// devs[3] stays scheduled; devs[4:] were never dispatched.
	_, pendingVersion := b.targetImage(devs[4])

	require.NoError(t, RollbackAll(b.ctx, b.pool, b.subj, id, "token:ops"))
	require.Equal(t, rolloutRolledBack, b.rolloutStatus(id))
	require.Equal(t, map[string]int{statusRolledBack: 4, statusSkipped: 2}, b.statuses(id))
	for _, d := range devs[:4] {
		img, _ := b.targetImage(d)
		require.Equal(t, oldImg, img, d)
	}
	img, v := b.targetImage(devs[4])
	require.Equal(t, oldImg, img)
	require.Equal(t, pendingVersion, v, "a never-dispatched device's target is untouched")
	evs := b.eventTypes(id, "")
	require.Equal(t, 4, count(evs, streams.EventDeviceRolledBack))
	require.Equal(t, EventRolloutRolledBack, evs[len(evs)-1])
	var actor string
	require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT actor FROM rollout_events WHERE rollout_id = $1 AND event_type = $2`,
		id, EventRolloutRolledBack).Scan(&actor))
	require.Equal(t, "token:ops", actor)
	b.checkCounters(id)

	// Idempotent.
	require.NoError(t, RollbackAll(b.ctx, b.pool, b.subj, id, "token:ops"))
	require.Len(t, b.eventTypes(id, ""), len(evs))
	// Errors.
	err := RollbackAll(b.ctx, b.pool, b.subj, "9b0e4a3c-0000-4000-8000-000000000000", "x")
	require.ErrorIs(t, err, apierr.ErrNotFound)
	require.ErrorIs(t, RollbackAll(b.ctx, b.pool, b.subj, "not-a-uuid", "x"), apierr.ErrNotFound)
	other := b.rollout(rolloutSpec{devices: b.devices("rb2", 1, "", oldImg)})
	b.exec(`UPDATE image_rollouts SET status = 'superseded' WHERE rollout_id = $1`, other)
	require.ErrorIs(t, RollbackAll(b.ctx, b.pool, b.subj, other, "x"), apierr.ErrConflict)
}

func TestRollbackAllOfCompletedRolloutRestoresFleetDefault(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	devs := b.devices("rc", 2, "fleet-rc", oldImg)
	b.exec(`INSERT INTO fleet_target_state (fleet_id, apps) VALUES ('fleet-rc', $1)`, appsFor(oldImg))
	id := b.rollout(rolloutSpec{devices: devs})
	s := b.newService()
	for _, d := range devs {
		b.apply(s, d, web(d, newImg, "running", "healthy"))
	}
	require.Equal(t, rolloutCompleted, b.rolloutStatus(id))
	fleetImage := func() string {
		var img string
		require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT apps->'1'->'services'->0->>'imageName' FROM fleet_target_state
			WHERE fleet_id = 'fleet-rc'`).Scan(&img))
		return img
	}
	require.Equal(t, newImg, fleetImage())
	require.NoError(t, RollbackAll(b.ctx, b.pool, b.subj, id, "ops"))
	require.Equal(t, map[string]int{statusRolledBack: 2}, b.statuses(id))
	require.Equal(t, oldImg, fleetImage())
}

func TestRollbackDevice(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	devs := b.devices("rd", 4, "fleet-rd", oldImg)
	id := b.rollout(rolloutSpec{devices: devs, sizes: []int{2, 2}, policy: map[string]any{"batch_delay_seconds": 0}})
	s := b.newService()
	b.apply(s, devs[0], web(devs[0], newImg, "running", "healthy"))

	// devs[1] is the last open device of batch 1: rolling it back completes the batch.
	require.NoError(t, RollbackDevice(b.ctx, b.pool, b.subj, id, devs[1], "ops"))
	require.Equal(t, statusRolledBack, b.status(id, devs[1]))
	img, _ := b.targetImage(devs[1])
	require.Equal(t, oldImg, img)
	img, _ = b.targetImage(devs[0])
	require.Equal(t, newImg, img, "other devices untouched")
	require.Equal(t, 1, count(b.eventTypes(id, ""), streams.EventBatchCompleted))
	s.timersOnce(b.ctx)
	require.Len(t, b.dispatchCommands(id), 1)

	// Idempotent; a pending device becomes skipped; errors.
	require.NoError(t, RollbackDevice(b.ctx, b.pool, b.subj, id, devs[1], "ops"))
	require.Equal(t, 1, count(b.eventTypes(id, devs[1]), streams.EventDeviceRolledBack))
	require.NoError(t, RollbackDevice(b.ctx, b.pool, b.subj, id, devs[3], "ops"))
	require.Equal(t, statusSkipped, b.status(id, devs[3]))
	require.ErrorIs(t, RollbackDevice(b.ctx, b.pool, b.subj, id, "nope", "ops"), apierr.ErrNotFound)
	require.ErrorIs(t, RollbackDevice(b.ctx, b.pool, b.subj, "9b0e4a3c-0000-4000-8000-000000000000", devs[0], "ops"), apierr.ErrNotFound)
	b.checkCounters(id)
}

func TestResumeAfterAutoPauseIsOverruledOnlyByNewFailures(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	devs := b.devices("rz", 6, "fleet-rz", oldImg)
	id := b.rollout(rolloutSpec{devices: devs, sizes: []int{2, 4},
		policy: map[string]any{"max_failure_rate": 0.2, "min_sample_size": 1, "batch_delay_seconds": 0}})
	s := b.newService()
	b.apply(s, devs[0], web(devs[0], newImg, "exited", ""))
	require.Equal(t, rolloutPaused, b.rolloutStatus(id))
	b.apply(s, devs[1], web(devs[1], newImg, "running", "healthy"))
	require.Equal(t, 1, count(b.eventTypes(id, ""), streams.EventBatchCompleted), "a batch completes while paused")
	s.timersOnce(b.ctx)
	require.Empty(t, b.dispatchCommands(id))

	// The operator resumes (the control API sets in_progress): the next batch is requested, not re-paused.
	b.exec(`UPDATE image_rollouts SET status = 'in_progress', auto_paused = false WHERE rollout_id = $1`, id)
	s.timersOnce(b.ctx)
	s.timersOnce(b.ctx)
	require.Equal(t, rolloutInProgress, b.rolloutStatus(id))
	require.Equal(t, map[string]int{nextBatchID(id, 2): 2}, b.dispatchCommands(id))
	b.dispatch(id, 2)
	b.apply(s, devs[2], web(devs[2], newImg, "running", "healthy"))
	require.Equal(t, rolloutInProgress, b.rolloutStatus(id), "a success does not re-pause")
	b.apply(s, devs[3], web(devs[3], newImg, "exited", ""))
	require.Equal(t, rolloutPaused, b.rolloutStatus(id), "a new failure above the threshold does")
	require.Equal(t, 2, count(b.eventTypes(id, ""), streams.EventRolloutPaused))
}

func TestLostDispatchIsRepeated(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	devs := b.devices("ld", 2, "fleet-ld", oldImg)
	id := b.rollout(rolloutSpec{devices: devs, sizes: []int{1, 1}})
	s := b.newService()
	// Batch 2 was requested long ago but the dispatcher dropped the command (the rollout was paused then).
	b.exec(`UPDATE device_rollout_status SET status = 'completed' WHERE rollout_id = $1 AND batch_number = 1`, id)
	b.exec(`UPDATE image_rollouts SET completed_batch = 1, requested_batch = 2, requested_at = now() - interval '2 minutes'
		WHERE rollout_id = $1`, id)
	s.timersOnce(b.ctx)
	cmds := b.dispatchCommands(id)
	require.Len(t, cmds, 1)
	for msgID, batch := range cmds {
		require.Equal(t, 2, batch)
		require.Contains(t, msgID, command.Dispatch{RolloutID: id, Batch: 2, Purpose: command.Retry}.MsgID()+"-")
	}
	s.timersOnce(b.ctx)
	require.Len(t, b.dispatchCommands(id), 1, "repeated at most once per DispatchRetryAfter")
}

func TestReportsAreStoredAsCurrentStateNewestWins(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	devs := b.devices("cs", 2, "fleet-cs", oldImg)
	b.service()
	b.publish(devs[0], web(devs[0], oldImg, "running", "healthy"))
	b.publish(devs[0], web(devs[0], newImg, "downloading", ""))
	wait.For(t, 10*time.Second, func() error {
		var img string
		var online bool
		err := b.pool.QueryRow(b.ctx, `SELECT c.apps->'1'->'services'->0->>'imageName', d.is_online
			FROM device_current_state c JOIN devices d ON d.uuid = c.device_uuid WHERE c.device_uuid = $1`, devs[0]).Scan(&img, &online)
		if err != nil {
			return err
		}
		if img != newImg || !online {
			return fmt.Errorf("current state %s online %v", img, online)
		}
		return nil
	})
	// An older report (a redelivery, another replica) never replaces a newer one.
	s := b.newService()
	stale := decodeReport(t, devs[0], web(devs[0], oldImg, "running", ""))
	stale.at = time.Now().Add(-time.Hour)
	require.NoError(t, s.applyReports(b.ctx, []report{stale}))
	var img string
	require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT apps->'1'->'services'->0->>'imageName' FROM device_current_state
		WHERE device_uuid = $1`, devs[0]).Scan(&img))
	require.Equal(t, newImg, img)
	// A report of an unknown device is dropped quietly.
	require.NoError(t, s.applyReports(b.ctx, []report{decodeReport(t, "ghost", web("ghost", newImg, "running", ""))}))
}

// nextBatchID is the message id of the request for batch after a completed one (command.Next).
func nextBatchID(rolloutID string, batch int) string {
	return command.Dispatch{RolloutID: rolloutID, Batch: batch, Purpose: command.Next}.MsgID()
}
