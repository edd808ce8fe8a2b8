package dispatcher

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fleetshift/fleetshift/streams"
)

// rateRollout makes the fixture rollout a rate rollout (one batch) that has dispatched dispatched devices.
func (b *bundle) rateRollout(t testing.TB, id string, dispatched int) {
	t.Helper()
	_, err := b.db.Pool.Exec(b.ctx, `UPDATE image_rollouts SET strategy = 'rate', rate_per_minute = 6,
		rate_dispatched = $2 WHERE rollout_id = $1`, id, dispatched)
	require.NoError(t, err)
}

// TestRateChunkDispatchesUpToItsTotal: a rate rollout's chunk (DispatchV1.UpTo) schedules pending devices
// until rate_dispatched reaches UpTo, in uuid order, and notifies only those; handling it again schedules
// nothing; a command without UpTo (a join, a resume) schedules nothing for a rate rollout; a paused rate
// rollout takes no chunk.
func TestRateChunkDispatchesUpToItsTotal(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// In uuid order: ra1, ra2, rb1 (no longer runs acme/app), rc1..rc3.
	devs := append(b.devices(t, "ra", 2, deviceApps), b.devices(t, "rb", 1, otherApps)...)
	devs = append(devs, b.devices(t, "rc", 3, deviceApps)...)
	id := b.rollout(t, "in_progress", devs)
	b.rateRollout(t, id, 0)

	seq := b.targetsSeq(t)
	res, err := b.svc.Dispatch(b.ctx, streams.DispatchV1{RolloutID: id, Batch: 1, UpTo: 2})
	require.NoError(t, err)
	require.Equal(t, 2, res.Scheduled)
	require.Equal(t, 2, res.Notified, "a chunk notifies the devices it moved")
	require.Equal(t, seq+2, b.targetsSeq(t))
	require.Equal(t, 2, b.count(t, `SELECT rate_dispatched FROM image_rollouts WHERE rollout_id = $1`, id))
	require.Equal(t, 1, b.count(t, `SELECT current_batch FROM image_rollouts WHERE rollout_id = $1`, id))
	require.Equal(t, 2, b.count(t, `SELECT count(*) FROM device_rollout_status WHERE rollout_id = $1
		AND status = 'scheduled' AND device_uuid IN ('ra1', 'ra2')`, id), "uuid order")

	// The same chunk again (a redelivery): nothing more, nobody notified again.
	res, err = b.svc.Dispatch(b.ctx, streams.DispatchV1{RolloutID: id, Batch: 1, UpTo: 2})
	require.NoError(t, err)
	require.Zero(t, res.Scheduled)
	require.Zero(t, res.Notified)
	require.Equal(t, seq+2, b.targetsSeq(t))

	// Requests without a total do not dispatch a rate rollout.
	res, err = b.svc.Dispatch(b.ctx, streams.DispatchV1{RolloutID: id, Batch: 1})
	require.NoError(t, err)
	require.Zero(t, res.Scheduled)
	require.Equal(t, 4, b.count(t, `SELECT count(*) FROM device_rollout_status WHERE rollout_id = $1 AND status = 'pending'`, id))

	// The next chunk takes the next device; one target no longer running the repository is skipped and
	// counts as taken off the list.
	res, err = b.svc.Dispatch(b.ctx, streams.DispatchV1{RolloutID: id, Batch: 1, UpTo: 4})
	require.NoError(t, err)
	require.Equal(t, 1, res.Scheduled)
	require.Equal(t, 1, res.Skipped)
	require.Equal(t, 4, b.count(t, `SELECT rate_dispatched FROM image_rollouts WHERE rollout_id = $1`, id))

	// Paused: a chunk changes nothing.
	_, err = b.db.Pool.Exec(b.ctx, `UPDATE image_rollouts SET status = 'paused' WHERE rollout_id = $1`, id)
	require.NoError(t, err)
	res, err = b.svc.Dispatch(b.ctx, streams.DispatchV1{RolloutID: id, Batch: 1, UpTo: 6})
	require.NoError(t, err)
	require.Zero(t, res.Scheduled)
	require.Equal(t, 2, b.count(t, `SELECT count(*) FROM device_rollout_status WHERE rollout_id = $1 AND status = 'pending'`, id))
	require.Equal(t, 4, b.count(t, `SELECT rate_dispatched FROM image_rollouts WHERE rollout_id = $1`, id))

	// One batch_started for the whole rate rollout; one batch_devices_scheduled per chunk.
	require.Equal(t, 1, b.count(t, `SELECT count(*) FROM rollout_events WHERE rollout_id = $1 AND event_type = 'image.batch_started'`, id))
	require.Equal(t, 2, b.count(t, `SELECT count(*) FROM rollout_events WHERE rollout_id = $1 AND event_type = 'image.batch_devices_scheduled'`, id))
}
