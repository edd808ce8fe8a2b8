package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"

	"github.com/fleetshift/fleetshift/shared/command"
	"github.com/fleetshift/fleetshift/streams"
)

// findRollout returns the rollout created for a push of tag to repository (normalised), if any.
func (r *Runner) findRollout(ctx context.Context, repository, tag string) (Rollout, bool, error) {
	var ro Rollout
	err := r.db.Pool.QueryRow(ctx, `SELECT rollout_id::text, status, total_devices FROM image_rollouts
		WHERE repository = $1 AND new_tag = $2 ORDER BY created_at DESC LIMIT 1`, repository, tag).Scan(&ro.ID, &ro.Status, &ro.TotalDevices)
	if errors.Is(err, pgx.ErrNoRows) {
		return ro, false, nil
	}
	if err != nil {
		return ro, false, fmt.Errorf("find rollout of %s:%s: %w", repository, tag, err)
	}
	return ro, true, nil
}

// waitPlanned waits until the push of tag has a rollout with n committed device rows.
func (r *Runner) waitPlanned(ctx context.Context, repository, tag string, n int, timeout time.Duration) (Rollout, error) {
	var ro Rollout
	err := poll(ctx, timeout, 2*time.Millisecond, fmt.Sprintf("rollout of %s:%s with %d devices", repository, tag, n), func() (bool, error) {
		var found bool
		var err error
		if ro, found, err = r.findRollout(ctx, repository, tag); err != nil || !found {
			return false, err
		}
		var rows int
		if err := r.db.Pool.QueryRow(ctx, `SELECT count(*) FROM device_rollout_status WHERE rollout_id = $1`, ro.ID).Scan(&rows); err != nil {
			return false, err
		}
		if rows > n {
			return false, fmt.Errorf("rollout %s has %d device rows, want %d", ro.ID, rows, n)
		}
		return rows == n, nil
	})
	return ro, err
}

// stagedBatch is the batch of the i-th of n devices under [10,50,100].
func stagedBatch(i, n int) int {
	for b, p := range []int{10, 50, 100} {
		if i < int(math.Ceil(float64(n)*float64(p)/100)) {
			return b + 1
		}
	}
	return 3
}

// planBaseline inserts a rollout row and copies n device rows for it with raw pgx CopyFrom in one
// transaction: the floor of what planning must write.
func (r *Runner) planBaseline(ctx context.Context, uuids []string, tag string) (time.Duration, error) {
	rows := make([][]any, len(uuids))
	start := time.Now()
	err := pgx.BeginFunc(ctx, r.db.Pool, func(tx pgx.Tx) error {
		var id [16]byte
		if err := tx.QueryRow(ctx, `INSERT INTO image_rollouts (image_name, repository, old_tag, new_tag, new_image, strategy, total_devices)
			VALUES ('bench/baseline', 'docker.io/bench/baseline', '1.0', $1, 'bench/baseline:' || $1, 'manual', $2)
			RETURNING rollout_id`, tag, len(uuids)).Scan(&id); err != nil {
			return err
		}
		for i, u := range uuids {
			rows[i] = []any{id, u, stagedBatch(i, len(uuids)), "pending", "1.0", tag, "bench/plan:1.0", "bench/plan:" + tag}
		}
		_, err := tx.CopyFrom(ctx, pgx.Identifier{"device_rollout_status"},
			[]string{"rollout_id", "device_uuid", "batch_number", "status", "old_image_tag", "new_image_tag", "old_image", "new_image"},
			pgx.CopyFromRows(rows))
		return err
	})
	d := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("baseline copy of %d rows: %w", len(uuids), err)
	}
	if _, err := r.db.Pool.Exec(ctx, `DELETE FROM image_rollouts WHERE repository = 'docker.io/bench/baseline'`); err != nil {
		return 0, fmt.Errorf("remove baseline rollout: %w", err)
	}
	return d, nil
}

func (r *Runner) fleetUUIDs(ctx context.Context, f Fleet) ([]string, error) {
	rows, err := r.db.Pool.Query(ctx, `SELECT uuid FROM devices WHERE fleet_id = $1 ORDER BY uuid`, f.Fleet)
	if err != nil {
		return nil, fmt.Errorf("list devices of %s: %w", f.Fleet, err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// plan measures webhook accepted -> rollout and n device rows committed (name plan_100k or plan_1m),
// beside raw CopyFrom of the same rows. With memory it also reports the server's peak RSS and its RSS
// once every device has been polled (cached).
func (r *Runner) plan(ctx context.Context, name string, n int, goalSeconds float64, memory bool) []Row {
	f := Fleet{Prefix: "plan", Fleet: "bench-plan", N: n, Image: "bench/plan:1.0"}
	const repo = "docker.io/bench/plan"
	fail := func(err error) []Row { return failRows(name, err) }
	if err := r.seed(ctx, f); err != nil {
		return fail(err)
	}
	uuids, err := r.fleetUUIDs(ctx, f)
	if err != nil {
		return fail(err)
	}
	var base []float64
	for i := range r.o.Sizes.Reps + 1 {
		d, err := r.planBaseline(ctx, uuids, fmt.Sprintf("b%d", i))
		if err != nil {
			return fail(err)
		}
		if i > 0 { // the first is the warm-up
			base = append(base, d.Seconds())
		}
	}
	uuids = nil

	srv, err := r.startServer(ctx, name)
	if err != nil {
		return fail(err)
	}
	defer r.stopServer(srv)
	if err := srv.Policy(ctx, map[string]any{"image_pattern": "bench/plan", "update_strategy": "manual",
		"staged_batches": 3, "batch_percentages": []int{10, 50, 100}, "health_check_enabled": true,
		"health_check_timeout_seconds": 3600, "description": "bench " + name}); err != nil {
		return fail(err)
	}
	timeout := time.Duration(goalSeconds*10) * time.Second
	var times []float64
	for i := range r.o.Sizes.Reps + 1 {
		tag := fmt.Sprintf("p%d", i)
		start := time.Now()
		if err := srv.Push(ctx, "bench/plan", tag); err != nil {
			return fail(err)
		}
		ro, err := r.waitPlanned(ctx, repo, tag, n, timeout)
		if err != nil {
			return fail(err)
		}
		d := time.Since(start)
		r.progress("   %s push %s: %s", name, tag, d.Round(time.Millisecond))
		if i > 0 {
			times = append(times, d.Seconds())
		}
		if err := r.cancel(ctx, srv, ro.ID); err != nil {
			return fail(err)
		}
	}
	v, b := Median(times), Median(base)
	if name == "plan_100k" {
		r.planPerDevice = v / float64(n)
	}
	row := Row{Name: name, Value: v, Unit: "s", Baseline: b,
		Note: fmt.Sprintf("%s devices on bench/plan:1.0, manual policy (planned, not dispatched), Docker Hub webhook POST -> image_rollouts row and every device_rollout_status row committed (polled every 2 ms); baseline one transaction of raw pgx CopyFrom of the same rows.", FormatValue(float64(n), ""))}
	if memory {
		row.Goal, row.Pass = fmt.Sprintf("< %.0f s", goalSeconds), v < goalSeconds
	} else {
		row.Goal, row.Pass = fmt.Sprintf("< %.0f s and <= 3x baseline", goalSeconds), v < goalSeconds && v <= 3*b
	}
	rows := []Row{row}
	if !memory {
		return rows
	}
	mem, err := srv.Child.Memory()
	rows = append(rows, Row{Name: "rss_plan_1m", Value: float64(mem.PeakRSS) / (1 << 20), Unit: "MiB", Err: err,
		Goal: "< 1024 MiB", Pass: mem.PeakRSS < 1<<30,
		Note: fmt.Sprintf("peak RSS (VmHWM) of the server process after planning %s devices %d times.", FormatValue(float64(n), ""), r.o.Sizes.Reps+1)})
	rows = append(rows, r.pollCache(ctx, srv, f))
	return rows
}

// pollCache polls every device of f once (filling the server's poll cache) and reports the server's RSS.
func (r *Runner) pollCache(ctx context.Context, srv *Server, f Fleet) Row {
	row := Row{Name: "rss_poll_cache", Unit: "MiB", Goal: "< 1024 MiB"}
	entries, err := r.loadPollEntries(ctx, f)
	if err != nil {
		row.Err = err
		return row
	}
	file, err := r.pollRequests(f, entries, true, "pollcache")
	entries = nil
	if err != nil {
		row.Err = err
		return row
	}
	res, err := r.load(ctx, LoadSpec{Addr: srv.Addr(), Conns: 64, Passes: 1, Expect: 304}, file)
	if err != nil {
		row.Err = err
		return row
	}
	mem, err := srv.Child.Memory()
	row.Value, row.Err, row.Pass = float64(mem.RSS)/(1<<20), err, mem.RSS < 1<<30
	row.Note = fmt.Sprintf("RSS of the server process after one poll of each of %s devices (cold pass at %s req/s), every one then cached.",
		FormatValue(float64(f.N), ""), FormatValue(res.RPS, ""))
	return row
}

// cancel cancels a rollout between repetitions (untimed). Without the control API it marks the rollout
// cancelled in the database, which is what the verb does to a rollout that dispatches nothing further.
func (r *Runner) cancel(ctx context.Context, srv *Server, id string) error {
	missing, err := srv.Control(ctx, id, "cancel")
	if err != nil || !missing {
		return err
	}
	if _, err := r.db.Pool.Exec(ctx, `UPDATE image_rollouts SET status = 'cancelled', completed_at = now(), next_batch_at = NULL,
		updated_at = now() WHERE rollout_id = $1 AND status IN ('pending', 'scheduled', 'in_progress', 'paused', 'awaiting_approval')`, id); err != nil {
		return fmt.Errorf("cancel rollout %s: %w", id, err)
	}
	return nil
}

// start starts a planned manual rollout and says how: through the control API, or (when the server has
// none) as the API would, by marking it in progress and sending the dispatcher its batch-1 command.
func (r *Runner) start(ctx context.Context, srv *Server, id string) (string, error) {
	missing, err := srv.Control(ctx, id, "start")
	if err != nil {
		return "", err
	}
	if !missing {
		return "POST /api/v1/rollouts/:id/start", nil
	}
	if _, err := r.db.Pool.Exec(ctx, `UPDATE image_rollouts SET status = 'in_progress', current_batch = 1, started_at = now(),
		updated_at = now() WHERE rollout_id = $1 AND status = 'pending'`, id); err != nil {
		return "", fmt.Errorf("start rollout %s: %w", id, err)
	}
	cmd, err := command.Dispatch{RolloutID: id, Batch: 1, Purpose: command.First}.Message(srv.Subjects)
	if err != nil {
		return "", fmt.Errorf("start rollout %s: %w", id, err)
	}
	msg := &nats.Msg{Subject: cmd.Subject, Data: cmd.Payload,
		Header: nats.Header{streams.HeaderMsgID: []string{cmd.ID}, streams.HeaderKind: []string{command.KindDispatchV1}}}
	if _, err := srv.JS.PublishMsg(ctx, msg); err != nil {
		return "", fmt.Errorf("start rollout %s: publish dispatch command: %w", id, err)
	}
	return "the dispatch command (no control API yet: rollout set in_progress in SQL)", nil
}
