package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleetshift/fleetshift/streams"
)

// report is one device's current-state report body: the web service running image, with health.
func report(uuid, image, status, health string, seq int) []byte {
	svc := map[string]any{"serviceId": 1, "serviceName": "web", "imageName": image, "status": status}
	if health != "" {
		svc["health"] = map[string]any{"status": health}
	}
	b, _ := json.Marshal(map[string]any{uuid: map[string]any{
		"apps":   map[string]any{"1": map[string]any{"appId": 1, "appName": "main", "services": []any{svc}}},
		"config": map[string]any{"bench_seq": seq},
	}})
	return b
}

// stallWait is how long an async publish may wait for room in the window of unacknowledged messages:
// on a loaded machine the server may fall behind for a while; that is slowness, not a failure.
const stallWait = 30 * time.Second

// publishReports publishes payloads[i] on subject(i) with JetStream async publish, recording when each
// was published, and waits for every ack.
func publishReports(ctx context.Context, js jetstream.JetStream, subject func(int) string, payloads [][]byte, sent []time.Time) error {
	for i, p := range payloads {
		if sent != nil {
			sent[i] = time.Now()
		}
		if _, err := js.PublishAsync(subject(i), p, jetstream.WithStallWait(stallWait)); err != nil {
			return fmt.Errorf("publish report %d: %w", i, err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
		return nil
	case <-time.After(2 * time.Minute):
		return fmt.Errorf("publish reports: acks not received within 2m")
	case <-ctx.Done():
		return ctx.Err()
	}
}

// reportIngest measures device state reports over NATS -> device status committed: every device of a
// dispatched single-batch rollout reports the new image running and healthy, and healthwatch commits
// each device_rollout_status row as completed.
func (r *Runner) reportIngest(ctx context.Context) Row {
	n := r.o.Sizes.Reports
	row := Row{Name: "report_ingest", Unit: "reports/s", Goal: ">= 20,000 reports/s, report -> status p99 < 1 s",
		Note: fmt.Sprintf("an auto (single-batch) rollout of %s devices is dispatched (untimed); then each device's report of the new image running and healthy is published to fleet.device.<uuid>.state (JetStream async publish from the harness) -> its device_rollout_status row committed as completed (the rollout's healthy_devices counter, which moves in the same transaction, read every 20 ms; the latency of the k-th committed report is taken against the k-th publish); baseline raw JetStream async publish of the same messages to a REPORTS-like stream and a pull consumer acking each.", FormatValue(float64(n), ""))}
	row = r.reportIngestOn(ctx, row, n, n, true)
	if row.Err == nil {
		row.Pass = row.Value >= 20_000 && r.reportP99 < 1
		r.reportRate = row.Value
	}
	return row
}

// reportIngestLarge is report_ingest on a large rollout: the same number of reports, from the first
// devices of a rollout of Sizes.ReportsRollout devices, so a report's cost is seen not to grow with the
// rollout. Its baseline is report_ingest's rate from the same run (when it ran).
func (r *Runner) reportIngestLarge(ctx context.Context) Row {
	n, total := r.o.Sizes.Reports, r.o.Sizes.ReportsRollout
	row := Row{Name: "report_ingest_500k", Unit: "reports/s", Goal: "within 20% of report_ingest's rate",
		Note: fmt.Sprintf("as report_ingest, on an auto rollout of %s devices: %s of its devices report (the rest stay scheduled); baseline report_ingest's rate from this run.",
			FormatValue(float64(total), ""), FormatValue(float64(n), ""))}
	row = r.reportIngestOn(ctx, row, total, n, false)
	if row.Err != nil {
		return row
	}
	if r.reportRate > 0 {
		row.Baseline = r.reportRate
		row.Pass = row.Value >= 0.8*r.reportRate
	} else {
		row.Baseline, row.BaselineText = 0, "n/a (needs report_ingest)"
	}
	return row
}

// reportIngestOn seeds total devices, dispatches an auto rollout of them per repetition (untimed) and
// measures n of them reporting the new image healthy -> their rows completed. It fills row's Value,
// Text and (when withBaseline) Baseline, and records the p99 in r.reportP99.
func (r *Runner) reportIngestOn(ctx context.Context, row Row, total, n int, withBaseline bool) Row {
	const repo = "docker.io/bench/report"
	f := Fleet{Prefix: "rep", Fleet: "bench-report", N: total, Image: "bench/report:1.0"}
	if err := r.seed(ctx, f); err != nil {
		row.Err = err
		return row
	}
	srv, err := r.startServer(ctx, row.Name)
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
	w, err := srv.WatchNotifications()
	if err != nil {
		row.Err = err
		return row
	}
	defer w.Close()
	if err := srv.Policy(ctx, map[string]any{"image_pattern": "bench/report", "update_strategy": "auto",
		"health_check_enabled": true, "health_check_timeout_seconds": 3600, "max_failure_rate": 1,
		"description": "bench " + row.Name}); err != nil {
		row.Err = err
		return row
	}
	devs := f.Devices()[:n]
	var rates, p99s, base []float64
	for i := range r.o.Sizes.Reps + 1 {
		tag := fmt.Sprintf("r%d", i)
		notified := w.Expect(":"+tag+`"`, total)
		if err := srv.Push(ctx, "bench/report", tag); err != nil {
			row.Err = err
			return row
		}
		if err := waitFor(ctx, notified, 10*time.Minute, fmt.Sprintf("%d devices notified of %s", total, tag)); err != nil {
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
		payloads := make([][]byte, n)
		for j, d := range devs {
			payloads[j] = report(d.UUID, "bench/report:"+tag, "running", "healthy", i)
		}
		sent := make([]time.Time, n)
		start := time.Now()
		pubErr := make(chan error, 1)
		go func() {
			pubErr <- publishReports(ctx, srv.JS, func(j int) string { return srv.Subjects.DeviceState(devs[j].UUID) }, payloads, sent)
		}()
		type sample struct {
			at    time.Time
			count int
		}
		var samples []sample
		err = poll(ctx, 5*time.Minute, 20*time.Millisecond, fmt.Sprintf("%d reports committed", n), func() (bool, error) {
			var c int
			// The rollout's healthy_devices counter moves in the transaction that completes its rows
			// (a statement trigger), so it is the committed count of completed rows, read in O(1):
			// counting the rows themselves every 20 ms cost PostgreSQL a fifth of a core here.
			err := r.db.Pool.QueryRow(ctx, `SELECT healthy_devices FROM image_rollouts WHERE rollout_id = $1`, ro.ID).Scan(&c)
			samples = append(samples, sample{time.Now(), c})
			return c >= n, err
		})
		if perr := <-pubErr; perr != nil && err == nil {
			err = perr
		}
		if err != nil {
			var st string
			_ = r.db.Pool.QueryRow(ctx, `SELECT string_agg(status || '=' || c, ' ') FROM (SELECT status, count(*) c FROM device_rollout_status
				WHERE rollout_id = $1 GROUP BY status) x`, ro.ID).Scan(&st)
			row.Err = fmt.Errorf("%w (device rows: %s)", err, st)
			return row
		}
		d := time.Since(start)
		lat := make([]float64, 0, n)
		for k := 1; k <= n; k++ {
			at := samples[sort.Search(len(samples), func(s int) bool { return samples[s].count >= k })].at
			lat = append(lat, at.Sub(sent[k-1]).Seconds())
		}
		r.progress("   reports %s: %s (p99 %.2f s)", tag, d.Round(time.Millisecond), Percentile(lat, 99))

		// baseline: the same messages through a REPORTS-like stream and a consumer.
		if withBaseline {
			bd, err := r.reportBaseline(ctx, srv, bsubj, devs, payloads, i)
			if err != nil {
				row.Err = err
				return row
			}
			if i > 0 {
				base = append(base, float64(n)/bd.Seconds())
			}
		}
		if i > 0 {
			rates = append(rates, float64(n)/d.Seconds())
			p99s = append(p99s, Percentile(lat, 99))
		}
	}
	row.Value = Median(rates)
	if withBaseline {
		row.Baseline = Median(base)
	}
	r.reportP99 = Median(p99s)
	row.Text = fmt.Sprintf("%s reports/s (p99 %.2f s)", FormatValue(row.Value, ""), r.reportP99)
	return row
}

func (r *Runner) reportBaseline(ctx context.Context, srv *Server, subj streams.Subjects, devs []Device, payloads [][]byte, rep int) (time.Duration, error) {
	n := len(payloads)
	// The same consumer settings fleetshift's services use, delivering only what this repetition publishes.
	cfg := streams.ConsumerConfig(fmt.Sprintf("bench-%d", rep), subj.DeviceStateAll(), time.Minute)
	cfg.DeliverPolicy = jetstream.DeliverNewPolicy
	cons, err := srv.JS.CreateOrUpdateConsumer(ctx, subj.ReportsStream(), cfg)
	if err != nil {
		return 0, fmt.Errorf("baseline consumer: %w", err)
	}
	var got atomic.Int64
	done := make(chan struct{})
	start := time.Now()
	cc, err := cons.Consume(func(m jetstream.Msg) {
		_ = m.Ack()
		if got.Add(1) == int64(n) {
			close(done)
		}
	})
	if err != nil {
		return 0, fmt.Errorf("baseline consume: %w", err)
	}
	defer cc.Stop()
	if err := publishReports(ctx, srv.JS, func(j int) string { return subj.DeviceState(devs[j].UUID) }, payloads, nil); err != nil {
		return 0, err
	}
	if err := waitFor(ctx, done, 2*time.Minute, "baseline reports consumed"); err != nil {
		return 0, err
	}
	d := time.Since(start)
	_ = srv.JS.DeleteConsumer(ctx, subj.ReportsStream(), fmt.Sprintf("bench-%d", rep))
	return d, nil
}
