package dispatcher

import (
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fleetshift/fleetshift/streams"
)

// BenchmarkDispatch measures dispatching and notifying one batch of FLEETSHIFT_BENCH_DEVICES devices
// (default 2000, kept small for shared machines; the goal is 100,000 at >= 50,000 devices/s).
// Each iteration is a fresh rollout of every device to a new tag; only Dispatch is timed.
func BenchmarkDispatch(b *testing.B) {
	n := 2000
	if v, err := strconv.Atoi(os.Getenv("FLEETSHIFT_BENCH_DEVICES")); err == nil && v > 0 {
		n = v
	}
	bb := setup(b)
	devs := bb.devices(b, "bench", n, deviceApps)
	var total time.Duration
	i := 0
	for b.Loop() {
		b.StopTimer()
		i++
		id := bb.rollout(b, "in_progress", devs)
		_, err := bb.db.Pool.Exec(bb.ctx, `UPDATE image_rollouts SET new_image = $2, new_tag = $3 WHERE rollout_id = $1`,
			id, fmt.Sprintf("acme/app:2.%d", i), fmt.Sprintf("2.%d", i))
		require.NoError(b, err)
		_, err = bb.db.Pool.Exec(bb.ctx, `DELETE FROM outbox`)
		require.NoError(b, err)
		b.StartTimer()
		start := time.Now()
		res, err := bb.svc.Dispatch(bb.ctx, streams.DispatchV1{RolloutID: id, Batch: 1})
		total += time.Since(start)
		require.NoError(b, err)
		require.Equal(b, n, res.Scheduled)
		require.Equal(b, n, res.Notified)
	}
	b.ReportMetric(float64(n)*float64(i)/total.Seconds(), "devices/s")
}
