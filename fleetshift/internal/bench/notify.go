package bench

import (
	"context"
	"fmt"
	"math"
	"time"
)

// firstNotify measures webhook -> every batch-1 device of a staged rollout notified over NATS.
func (r *Runner) firstNotify(ctx context.Context) Row {
	n, pushes := r.o.Sizes.NotifyDevices, r.o.Sizes.NotifyPushes
	const repo = "docker.io/bench/notify"
	batch1 := max(1, int(math.Ceil(float64(n)*10/100)))
	row := Row{Name: "first_notify", Unit: "ms", Goal: "p50 < 100 ms, p99 < 250 ms",
		Note: fmt.Sprintf("%d pushes (after 3 warm-up pushes), each a staged [10,50,100] rollout of %s devices: webhook POST -> all %d batch-1 devices' target notifications received by a NATS subscriber; each rollout is cancelled before the next push.", pushes, FormatValue(float64(n), ""), batch1)}
	f := Fleet{Prefix: "notify", Fleet: "bench-notify", N: n, Image: "bench/notify:1.0"}
	if err := r.seed(ctx, f); err != nil {
		row.Err = err
		return row
	}
	srv, err := r.startServer(ctx, "first_notify")
	if err != nil {
		row.Err = err
		return row
	}
	defer r.stopServer(srv)
	w, err := srv.WatchNotifications()
	if err != nil {
		row.Err = err
		return row
	}
	defer w.Close()
	if err := srv.Policy(ctx, map[string]any{"image_pattern": "bench/notify", "update_strategy": "staged",
		"staged_batches": 3, "batch_percentages": []int{10, 50, 100}, "batch_delay_seconds": 3600, "health_check_enabled": true,
		"health_check_timeout_seconds": 3600, "description": "bench first_notify"}); err != nil {
		row.Err = err
		return row
	}
	var lat []float64
	for i := range pushes + 3 {
		tag := fmt.Sprintf("n%d", i)
		notified := w.Expect(":"+tag+`"`, batch1)
		start := time.Now()
		if err := srv.Push(ctx, "bench/notify", tag); err != nil {
			row.Err = err
			return row
		}
		if err := waitFor(ctx, notified, 30*time.Second, fmt.Sprintf("batch 1 of %s notified", tag)); err != nil {
			seen, _ := w.Seen()
			row.Err = fmt.Errorf("%w (%d of %d)", err, len(seen), batch1)
			return row
		}
		d := time.Since(start)
		if i >= 3 {
			lat = append(lat, float64(d)/float64(time.Millisecond))
		}
		ro, found, err := r.findRollout(ctx, repo, tag)
		if err == nil && found {
			err = r.cancel(ctx, srv, ro.ID)
		}
		if err != nil {
			row.Err = err
			return row
		}
	}
	p50, p99 := Percentile(lat, 50), Percentile(lat, 99)
	row.Value = p50
	row.Text = fmt.Sprintf("p50 %.1f ms, p99 %.1f ms", p50, p99)
	row.Pass = p50 < 100 && p99 < 250
	return row
}
