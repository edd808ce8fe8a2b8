package e2e

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetshift/fleetshift/agent/client"
	"github.com/fleetshift/fleetshift/agent/device"
	"github.com/fleetshift/fleetshift/agent/sim"
	"github.com/fleetshift/fleetshift/shared/wait"
)

// Dynamic inclusion in every phase of a rollout. Each test holds one batch open with a held device: a
// device created by the operator API with no agent behind it, so a rollout dispatches it and it stays
// scheduled (offline, inside its offline grace) until the test releases it by starting a simulated agent
// with its identity. That makes "while batch N is in progress" a state the test controls, not a race.

// joinPolicy is staged 50/100 with no batch delay; nothing auto-pauses, and a held device is neither
// timed out nor skipped while the test holds it.
func joinPolicy() map[string]any {
	return stagedPolicy(map[string]any{"batch_percentages": []int{50, 100}, "batch_delay_seconds": 0,
		"min_sample_size": 100, "health_check_timeout_seconds": 300, "offline_grace_seconds": 600})
}

// holdDevice creates device uuid in fleet running image, with no agent. release starts a simulated agent
// with the device's identity: it reads whatever target it has by then, runs it and reports.
func (e *env) holdDevice(uuid, fleet, image string) (release func() *sim.Sim) {
	e.t.Helper()
	key := e.addDevice(uuid, fleet, image)
	state := e.t.TempDir()
	id := client.Identity{UUID: uuid, APIKey: key, NATSURL: cmp.Or(e.srv.PublicNATSURL, e.srv.NATSURL)}
	if err := device.SaveIdentity(filepath.Join(state, "devices", "0"), id); err != nil {
		e.t.Fatal(err)
	}
	return func() *sim.Sim {
		return e.runSim(fleet, 1, nil, func(c *sim.Config) { c.StateDir, c.AdminToken, c.NamePrefix = state, "", uuid })
	}
}

// rowOf is device dev's row in rollout id: its batch and status ("" without one).
func (e *env) rowOf(id, dev string) (batch int, status string) {
	e.t.Helper()
	err := e.db.Pool.QueryRow(context.Background(), `SELECT batch_number, status FROM device_rollout_status
		WHERE rollout_id = $1 AND device_uuid = $2`, id, dev).Scan(&batch, &status)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		e.t.Fatal(err)
	}
	return batch, status
}

// waitRow waits for dev's row in rollout id to be in batch with one of statuses.
func (e *env) waitRow(id, dev string, batch int, timeout time.Duration, statuses ...string) {
	e.t.Helper()
	wait.For(e.t, timeout, func() error {
		b, s := e.rowOf(id, dev)
		for _, want := range statuses {
			if b == batch && s == want {
				return nil
			}
		}
		return fmt.Errorf("device %s in rollout %s: batch %d %q, want batch %d %v", dev, id, b, s, batch, statuses)
	})
}

// batchState is where a rollout stands: its status, current and completed batch.
func (e *env) batchState(id string) (status string, current, completed int) {
	e.t.Helper()
	if err := e.db.Pool.QueryRow(context.Background(), `SELECT status, current_batch, completed_batch FROM image_rollouts
		WHERE rollout_id = $1`, id).Scan(&status, &current, &completed); err != nil {
		e.t.Fatal(err)
	}
	return status, current, completed
}

// holds checks for d that the rollout stays as check says, every 200 ms.
func (e *env) holds(d time.Duration, check func() error) {
	e.t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if err := check(); err != nil {
			e.t.Fatal(err)
		}
	}
}

// joinedAndCompleted: rollout id completed; dev joined it (image.device_joined, actor dynamic_inclusion)
// into batch and completed there; the counters and batch sizes equal the device rows.
func (e *env) joinedAndCompleted(id, dev string, batch int) {
	e.t.Helper()
	e.waitStatus(id, 60*time.Second, "completed")
	if b, s := e.rowOf(id, dev); b != batch || s != "completed" {
		e.t.Fatalf("joined device %s: batch %d %q, want batch %d completed", dev, b, s, batch)
	}
	var joins int
	if err := e.db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM rollout_events WHERE rollout_id = $1
		AND device_uuid = $2 AND event_type = 'image.device_joined' AND actor = 'dynamic_inclusion'
		AND (data->>'batch')::int = $3`, id, dev, batch).Scan(&joins); err != nil || joins != 1 {
		e.t.Fatalf("image.device_joined events of %s into batch %d: %d %v", dev, batch, joins, err)
	}
	e.countersAgree(id)
	var sizesOK bool
	var detail string
	if err := e.db.Pool.QueryRow(context.Background(), `SELECT r.batch_sizes = x.sizes AND r.total_batches = cardinality(x.sizes)
			AND r.healthy_devices = r.updated_devices, format('batch_sizes %s rows %s total_batches %s healthy %s updated %s',
			r.batch_sizes, x.sizes, r.total_batches, r.healthy_devices, r.updated_devices)
		FROM image_rollouts r, LATERAL (SELECT array_agg(n ORDER BY b) AS sizes FROM (SELECT batch_number b, count(*)::int n
			FROM device_rollout_status WHERE rollout_id = r.rollout_id GROUP BY batch_number) g) x
		WHERE r.rollout_id = $1`, id).Scan(&sizesOK, &detail); err != nil {
		e.t.Fatal(err)
	}
	if !sizesOK {
		e.t.Fatalf("rollout %s: %s", id, detail)
	}
}

// runsImage reports whether every device of s is running and runs image (among its services).
func runsImage(s *sim.Sim, image string) bool {
	ds := s.Devices()
	if len(ds) != s.Counters().Devices {
		return false
	}
	for _, d := range ds {
		if !slices.Contains(strings.Split(d.Images, ","), image) {
			return false
		}
	}
	return true
}

// onImage waits until every device of s runs image, healthy.
func onImage(t *testing.T, s *sim.Sim, image string, timeout time.Duration) {
	t.Helper()
	waitSim(t, s, timeout, func(c sim.Counters) bool { return c.Healthy == c.Devices && runsImage(s, image) })
}

// simUUID is the uuid of the only device of s.
func simUUID(t *testing.T, s *sim.Sim) string {
	t.Helper()
	var uuid string
	wait.For(t, 30*time.Second, func() error {
		ds := s.Devices()
		if len(ds) != 1 {
			return fmt.Errorf("%d devices registered", len(ds))
		}
		uuid = ds[0].UUID
		return nil
	})
	return uuid
}

// TestJoinWhileBatchInProgress: a device that starts running the repository while batch 1 is
// dispatched and not yet healthy joins batch 1 and is dispatched at once, while the batch is still open;
// the rollout then completes with it.
func TestJoinWhileBatchInProgress(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start()
	e.admin("POST", "/api/v1/image-policies", joinPolicy(), 201)
	s := e.runSim("jb", 3, []string{"acme/app:1.0"}, nil)
	onImage(t, s, "acme/app:1.0", 60*time.Second)
	release := e.holdDevice("0-hold-jb", "jb", "acme/app:1.0") // sorts first: batch 1
	e.push("acme/app", "2.0")
	id := e.latestRollout("acme/app:2.0")
	e.waitRow(id, "0-hold-jb", 1, 30*time.Second, "scheduled")

	late := e.runSim("jb-late", 1, []string{"acme/app:1.0"}, nil)
	dev := simUUID(t, late)
	e.waitRow(id, dev, 1, 30*time.Second, "pending", "scheduled", "updating", "health_checking", "completed")
	// Dispatched and healthy while batch 1 is still open (the held device holds it).
	onImage(t, late, "acme/app:2.0", 30*time.Second)
	e.waitRow(id, dev, 1, 30*time.Second, "completed")
	if st, cur, done := e.batchState(id); st != "in_progress" || cur != 1 || done != 0 {
		t.Fatalf("rollout %s while batch 1 is held: %s, batch %d, completed %d", id, st, cur, done)
	}

	held := release()
	e.joinedAndCompleted(id, dev, 1)
	onImage(t, held, "acme/app:2.0", 30*time.Second)
	onImage(t, s, "acme/app:2.0", 30*time.Second)
	if r := e.rollout(id); r.Total != 5 {
		t.Fatalf("total_devices %d, want 5 (4 planned + 1 joined)", r.Total)
	}
}

// TestJoinDuringLastBatch: a device that joins while the last batch is in progress is dispatched in
// that batch, and the rollout does not complete while it is unfinished, even once every planned device
// is healthy.
func TestJoinDuringLastBatch(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start()
	e.admin("POST", "/api/v1/image-policies", joinPolicy(), 201)
	s := e.runSim("jl", 3, []string{"acme/app:1.0"}, nil)
	onImage(t, s, "acme/app:1.0", 60*time.Second)
	releaseHeld := e.holdDevice("z-hold-jl", "jl", "acme/app:1.0") // sorts last: batch 2 of 2
	e.push("acme/app", "2.0")
	id := e.latestRollout("acme/app:2.0")
	e.waitRow(id, "z-hold-jl", 2, 60*time.Second, "scheduled")

	// The joiner has no agent yet either: it is dispatched (its row scheduled) but cannot finish.
	releaseJoiner := e.holdDevice("j-late-jl", "jl-late", "acme/app:1.0")
	e.waitRow(id, "j-late-jl", 2, 30*time.Second, "scheduled")

	held := releaseHeld()
	onImage(t, held, "acme/app:2.0", 30*time.Second)
	e.waitRow(id, "z-hold-jl", 2, 30*time.Second, "completed")
	// Every planned device is done; the joined one is not: the rollout waits for it.
	e.holds(3*time.Second, func() error {
		if st, cur, _ := e.batchState(id); st != "in_progress" || cur != 2 {
			return fmt.Errorf("rollout %s is %s at batch %d with its joined device unfinished, want in_progress at 2", id, st, cur)
		}
		return nil
	})

	joiner := releaseJoiner()
	onImage(t, joiner, "acme/app:2.0", 30*time.Second)
	e.joinedAndCompleted(id, "j-late-jl", 2)
	onImage(t, s, "acme/app:2.0", 30*time.Second)
}

// TestJoinWhilePaused: a device that joins a paused rollout mid-batch is not dispatched until the
// rollout is resumed; then it is, in that batch.
func TestJoinWhilePaused(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start()
	e.admin("POST", "/api/v1/image-policies", joinPolicy(), 201)
	s := e.runSim("jp", 3, []string{"acme/app:1.0"}, nil)
	onImage(t, s, "acme/app:1.0", 60*time.Second)
	release := e.holdDevice("0-hold-jp", "jp", "acme/app:1.0")
	e.push("acme/app", "2.0")
	id := e.latestRollout("acme/app:2.0")
	e.waitRow(id, "0-hold-jp", 1, 30*time.Second, "scheduled")
	_, op := e.operatorToken("pauser", "operate")
	if r := e.httpVerb(op, "pause", id, ""); r.Code != 200 || r.Status != "paused" {
		t.Fatalf("pause: %+v", r)
	}

	late := e.runSim("jp-late", 1, []string{"acme/app:1.0"}, nil)
	dev := simUUID(t, late)
	e.waitRow(id, dev, 1, 30*time.Second, "pending")
	onImage(t, late, "acme/app:1.0", 30*time.Second)
	e.holds(3*time.Second, func() error {
		if b, st := e.rowOf(id, dev); b != 1 || st != "pending" {
			return fmt.Errorf("joined device of a paused rollout: batch %d %q, want batch 1 pending", b, st)
		}
		if runsImage(late, "acme/app:2.0") {
			return fmt.Errorf("the joined device runs the new image while the rollout is paused: %s", late.Counters())
		}
		return nil
	})

	if r := e.httpVerb(op, "resume", id, ""); r.Code != 200 || r.Status != "in_progress" {
		t.Fatalf("resume: %+v", r)
	}
	onImage(t, late, "acme/app:2.0", 30*time.Second)
	e.waitRow(id, dev, 1, 30*time.Second, "completed")
	if st, cur, done := e.batchState(id); st != "in_progress" || cur != 1 || done != 0 {
		t.Fatalf("rollout %s after resume, batch 1 held: %s, batch %d, completed %d", id, st, cur, done)
	}
	held := release()
	e.joinedAndCompleted(id, dev, 1)
	onImage(t, held, "acme/app:2.0", 30*time.Second)
	onImage(t, s, "acme/app:2.0", 30*time.Second)
}

// TestJoinAtRegistrationFromFleetDefault: a device registering with a provisioning key of a fleet whose
// default target runs the repository joins the active rollout at registration (it has no other target
// write: no operator sets one), is dispatched in the batch in progress, and ends on the new image; the
// completed rollout moves the fleet's default too.
func TestJoinAtRegistrationFromFleetDefault(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start()
	e.admin("POST", "/api/v1/image-policies", joinPolicy(), 201)
	s := e.runSim("jr", 3, []string{"acme/app:1.0"}, nil) // sets the fleet's default target to acme/app:1.0
	onImage(t, s, "acme/app:1.0", 60*time.Second)
	release := e.holdDevice("0-hold-jr", "jr", "acme/app:1.0")
	e.push("acme/app", "2.0")
	id := e.latestRollout("acme/app:2.0")
	e.waitRow(id, "0-hold-jr", 1, 30*time.Second, "scheduled")

	// No admin token: the simulated device only registers and runs what the server gives it.
	late := e.runSim("jr", 1, nil, func(c *sim.Config) { c.AdminToken, c.NamePrefix = "", "jr-late" })
	dev := simUUID(t, late)
	// The join happens in the registration transaction: it exists as soon as the device does.
	var joined int
	if err := e.db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM rollout_events ev
		WHERE ev.rollout_id = $1 AND ev.device_uuid = $2 AND ev.event_type = 'image.device_joined'`, id, dev).Scan(&joined); err != nil || joined != 1 {
		t.Fatalf("image.device_joined for %s right after its registration: %d %v", dev, joined, err)
	}
	onImage(t, late, "acme/app:2.0", 30*time.Second)
	e.waitRow(id, dev, 1, 30*time.Second, "completed")
	if st, cur, done := e.batchState(id); st != "in_progress" || cur != 1 || done != 0 {
		t.Fatalf("rollout %s while batch 1 is held: %s, batch %d, completed %d", id, st, cur, done)
	}
	held := release()
	e.joinedAndCompleted(id, dev, 1)
	onImage(t, held, "acme/app:2.0", 30*time.Second)
	var apps string
	if err := e.db.Pool.QueryRow(context.Background(), `SELECT apps::text FROM fleet_target_state WHERE fleet_id = 'jr'`).Scan(&apps); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(apps, "acme/app:2.0") || strings.Contains(apps, "acme/app:1.0") {
		t.Fatalf("fleet jr default after the rollout: %s, want acme/app:2.0", apps)
	}
}
