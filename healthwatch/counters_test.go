package healthwatch

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestCountersEqualRecountUnderRandomTransitions is a property test: whatever sequence of report
// batches (including replays of earlier batches, as redeliveries), health timeouts, device and rollout
// rollbacks, auto-pause with auto rollback, next batches and service restarts is applied, every
// rollout's incrementally maintained counters equal a full recount of its device rows after every step.
func TestCountersEqualRecountUnderRandomTransitions(t *testing.T) {
	t.Parallel()
	for _, seed := range []uint64{1, 7, 42} {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Parallel()
			rng := rand.New(rand.NewPCG(seed, 2026))
			b := setup(t, false)
			var ids []string
			var devices [][]string
			for k, pol := range []map[string]any{
				{"max_failure_rate": 1.0, "health_check_enabled": true},
				{"max_failure_rate": 0.3, "min_sample_size": 3, "auto_rollback_enabled": true, "health_check_enabled": true},
				{"max_failure_rate": 1.0},
			} {
				devs := b.devices(fmt.Sprintf("prop%d-%d", seed, k), 24, "fleet-prop", oldImg)
				ids = append(ids, b.rollout(rolloutSpec{devices: devs, sizes: []int{6, 8, 10}, policy: pol}))
				devices = append(devices, devs)
			}
			s := b.newService()
			var history [][]report
			states := []struct{ status, health string }{
				{"downloading", ""}, {"running", "starting"}, {"running", "healthy"}, {"running", "unhealthy"},
				{"exited", ""}, {"running", ""},
			}
			for step := range 120 {
				k := rng.IntN(len(ids))
				id, devs := ids[k], devices[k]
				switch op := rng.IntN(100); {
				case op < 50: // a batch of reports
					var reps []report
					for range 1 + rng.IntN(12) {
						d := devs[rng.IntN(len(devs))]
						img := newImg
						if rng.IntN(6) == 0 {
							img = oldImg
						}
						st := states[rng.IntN(len(states))]
						r := decodeReport(t, d, web(d, img, st.status, st.health))
						if rng.IntN(3) == 0 { // pulled ahead (download ahead): downloaded_devices moves
							r.body.Downloaded = []string{newImg}
						}
						r.at = time.Now()
						reps = append(reps, r)
					}
					require.NoError(t, s.applyReports(b.ctx, reps))
					history = append(history, reps)
				case op < 62: // a redelivery of an earlier batch
					if len(history) > 0 {
						require.NoError(t, s.applyReports(b.ctx, history[rng.IntN(len(history))]))
					}
				case op < 72: // some deadlines pass
					b.exec(`UPDATE device_rollout_status SET health_deadline = now() - interval '1 second'
						WHERE rollout_id = $1 AND device_uuid = ANY($2)`, id, []string{devs[rng.IntN(len(devs))], devs[rng.IntN(len(devs))]})
					_, err := s.failTimedOut(b.ctx)
					require.NoError(t, err)
				case op < 78: // an operator rolls a device back
					require.NoError(t, RollbackDevice(b.ctx, b.pool, b.subj, id, devs[rng.IntN(len(devs))], "test"))
				case op < 88: // the next batch starts when the current one is done (or at once, dispatcher-style)
					var current, total int
					require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT current_batch, total_batches FROM image_rollouts WHERE rollout_id = $1`, id).
						Scan(&current, &total))
					if current < total {
						b.dispatch(id, current+1)
					}
					_, err := s.sweep(b.ctx)
					require.NoError(t, err)
				case op < 96: // a restart: a new service instance, nothing kept in memory
					s = b.newService()
				default: // a whole rollout rolled back
					if rng.IntN(4) == 0 {
						require.NoError(t, RollbackAll(b.ctx, b.pool, b.subj, id, "test"))
					}
				}
				for _, id := range ids {
					b.checkCounters(id)
				}
				if t.Failed() {
					t.Fatalf("counters diverged at step %d", step)
				}
			}
			// The property saw the interesting transitions, not only no-ops.
			var finished, failed, rolledBack int
			require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT count(*) FILTER (WHERE status = 'completed'),
				count(*) FILTER (WHERE status = 'failed'), count(*) FILTER (WHERE status = 'rolled_back')
				FROM device_rollout_status`).Scan(&finished, &failed, &rolledBack))
			require.Positive(t, finished)
			require.Positive(t, failed+rolledBack)
			var downloaded int
			require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT count(*) FROM device_rollout_status WHERE downloaded_at IS NOT NULL`).Scan(&downloaded))
			require.Positive(t, downloaded)
		})
	}
}

// TestUnchangedReportWritesNothing: a report equal to the device's stored one (same images, statuses and
// health), within last_seen_at's 30 s, writes no row: not device_current_state, not the device's
// rollout row, not the rollout, not the devices row.
func TestUnchangedReportWritesNothing(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	devs := b.devices("same", 2, "fleet-same", oldImg)
	id := b.rollout(rolloutSpec{devices: devs, policy: map[string]any{"health_check_enabled": true}})
	s := b.newService()
	raw := web(devs[0], newImg, "running", "starting")
	require.NoError(t, s.applyReports(b.ctx, []report{decodeReport(t, devs[0], raw)}))
	require.Equal(t, statusHealthChecking, b.status(id, devs[0]))

	versions := func() []string {
		var cur, row, ro, dev string
		require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT
			(SELECT xmin::text FROM device_current_state WHERE device_uuid = $2),
			(SELECT xmin::text FROM device_rollout_status WHERE rollout_id = $1 AND device_uuid = $2),
			(SELECT xmin::text FROM image_rollouts WHERE rollout_id = $1),
			(SELECT xmin::text FROM devices WHERE uuid = $2)`, id, devs[0]).Scan(&cur, &row, &ro, &dev))
		return []string{cur, row, ro, dev}
	}
	before := versions()
	for range 3 {
		require.NoError(t, s.applyReports(b.ctx, []report{decodeReport(t, devs[0], raw)}))
	}
	require.Equal(t, before, versions(), "an unchanged report wrote a row")

	// A changed report is stored and moves the device.
	require.NoError(t, s.applyReports(b.ctx, []report{decodeReport(t, devs[0], web(devs[0], newImg, "running", "healthy"))}))
	require.Equal(t, statusCompleted, b.status(id, devs[0]))
	after := versions()
	require.NotEqual(t, before[0], after[0])
	require.NotEqual(t, before[2], after[2])
	b.checkCounters(id)
}
