package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/fleetshift/fleetshift/agent/sim"
	"github.com/fleetshift/fleetshift/dispatcher"
	"github.com/fleetshift/fleetshift/fleetshift/internal/server"
	"github.com/fleetshift/fleetshift/shared/logging"
	"github.com/fleetshift/fleetshift/shared/wait"
	"github.com/fleetshift/fleetshift/streams"
)

// fakeClock is the injectable clock maintenance windows are judged by.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

// startClocked is start with the window clock and chunk size injected (server.Tuning).
// berlinClock returns Europe/Berlin and a fake clock at hour:00 there on 15 January 2030, the day the
// maintenance-window tests run on.
func berlinClock(t *testing.T, hour int) (*time.Location, *fakeClock) {
	t.Helper()
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	return berlin, &fakeClock{t: time.Date(2030, 1, 15, hour, 0, 0, 0, berlin)}
}

func (e *env) startClocked(clock *fakeClock, chunk int, roles ...string) *server.Server {
	e.t.Helper()
	return e.startTuned(server.Tuning{TickInterval: 100 * time.Millisecond, Now: clock.Now, WindowChunk: chunk}, roles...)
}

// deviceStatuses counts the rollout's device rows by status.
func (e *env) deviceStatuses(id string) map[string]int {
	e.t.Helper()
	rows, err := e.db.Pool.Query(context.Background(), `SELECT status, count(*) FROM device_rollout_status
		WHERE rollout_id = $1 GROUP BY status`, id)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var s string
		var n int
		if err := rows.Scan(&s, &n); err != nil {
			e.t.Fatal(err)
		}
		out[s] = n
	}
	return out
}

// movedTargets counts the devices of fleet whose target runs image.
func (e *env) movedTargets(image string) int {
	return e.countRows(`SELECT count(*) FROM device_images WHERE image = $1`, image)
}

func (e *env) nextBatchAt(id string) *time.Time {
	e.t.Helper()
	var at *time.Time
	if err := e.db.Pool.QueryRow(context.Background(), `SELECT next_batch_at FROM image_rollouts WHERE rollout_id = $1`, id).Scan(&at); err != nil {
		e.t.Fatal(err)
	}
	return at
}

// TestManualRolloutWaitsForStart: a manual rollout stays pending with nothing dispatched, while an auto
// rollout pushed after it runs to the end; start (over HTTP) dispatches it and it completes.
func TestManualRolloutWaitsForStart(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start()
	e.admin("POST", "/api/v1/image-policies", stagedPolicy(map[string]any{"update_strategy": "manual",
		"batch_percentages": []int{50, 100}, "batch_delay_seconds": 0, "min_sample_size": 100}), 201)
	autoPolicy(e, "acme/other:*")
	s := e.runSim("manual", 6, []string{"acme/app:1.0"}, nil)
	others := e.runSim("others", 2, []string{"acme/other:1.0"}, nil)
	waitSim(t, s, 60*time.Second, func(c sim.Counters) bool { return c.ByImage["acme/app:1.0"] == 6 })
	waitSim(t, others, 60*time.Second, func(c sim.Counters) bool { return c.ByImage["acme/other:1.0"] == 2 })

	e.push("acme/app", "2.0")
	id := e.latestRollout("acme/app:2.0")
	// A later push of another image runs to completion: the pipeline had every chance to dispatch.
	e.push("acme/other", "2.0")
	other := e.latestRollout("acme/other:2.0")
	e.waitStatus(other, 60*time.Second, "completed")
	if r := e.rollout(id); r.Status != "pending" || r.CurrentBatch != 0 {
		t.Fatalf("manual rollout before start: %+v", r)
	}
	if st := e.deviceStatuses(id); st["pending"] != 6 || e.movedTargets("acme/app:2.0") != 0 {
		t.Fatalf("manual rollout dispatched before start: %v", st)
	}

	_, op := e.operatorToken("starter", "operate")
	if r := e.httpVerb(op, "start", id, ""); r.Code != 200 || r.Status != "in_progress" {
		t.Fatalf("start: %+v", r)
	}
	e.waitStatus(id, 60*time.Second, "completed")
	waitSim(t, s, 30*time.Second, func(c sim.Counters) bool { return c.ByImage["acme/app:2.0"] == 6 })
	if got := strings.Join(e.eventTypes(id, "image.rollout_start_requested", "image.rollout_started", "image.rollout_completed"), ","); got != "rollout_start_requested,rollout_started,rollout_completed" {
		t.Fatalf("events: %s", got)
	}
}

// TestBatchApprovalWaitsForApprove: with batch_approval, batch 2 waits in awaiting_approval until
// approve (over NATS); then the rollout completes.
func TestBatchApprovalWaitsForApprove(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start()
	e.admin("POST", "/api/v1/image-policies", stagedPolicy(map[string]any{"batch_approval": true,
		"batch_percentages": []int{50, 100}, "batch_delay_seconds": 0, "min_sample_size": 100}), 201)
	s := e.runSim("approval", 6, []string{"acme/app:1.0"}, nil)
	waitSim(t, s, 60*time.Second, func(c sim.Counters) bool { return c.ByImage["acme/app:1.0"] == 6 })

	e.push("acme/app", "2.0")
	id := e.latestRollout("acme/app:2.0")
	r := e.waitStatus(id, 60*time.Second, "awaiting_approval")
	if r.CurrentBatch != 1 || r.Updated != 3 {
		t.Fatalf("after batch 1: %+v", r)
	}
	// Healthwatch keeps ticking; batch 2 is still not dispatched.
	wait.For(t, 10*time.Second, func() error {
		if e.countRows(`SELECT count(*) FROM rollout_events WHERE rollout_id = $1 AND event_type = 'image.batch_completed'`, id) != 1 {
			return fmt.Errorf("batch 1 not completed yet")
		}
		return nil
	})
	if st := e.deviceStatuses(id); st["pending"] != 3 || e.rollout(id).Status != "awaiting_approval" {
		t.Fatalf("batch 2 moved before approve: %v", st)
	}

	_, op := e.operatorToken("approver", "operate")
	nc, err := nats.Connect(e.srv.NATSURL, nats.Token(op))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if r := natsVerb(t, nc, e.srv.Subjects.Prefix, op, "approve", id, ""); r.Code != 200 || r.Status != "in_progress" {
		t.Fatalf("approve: %+v", r)
	}
	e.waitStatus(id, 60*time.Second, "completed")
	var actor string
	if err := e.db.Pool.QueryRow(context.Background(), `SELECT actor FROM rollout_events WHERE rollout_id = $1
		AND event_type = 'image.batch_approved'`, id).Scan(&actor); err != nil || actor != "token:approver" {
		t.Fatalf("batch_approved event by %q: %v", actor, err)
	}
}

// scheduledPolicy: 22:00-02:00 in Berlin (crossing midnight, not UTC), staged 50/100.
func scheduledPolicy(extra map[string]any) map[string]any {
	return stagedPolicy(mergeMaps(map[string]any{"update_strategy": "scheduled", "batch_percentages": []int{50, 100},
		"maintenance_window_start": "22:00", "maintenance_window_end": "02:00", "timezone": "Europe/Berlin",
		"min_sample_size": 100}, extra))
}

func mergeMaps(a, b map[string]any) map[string]any {
	for k, v := range b {
		a[k] = v
	}
	return a
}

// TestScheduledRolloutDispatchesOnlyInsideItsWindow: a scheduled rollout waits for its window (a
// durable next_batch_at at the next opening, in Berlin time across midnight); inside it, batch 1 goes
// out; a batch whose turn comes after the window closed waits, across a restart, for the next window.
func TestScheduledRolloutDispatchesOnlyInsideItsWindow(t *testing.T) {
	t.Parallel()
	berlin, clock := berlinClock(t, 12)
	e := newEnv(t)
	e.startClocked(clock, 0)
	// The batch delay gives the test time to close the window before batch 2 is due.
	e.admin("POST", "/api/v1/image-policies", scheduledPolicy(map[string]any{"batch_delay_seconds": 2}), 201)
	s := e.runSim("sched", 6, []string{"acme/app:1.0"}, nil)
	waitSim(t, s, 60*time.Second, func(c sim.Counters) bool { return c.ByImage["acme/app:1.0"] == 6 })

	e.push("acme/app", "2.0")
	id := e.latestRollout("acme/app:2.0")
	opening := time.Date(2030, 1, 15, 22, 0, 0, 0, berlin)
	wait.For(t, 30*time.Second, func() error {
		if at := e.nextBatchAt(id); at == nil || !at.Equal(opening) {
			return fmt.Errorf("next_batch_at %v, want %v", at, opening)
		}
		return nil
	})
	if r := e.rollout(id); r.Status != "scheduled" || r.CurrentBatch != 0 || e.movedTargets("acme/app:2.0") != 0 {
		t.Fatalf("outside the window: %+v, %d targets moved", r, e.movedTargets("acme/app:2.0"))
	}

	// 23:30 Berlin (22:30 UTC): inside. Batch 1 goes out; close the window (03:00) before batch 2 is due.
	clock.Set(time.Date(2030, 1, 15, 23, 30, 0, 0, berlin))
	wait.For(t, 30*time.Second, func() error {
		if r := e.rollout(id); r.CurrentBatch != 1 {
			return fmt.Errorf("batch 1 not dispatched: %+v", r)
		}
		return nil
	})
	clock.Set(time.Date(2030, 1, 16, 3, 0, 0, 0, berlin))
	next := time.Date(2030, 1, 16, 22, 0, 0, 0, berlin)
	wait.For(t, 60*time.Second, func() error {
		r := e.rollout(id)
		if at := e.nextBatchAt(id); r.Status != "scheduled" || r.Updated != 3 || at == nil || !at.Equal(next) {
			return fmt.Errorf("want batch 1 done and batch 2 waiting for %v: %+v next %v", next, r, at)
		}
		return nil
	})
	if st := e.deviceStatuses(id); st["pending"] != 3 || st["completed"] != 3 {
		t.Fatalf("batch 2 moved outside the window: %v", st)
	}

	// Restart the whole process outside the window: nothing moves.
	e.stop()
	e.startClocked(clock, 0)
	if at := e.nextBatchAt(id); at == nil || !at.Equal(next) {
		t.Fatalf("the durable window timer did not survive the restart: %v", at)
	}
	if r := e.rollout(id); r.Status != "scheduled" || e.deviceStatuses(id)["pending"] != 3 {
		t.Fatalf("after restart outside the window: %+v %v", r, e.deviceStatuses(id))
	}

	// 00:30 Berlin on the 17th: the part of the window after midnight. Batch 2 goes out, all complete.
	clock.Set(time.Date(2030, 1, 17, 0, 30, 0, 0, berlin))
	e.waitStatus(id, 60*time.Second, "completed")
	waitSim(t, s, 30*time.Second, func(c sim.Counters) bool { return c.ByImage["acme/app:2.0"] == 6 })
}

// TestScheduledBatchCutAtWindowEndResumesNextWindow: a batch is dispatched in chunks, each checking the
// window; the window closes after the first chunk, the process restarts, and the rest of the batch goes
// out in the next window, each device exactly once.
func TestScheduledBatchCutAtWindowEndResumesNextWindow(t *testing.T) {
	t.Parallel()
	berlin, clock := berlinClock(t, 23)
	e := newEnv(t)
	// No dispatcher at first: the test dispatches the first chunk itself, at a time of its choosing.
	e.startClocked(clock, 3, server.RoleIngest, server.RolePlanner, server.RoleHealthwatch, server.RoleStateAPI)
	e.admin("POST", "/api/v1/image-policies", scheduledPolicy(map[string]any{"batch_percentages": []int{100}}), 201)
	for i := range 10 {
		e.addDevice(fmt.Sprintf("cut-%02d", i), "cut", "acme/app:1.0")
	}
	e.push("acme/app", "2.0")
	id := e.latestRollout("acme/app:2.0")
	// Inside the window: healthwatch sets it in progress and requests batch 1.
	wait.For(t, 30*time.Second, func() error {
		if r := e.rollout(id); r.Status != "in_progress" {
			return fmt.Errorf("rollout %s", r.Status)
		}
		return nil
	})
	d, err := dispatcher.New(dispatcher.Config{Pool: e.srv.Pool, JS: e.srv.JS, Subjects: e.srv.Subjects,
		Log: logging.Nop(), Now: clock.Now, WindowChunk: 3})
	if err != nil {
		t.Fatal(err)
	}
	res, err := d.Dispatch(context.Background(), streams.DispatchV1{RolloutID: id, Batch: 1})
	if err != nil || res.Scheduled != 3 {
		t.Fatalf("first chunk: %+v %v", res, err)
	}

	// The window ends (02:00 is outside [22:00, 02:00)); the process restarts with a dispatcher, which
	// finds the batch's remaining commands and puts the rollout back to wait for the next window.
	clock.Set(time.Date(2030, 1, 16, 2, 0, 0, 0, berlin))
	e.stop()
	e.startClocked(clock, 3)
	next := time.Date(2030, 1, 16, 22, 0, 0, 0, berlin)
	wait.For(t, 30*time.Second, func() error {
		r := e.rollout(id)
		if at := e.nextBatchAt(id); r.Status != "scheduled" || at == nil || !at.Equal(next) {
			return fmt.Errorf("want scheduled until %v: %+v next %v", next, r, at)
		}
		return nil
	})
	if st := e.deviceStatuses(id); st["scheduled"] != 3 || st["pending"] != 7 || e.movedTargets("acme/app:2.0") != 3 {
		t.Fatalf("after the window closed: %v, %d targets moved", st, e.movedTargets("acme/app:2.0"))
	}

	// Next window: the rest of the batch goes out, in chunks, each device once.
	clock.Set(time.Date(2030, 1, 16, 22, 15, 0, 0, berlin))
	wait.For(t, 30*time.Second, func() error {
		if st := e.deviceStatuses(id); st["scheduled"] != 10 {
			return fmt.Errorf("devices %v", st)
		}
		return nil
	})
	if n := e.movedTargets("acme/app:2.0"); n != 10 {
		t.Fatalf("%d targets on the new image, want 10", n)
	}
	if n := e.countRows(`SELECT count(*) FROM rollout_events e, jsonb_array_elements_text(e.data->'devices') u
		WHERE e.rollout_id = $1 AND e.event_type = 'image.batch_devices_scheduled'`, id); n != 10 {
		t.Fatalf("%d devices named by batch_devices_scheduled events, want 10 (each device once)", n)
	}
	if r := e.rollout(id); r.Status != "in_progress" || r.CurrentBatch != 1 {
		t.Fatalf("rollout in the next window: %+v", r)
	}
}
