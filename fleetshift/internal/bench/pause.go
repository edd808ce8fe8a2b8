package bench

import (
	"context"
	"fmt"
	"math"
	"strings"
	"time"
)

// pause measures failure rate crosses the threshold -> rollout paused, and checks that no later batch
// is dispatched.
func (r *Runner) pause(ctx context.Context) Row {
	n := r.o.Sizes.PauseDevices
	const repo = "docker.io/bench/pause"
	const minSample = 10
	batch1 := max(1, int(math.Ceil(float64(n)*10/100)))
	row := Row{Name: "pause_reaction", Unit: "ms", Goal: "< 1 s, no further dispatch",
		Note: fmt.Sprintf("staged [10,50,100] rollout of %s devices, zero batch delay, max_failure_rate 0.2, min_sample_size %d: every batch-1 device (%d) reports the new image exited; time from publishing the report that crosses the threshold (the %dth) to the rollout's status paused; then, 1 s later, no device outside batch 1 may have been notified or moved.", FormatValue(float64(n), ""), minSample, batch1, minSample)}
	f := Fleet{Prefix: "pause", Fleet: "bench-pause", N: n, Image: "bench/pause:1.0"}
	if err := r.seed(ctx, f); err != nil {
		row.Err = err
		return row
	}
	srv, err := r.startServer(ctx, "pause_reaction")
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
	if err := srv.Policy(ctx, map[string]any{"image_pattern": "bench/pause", "update_strategy": "staged",
		"staged_batches": 3, "batch_percentages": []int{10, 50, 100}, "batch_delay_seconds": 0, "health_check_enabled": true,
		"health_check_timeout_seconds": 3600, "max_failure_rate": 0.2, "min_sample_size": minSample,
		"auto_rollback_enabled": false, "description": "bench pause_reaction"}); err != nil {
		row.Err = err
		return row
	}
	var times []float64
	for i := range r.o.Sizes.Reps + 1 {
		tag := fmt.Sprintf("f%d", i)
		notified := w.Expect(":"+tag+`"`, batch1)
		if err := srv.Push(ctx, "bench/pause", tag); err != nil {
			row.Err = err
			return row
		}
		if err := waitFor(ctx, notified, time.Minute, "batch 1 notified"); err != nil {
			row.Err = err
			return row
		}
		ro, found, err := r.findRollout(ctx, repo, tag)
		if err == nil && !found {
			err = fmt.Errorf("no rollout for %s", tag)
		}
		if err != nil {
			row.Err = err
			return row
		}
		seen, _ := w.Seen()
		var subjects []string
		var payloads [][]byte
		for subject := range seen {
			uuid, _ := srv.Subjects.DeviceFromSubject(subject)
			subjects = append(subjects, srv.Subjects.DeviceState(uuid))
			payloads = append(payloads, report(uuid, "bench/pause:"+tag, "exited", "unhealthy", i))
		}
		sent := make([]time.Time, len(payloads))
		if err := publishReports(ctx, srv.JS, func(j int) string { return subjects[j] }, payloads, sent); err != nil {
			row.Err = err
			return row
		}
		crossed := sent[min(minSample, len(sent))-1]
		var status string
		err = poll(ctx, 30*time.Second, 2*time.Millisecond, "rollout paused", func() (bool, error) {
			err := r.db.Pool.QueryRow(ctx, `SELECT status FROM image_rollouts WHERE rollout_id = $1`, ro.ID).Scan(&status)
			return status == "paused", err
		})
		if err != nil {
			row.Err = fmt.Errorf("%w (status %s)", err, status)
			return row
		}
		d := time.Since(crossed)
		// No further dispatch: a second later, nobody outside batch 1 was notified or moved.
		select {
		case <-time.After(time.Second):
		case <-ctx.Done():
			row.Err = ctx.Err()
			return row
		}
		after, _ := w.Seen()
		var moved int
		if err := r.db.Pool.QueryRow(ctx, `SELECT count(*) FROM device_rollout_status WHERE rollout_id = $1
			AND batch_number > 1 AND status NOT IN ('pending', 'skipped')`, ro.ID).Scan(&moved); err != nil {
			row.Err = err
			return row
		}
		if len(after) > len(seen) || moved > 0 {
			row.Err = fmt.Errorf("further dispatch after the pause: %d devices notified beyond batch 1, %d later-batch rows moved", len(after)-len(seen), moved)
			return row
		}
		r.progress("   pause %s: %s", tag, d.Round(time.Millisecond))
		if i > 0 {
			times = append(times, float64(d)/float64(time.Millisecond))
		}
		if err := r.cancel(ctx, srv, ro.ID); err != nil && !strings.Contains(err.Error(), "409") {
			row.Err = err
			return row
		}
	}
	row.Value = Median(times)
	row.Pass = row.Value < 1000
	return row
}
