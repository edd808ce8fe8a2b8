package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleetshift/fleetshift/agent/sim"
	"github.com/fleetshift/fleetshift/streams"
)

// poll calls check every interval until it says done, fails, or timeout passes.
func poll(ctx context.Context, timeout, interval time.Duration, what string, check func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := check()
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not within %s", what, timeout.Round(time.Second))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, ctx.Err())
		case <-time.After(interval):
		}
	}
}

// check verifies the run's invariants once the rollout has settled and returns the violations.
func (e *env) check(ctx context.Context, p plan, seed uint64, res *Result) []string {
	var v []string
	add := func(format string, args ...any) { v = append(v, fmt.Sprintf(format, args...)) }
	if e.poisonErr != "" {
		add("%s", e.poisonErr)
	}
	// Nothing left unacknowledged: every durable consumer has no pending and no unacked message. A message
	// delivered to a killed process comes back after its consumer's ack wait (the dispatcher's is 2 min).
	if err := poll(ctx, 4*time.Minute, 500*time.Millisecond, "consumers settled", func() (bool, error) {
		busy, err := e.busyConsumers(ctx)
		return err == nil && len(busy) == 0, nil
	}); err != nil {
		busy, _ := e.busyConsumers(ctx)
		add("unacknowledged after settle: %s", strings.Join(busy, ", "))
	}
	// Cluster mode: every stream and durable consumer back at full redundancy, a leader and its other
	// replicas current (none offline or lagging), once the faults are over.
	if e.nats != nil {
		var last []string
		if err := poll(ctx, 2*time.Minute, 500*time.Millisecond, "replicas current", func() (bool, error) {
			probs, err := replicaProblems(ctx, e.js, natsReplicas, true)
			if err != nil {
				last = []string{err.Error()}
				return false, nil
			}
			last = probs
			return len(probs) == 0, nil
		}); err != nil {
			add("replicas not current after settle: %s", strings.Join(last, "; "))
		}
	}
	if e.poisoned {
		if err := e.checkDeadLetters(ctx); err != nil {
			add("%v", err)
		}
	}
	// One rollout per push.
	var rollouts int
	if err := e.db.QueryRow(ctx, `SELECT count(*) FROM image_rollouts WHERE repository = $1`, repository).Scan(&rollouts); err != nil {
		add("read rollouts: %v", err)
		return v
	}
	if rollouts != 1 {
		add("%d rollouts for one push (want 1)", rollouts)
	}
	if e.rollout == "" {
		add("no rollout")
		return v
	}
	var (
		status, newImage, policyJSON                               string
		current, total, upd, healthy, failed, rolledBack, failures int
		autoPaused                                                 bool
	)
	err := e.db.QueryRow(ctx, `SELECT status, new_image, current_batch, total_batches, updated_devices, healthy_devices,
			failed_devices, rolled_back_devices, failures, auto_paused, policy::text
		FROM image_rollouts WHERE rollout_id = $1`, e.rollout).Scan(&status, &newImage, &current, &total, &upd, &healthy,
		&failed, &rolledBack, &failures, &autoPaused, &policyJSON)
	if err != nil {
		add("read rollout: %v", err)
		return v
	}
	// Counters equal the rows.
	var rc, rf, rr, rfail int
	err = e.db.QueryRow(ctx, `SELECT count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status = 'failed'),
			count(*) FILTER (WHERE status = 'rolled_back'),
			count(*) FILTER (WHERE status = 'failed' OR (status = 'rolled_back' AND error_message IS NOT NULL))
		FROM device_rollout_status WHERE rollout_id = $1`, e.rollout).Scan(&rc, &rf, &rr, &rfail)
	if err != nil {
		add("recount: %v", err)
		return v
	}
	if upd != rc || healthy != rc || failed != rf || rolledBack != rr || failures != rfail {
		add("counters updated=%d healthy=%d failed=%d rolled_back=%d failures=%d, rows completed=%d failed=%d rolled_back=%d failures=%d",
			upd, healthy, failed, rolledBack, failures, rc, rf, rr, rfail)
	}
	// Device rows: terminal, or pending in a batch not dispatched when the rollout stopped; healthy devices
	// never failed; failed devices rolled back when the policy says so.
	rows, err := e.db.Query(ctx, `SELECT s.device_uuid, d.device_name, s.batch_number, s.status, s.error_message IS NOT NULL, COALESCE(s.error_message, ''),
			COALESCE(i.tag, '')
		FROM device_rollout_status s JOIN devices d ON d.uuid = s.device_uuid
		LEFT JOIN device_images i ON i.device_uuid = s.device_uuid AND i.repository = $2
		WHERE s.rollout_id = $1`, e.rollout, repository)
	if err != nil {
		add("read device rows: %v", err)
		return v
	}
	type row struct {
		uuid, name, status, tag, errMsg string
		batch                           int
		hadError                        bool
	}
	var all []row
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.uuid, &r.name, &r.batch, &r.status, &r.hadError, &r.errMsg, &r.tag); err != nil {
			rows.Close()
			add("read device rows: %v", err)
			return v
		}
		all = append(all, r)
	}
	rows.Close()
	if len(all) != e.o.Devices {
		add("rollout has %d device rows, want %d", len(all), e.o.Devices)
	}
	healthyOf := e.healthyBySimulator(p, seed, newImage)
	counts := map[string]int{}
	bad := map[string][]string{}
	note := func(kind, uuid string) { bad[kind] = append(bad[kind], uuid) }
	stopped := status == "paused" || status == "rolled_back" || status == "failed" || status == "cancelled"
	for _, r := range all {
		counts[r.status]++
		switch r.status {
		case "completed", "failed", "rolled_back", "skipped": // skipped: superseded, or offline past the grace
		case "pending":
			if !stopped || r.batch <= current {
				note("not terminal ("+r.status+")", r.uuid)
			}
		default:
			note("not terminal ("+r.status+")", r.uuid)
		}
		if h, known := healthyOf[r.name]; known && h && (r.status == "failed" || (r.status == "rolled_back" && r.hadError)) {
			note("healthy device failed", r.uuid+" "+r.name+": "+r.errMsg)
		}
		if r.tag == newTag && r.status == "pending" {
			note("on the new image outside a dispatched batch", r.uuid)
		}
		if r.tag == newTag && r.status == "rolled_back" {
			note("rolled back but still on the new image", r.uuid)
		}
		if r.status == "failed" && p.rollback && autoPaused {
			note("failed and not rolled back (auto rollback)", r.uuid)
		}
		if r.status == "rolled_back" && !(p.rollback && autoPaused) && status != "rolled_back" {
			note("rolled back without being asked", r.uuid)
		}
	}
	res.Rows = counts
	for kind, ids := range bad {
		add("%d devices %s (e.g. %s)", len(ids), kind, ids[0])
		if kind == "healthy device failed" {
			add("  diagnosis: %s", e.diagnose(ctx, strings.Fields(ids[0])[0]))
		}
	}
	if status == "completed" && counts["pending"] > 0 {
		add("rollout completed with %d pending devices", counts["pending"])
	}
	// One event per state change, in order.
	v = append(v, e.checkEvents(ctx, all2(all, func(r row) (string, string, bool) { return r.uuid, r.status, r.hadError }))...)
	return v
}

func all2[T any](in []T, f func(T) (string, string, bool)) []devState {
	out := make([]devState, 0, len(in))
	for _, x := range in {
		u, s, h := f(x)
		out = append(out, devState{uuid: u, status: s, hadError: h})
	}
	return out
}

type devState struct {
	uuid, status string
	hadError     bool
}

// healthyBySimulator maps device name to whether the simulator makes it healthy on image (seeded).
func (e *env) healthyBySimulator(p plan, seed uint64, image string) map[string]bool {
	out := map[string]bool{}
	rates := []sim.Rate{{Glob: failRateGlob, P: p.failP}}
	for _, s := range e.sims {
		for i := range s.devices {
			out[s.prefix+"-"+strconv.Itoa(i)] = !sim.Fails(rates, s.seed, i, image)
		}
	}
	return out
}

// eventRank orders a device's events: each at most once, never backwards.
var eventRank = map[string]int{
	"image.device_scheduled":    0,
	"image.device_updated":      1,
	"image.health_check_passed": 2,
	"image.health_check_failed": 2,
	"image.device_failed":       3,
	"image.device_rolled_back":  4,
}

func (e *env) checkEvents(ctx context.Context, devs []devState) []string {
	// A device's scheduling is its own image.device_scheduled event or (since dispatches name their
	// devices in chunks) its uuid in an image.batch_devices_scheduled event.
	rows, err := e.db.Query(ctx, `SELECT COALESCE(device_uuid, ''), event_type, data::text FROM rollout_events
		WHERE rollout_id = $1 AND (device_uuid IS NOT NULL OR event_type = $2) ORDER BY id`, e.rollout, streams.EventBatchDevicesScheduled)
	if err != nil {
		return []string{"read events: " + err.Error()}
	}
	seen := map[string]map[string]int{}
	last := map[string]int{}
	bad := map[string][]string{}
	saw := func(dev, typ string) {
		if seen[dev] == nil {
			seen[dev] = map[string]int{}
			last[dev] = -1
		}
		seen[dev][typ]++
		if seen[dev][typ] == 2 {
			bad["event "+typ+" twice"] = append(bad["event "+typ+" twice"], dev)
		}
		rk, ok := eventRank[typ]
		if !ok {
			return
		}
		if rk < last[dev] {
			bad["event "+typ+" out of order"] = append(bad["event "+typ+" out of order"], dev)
		}
		last[dev] = max(last[dev], rk)
	}
	for rows.Next() {
		var dev, typ, data string
		if err := rows.Scan(&dev, &typ, &data); err != nil {
			rows.Close()
			return []string{"read events: " + err.Error()}
		}
		if typ != streams.EventBatchDevicesScheduled {
			saw(dev, typ)
			continue
		}
		var d streams.BatchDevicesScheduledV1
		if err := json.Unmarshal([]byte(data), &d); err != nil {
			rows.Close()
			return []string{"read events: " + typ + ": " + err.Error()}
		}
		for _, u := range d.Devices {
			saw(u, streams.EventDeviceScheduled)
		}
	}
	rows.Close()
	for _, d := range devs {
		s := seen[d.uuid]
		want := map[string][]string{
			"completed":   {"image.device_scheduled", "image.health_check_passed"},
			"failed":      {"image.device_scheduled", "image.device_failed"},
			"rolled_back": {"image.device_rolled_back"},
		}[d.status]
		if d.status == "rolled_back" && d.hadError {
			want = append(want, "image.device_failed")
		}
		for _, typ := range want {
			if s[typ] == 0 {
				bad["missing event "+typ] = append(bad["missing event "+typ], d.uuid)
			}
		}
		if d.status == "pending" && len(s) > 0 {
			bad["events for an undispatched device"] = append(bad["events for an undispatched device"], d.uuid)
		}
	}
	var out []string
	for kind, ids := range bad {
		out = append(out, fmt.Sprintf("%d devices: %s (e.g. %s)", len(ids), kind, ids[0]))
	}
	return out
}

// waitDevicesRun waits (90 s at most) until every device reports running what its row says: the new
// image when completed, not the new image when rolled back. It is the devices' own word, so a target
// written but never delivered shows here. It returns the violations left at the end.
func (e *env) waitDevicesRun(ctx context.Context) []string {
	var bad map[string][]string
	_ = poll(ctx, 90*time.Second, time.Second, "devices run their targets", func() (bool, error) {
		rows, err := e.db.Query(ctx, `SELECT s.device_uuid, s.status, position(r.new_image IN COALESCE(c.apps::text, '')) > 0
			FROM device_rollout_status s JOIN image_rollouts r ON r.rollout_id = s.rollout_id
			LEFT JOIN device_current_state c ON c.device_uuid = s.device_uuid
			WHERE s.rollout_id = $1 AND s.status IN ('completed', 'rolled_back')`, e.rollout)
		if err != nil {
			return false, nil
		}
		bad = map[string][]string{}
		for rows.Next() {
			var dev, st string
			var onNew bool
			if rows.Scan(&dev, &st, &onNew) != nil {
				continue
			}
			if st == "completed" && !onNew {
				bad["completed but not reporting the new image"] = append(bad["completed but not reporting the new image"], dev)
			}
			if st == "rolled_back" && onNew {
				bad["rolled back but still reporting the new image"] = append(bad["rolled back but still reporting the new image"], dev)
			}
		}
		rows.Close()
		return len(bad) == 0, nil
	})
	var out []string
	for kind, ids := range bad {
		out = append(out, fmt.Sprintf("%d devices %s (e.g. %s)", len(ids), kind, ids[0]))
	}
	return out
}

// busyConsumers lists the durable consumers with pending or unacknowledged messages, and the outbox
// when rows are left in it (a message never published).
func (e *env) busyConsumers(ctx context.Context) ([]string, error) {
	var busy []string
	var outbox int
	if err := e.db.QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&outbox); err != nil {
		return nil, err
	}
	if outbox > 0 {
		busy = append(busy, fmt.Sprintf("outbox rows=%d", outbox))
	}
	names := e.js.StreamNames(ctx)
	var streamNames []string
	for n := range names.Name() {
		streamNames = append(streamNames, n)
	}
	if err := names.Err(); err != nil && !errors.Is(err, jetstream.ErrEndOfData) {
		return nil, err
	}
	for _, sn := range streamNames {
		st, err := e.js.Stream(ctx, sn)
		if err != nil {
			return nil, err
		}
		cl := st.ListConsumers(ctx)
		for ci := range cl.Info() {
			if ci.Config.Durable == "" {
				continue
			}
			if ci.NumAckPending != 0 || ci.NumPending != 0 {
				busy = append(busy, fmt.Sprintf("%s/%s pending=%d ack_pending=%d", sn, ci.Name, ci.NumPending, ci.NumAckPending))
			}
		}
		if err := cl.Err(); err != nil && !errors.Is(err, jetstream.ErrEndOfData) {
			return nil, err
		}
	}
	return busy, nil
}

// checkDeadLetters wants the poison report and the poison command in the dead-letter stream.
func (e *env) checkDeadLetters(ctx context.Context) error {
	st, err := e.js.Stream(ctx, e.subj.DeadLetterStream())
	if err != nil {
		return fmt.Errorf("dead-letter stream: %w", err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(">"))
	if err != nil {
		return fmt.Errorf("dead-letter stream: %w", err)
	}
	var reports, commands bool
	for subj := range info.State.Subjects {
		reports = reports || strings.HasSuffix(subj, e.subj.ReportsStream())
		commands = commands || strings.HasSuffix(subj, e.subj.CommandsStream())
	}
	if !reports || !commands {
		return fmt.Errorf("poison not dead-lettered (report %v, command %v; dead-letter subjects %v)", reports, commands, info.State.Subjects)
	}
	return nil
}

// diagnose describes one device's rollout row, target, last stored report and events, for a violation.
func (e *env) diagnose(ctx context.Context, uuid string) string {
	var b strings.Builder
	var st, tv, sched, started, done, tver, rep, repAt string
	_ = e.db.QueryRow(ctx, `SELECT s.status, COALESCE(s.target_version::text, ''), COALESCE(s.scheduled_at::text, ''),
			COALESCE(s.started_at::text, ''), COALESCE(s.completed_at::text, ''), t.version::text,
			COALESCE(c.report::text, ''), COALESCE(c.reported_at::text, '')
		FROM device_rollout_status s JOIN device_target_state t USING (device_uuid)
		LEFT JOIN device_current_state c USING (device_uuid)
		WHERE s.rollout_id = $1 AND s.device_uuid = $2`, e.rollout, uuid).Scan(&st, &tv, &sched, &started, &done, &tver, &rep, &repAt)
	fmt.Fprintf(&b, "status %s target_version %s (target now %s) scheduled %s started %s finished %s; last report at %s: %.300s; events:",
		st, tv, tver, sched, started, done, repAt, rep)
	rows, err := e.db.Query(ctx, `SELECT "timestamp"::text, event_type, COALESCE(message, '') FROM rollout_events
		WHERE rollout_id = $1 AND device_uuid = $2 ORDER BY id`, e.rollout, uuid)
	if err == nil {
		for rows.Next() {
			var ts, typ, msg string
			if rows.Scan(&ts, &typ, &msg) == nil {
				fmt.Fprintf(&b, " [%s %s %s]", ts, typ, msg)
			}
		}
		rows.Close()
	}
	return b.String()
}
