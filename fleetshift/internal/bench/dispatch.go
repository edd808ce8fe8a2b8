package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleetshift/fleetshift/shared/target"
	"github.com/fleetshift/fleetshift/streams"
)

// benchSubjects are the baselines' own subjects and streams, configured like fleetshift's.
var benchPrefix = "bench"

func benchStream(ctx context.Context, srv *Server, pick func(streams.Subjects) string) (streams.Subjects, error) {
	subj := streams.New(benchPrefix)
	for _, c := range subj.StreamConfigs(streams.Options{}) {
		if c.Name == pick(subj) {
			if _, err := srv.JS.CreateOrUpdateStream(ctx, c); err != nil {
				return subj, fmt.Errorf("create baseline stream %s: %w", c.Name, err)
			}
		}
	}
	return subj, nil
}

// dispatchBaseline rewrites the same devices' targets with one set-based UPDATE (and their image index
// rows) and publishes each new target to a TARGETS-like stream with raw JetStream async publish.
func (r *Runner) dispatchBaseline(ctx context.Context, srv *Server, subj streams.Subjects, uuids []string, from, to string) (time.Duration, error) {
	start := time.Now()
	var targets []target.Current
	err := pgx.BeginFunc(ctx, r.db.Pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `UPDATE device_target_state SET apps = replace(apps::text, $2, $3)::jsonb,
				version = version + 1, etag = (version + 1)::text || '-' || left(md5(replace(apps::text, $2, $3)), 12), updated_at = now()
			WHERE device_uuid = ANY($1) RETURNING device_uuid, apps, config, version, etag`, uuids, from, to)
		if err != nil {
			return err
		}
		targets, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (target.Current, error) {
			var c target.Current
			err := row.Scan(&c.DeviceUUID, &c.Apps, &c.Config, &c.Version, &c.ETag)
			return c, err
		})
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE device_images SET tag = $2, image = 'bench/dispatch:' || $2
			WHERE device_uuid = ANY($1) AND repository = 'docker.io/bench/dispatch'`, uuids, to[1:len(to)-1])
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("baseline update of %d targets: %w", len(uuids), err)
	}
	for _, t := range targets {
		if _, err := srv.JS.PublishMsgAsync(target.Message(subj, t), jetstream.WithStallWait(stallWait)); err != nil {
			return 0, fmt.Errorf("baseline publish: %w", err)
		}
	}
	select {
	case <-srv.JS.PublishAsyncComplete():
	case <-time.After(2 * time.Minute):
		return 0, fmt.Errorf("baseline publish: acks not received within 2m")
	}
	return time.Since(start), nil
}

// dispatch measures a batch of n devices: start -> every target write committed and every device
// notified over NATS.
func (r *Runner) dispatch(ctx context.Context) Row {
	n := r.o.Sizes.Dispatch
	const repo = "docker.io/bench/dispatch"
	row := Row{Name: "dispatch", Unit: "devices/s", Goal: ">= 50,000 devices/s",
		Note: fmt.Sprintf("one batch of %s devices: start of a planned manual single-batch rollout -> every target committed (device_images at the new tag) and every device's target notification received by a NATS subscriber; baseline one set-based UPDATE of the same targets and image rows + raw JetStream async publish of each target to a stream configured like TARGETS.", FormatValue(float64(n), ""))}
	f := Fleet{Prefix: "disp", Fleet: "bench-dispatch", N: n, Image: "bench/dispatch:1.0"}
	if err := r.seed(ctx, f); err != nil {
		row.Err = err
		return row
	}
	uuids, err := r.fleetUUIDs(ctx, f)
	if err != nil {
		row.Err = err
		return row
	}
	srv, err := r.startServer(ctx, "dispatch")
	if err != nil {
		row.Err = err
		return row
	}
	defer r.stopServer(srv)
	subj, err := benchStream(ctx, srv, streams.Subjects.TargetsStream)
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
	if err := srv.Policy(ctx, map[string]any{"image_pattern": "bench/dispatch", "update_strategy": "manual",
		"staged_batches": 1, "batch_percentages": []int{100}, "batch_delay_seconds": 0, "health_check_enabled": true,
		"health_check_timeout_seconds": 3600, "description": "bench dispatch"}); err != nil {
		row.Err = err
		return row
	}
	var rates, base []float64
	var started string
	for i := range r.o.Sizes.Reps + 1 {
		tag := fmt.Sprintf("d%d", i)
		if err := srv.Push(ctx, "bench/dispatch", tag); err != nil {
			row.Err = err
			return row
		}
		ro, err := r.waitPlanned(ctx, repo, tag, n, 5*time.Minute)
		if err != nil {
			row.Err = err
			return row
		}
		notified := w.Expect(":"+tag+`"`, n)
		start := time.Now()
		how, err := r.start(ctx, srv, ro.ID)
		if err != nil {
			row.Err = err
			return row
		}
		started = how
		if err := waitFor(ctx, notified, 5*time.Minute, fmt.Sprintf("%d devices notified of %s", n, tag)); err != nil {
			seen, _ := w.Seen()
			row.Err = fmt.Errorf("%w (%d notified)", err, len(seen))
			return row
		}
		err = poll(ctx, 5*time.Minute, 5*time.Millisecond, "targets committed", func() (bool, error) {
			var c int
			err := r.db.Pool.QueryRow(ctx, `SELECT count(*) FROM device_images WHERE repository = $1 AND tag = $2`, repo, tag).Scan(&c)
			return c >= n, err
		})
		if err != nil {
			row.Err = err
			return row
		}
		d := time.Since(start)
		r.progress("   dispatch %s: %s", tag, d.Round(time.Millisecond))
		if err := r.cancel(ctx, srv, ro.ID); err != nil {
			row.Err = err
			return row
		}
		bd, err := r.dispatchBaseline(ctx, srv, subj, uuids, ":"+tag+`"`, fmt.Sprintf(`:x%d"`, i))
		if err != nil {
			row.Err = err
			return row
		}
		if i > 0 {
			rates = append(rates, float64(n)/d.Seconds())
			base = append(base, float64(n)/bd.Seconds())
		}
	}
	row.Value, row.Baseline = Median(rates), Median(base)
	row.Pass = row.Value >= 50_000
	row.Note += " Started with " + started + "."
	r.dispatchRate = row.Value
	return row
}
