package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/fleetshift/fleetshift/streams"
)

// heartbeat measures reports that change nothing: every device of a large fleet, outside any rollout,
// reports the same state it reported before -> healthwatch has consumed and acknowledged every one.
func (r *Runner) heartbeat(ctx context.Context) Row {
	n := r.o.Sizes.Heartbeat
	row := Row{Name: "heartbeat", Unit: "reports/s", Goal: ">= 50,000 reports/s",
		Note: fmt.Sprintf("%s devices, outside any rollout, each publish the state they reported before (unchanged; JetStream async publish from the harness to fleet.device.<uuid>.state) -> healthwatch's REPORTS consumer has nothing pending or unacknowledged (polled every 20 ms); an untimed first pass stores every device's state. Baseline raw JetStream async publish of the same messages to a REPORTS-like stream and a pull consumer acking each.", FormatValue(float64(n), ""))}
	f := Fleet{Prefix: "hb", Fleet: "bench-heartbeat", N: n, Image: "bench/heartbeat:1.0"}
	if err := r.seed(ctx, f); err != nil {
		row.Err = err
		return row
	}
	srv, err := r.startServer(ctx, "heartbeat")
	if err != nil {
		row.Err = err
		return row
	}
	defer r.stopServer(srv)
	bsubj, err := benchStream(ctx, srv, streams.Subjects.ReportsStream)
	if err != nil {
		row.Err = err
		return row
	}
	devs := f.Devices()
	payloads := make([][]byte, n)
	for j, d := range devs {
		payloads[j] = report(d.UUID, "bench/heartbeat:1.0", "running", "healthy", 0)
	}
	subject := func(j int) string { return srv.Subjects.DeviceState(devs[j].UUID) }

	// First pass (untimed): every device's state stored.
	if err := publishReports(ctx, srv.JS, subject, payloads, nil); err != nil {
		row.Err = err
		return row
	}
	err = poll(ctx, 10*time.Minute, 100*time.Millisecond, fmt.Sprintf("%d first reports stored", n), func() (bool, error) {
		var c int
		err := r.db.Pool.QueryRow(ctx, `SELECT count(*) FROM device_current_state WHERE device_uuid LIKE 'hb-%'`).Scan(&c)
		return c >= n, err
	})
	if err != nil {
		row.Err = err
		return row
	}
	if err := r.consumed(ctx, srv, 10*time.Minute); err != nil {
		row.Err = err
		return row
	}
	var stored time.Time
	if err := r.db.Pool.QueryRow(ctx, `SELECT max(reported_at) FROM device_current_state WHERE device_uuid LIKE 'hb-%'`).Scan(&stored); err != nil {
		row.Err = fmt.Errorf("read stored states: %w", err)
		return row
	}
	var rates, base []float64
	for i := range r.o.Sizes.Reps + 1 {
		start := time.Now()
		if err := publishReports(ctx, srv.JS, subject, payloads, nil); err != nil {
			row.Err = err
			return row
		}
		if err := r.consumed(ctx, srv, 10*time.Minute); err != nil {
			row.Err = err
			return row
		}
		d := time.Since(start)
		r.progress("   heartbeat pass %d: %s", i, d.Round(time.Millisecond))
		bd, err := r.reportBaseline(ctx, srv, bsubj, devs, payloads, i)
		if err != nil {
			row.Err = err
			return row
		}
		if i > 0 {
			rates = append(rates, float64(n)/d.Seconds())
			base = append(base, float64(n)/bd.Seconds())
		}
	}
	// Unchanged reports write nothing: every stored state is still the first pass's.
	var after time.Time
	if err := r.db.Pool.QueryRow(ctx, `SELECT max(reported_at) FROM device_current_state WHERE device_uuid LIKE 'hb-%'`).Scan(&after); err != nil {
		row.Err = fmt.Errorf("read stored states: %w", err)
		return row
	}
	if !after.Equal(stored) {
		row.Err = fmt.Errorf("unchanged reports rewrote stored states (latest reported_at %s, first pass %s)", after, stored)
		return row
	}
	row.Value, row.Baseline = Median(rates), Median(base)
	row.Pass = row.Value >= 50_000
	return row
}

// consumed waits until healthwatch's REPORTS consumer has nothing pending and nothing unacknowledged.
func (r *Runner) consumed(ctx context.Context, srv *Server, timeout time.Duration) error {
	cons, err := srv.JS.Consumer(ctx, srv.Subjects.ReportsStream(), streams.ConsumerHealthwatch)
	if err != nil {
		return fmt.Errorf("find the healthwatch consumer: %w", err)
	}
	return poll(ctx, timeout, 20*time.Millisecond, "reports consumed", func() (bool, error) {
		info, err := cons.Info(ctx)
		if err != nil {
			return false, err
		}
		return info.NumPending == 0 && info.NumAckPending == 0, nil
	})
}
