package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/fleetshift/fleetshift/agent/sim"
	"github.com/fleetshift/fleetshift/shared/wait"
)

// presenceCounts is how many devices of fleet are online and offline, and how many presence events
// of each kind were recorded.
func (e *env) presenceCounts(fleet string) (online, offline, onlineEvents, offlineEvents int) {
	e.t.Helper()
	err := e.srv.Pool.QueryRow(context.Background(), `SELECT
			count(*) FILTER (WHERE is_online), count(*) FILTER (WHERE NOT is_online AND offline_since IS NOT NULL),
			(SELECT count(*) FROM rollout_events ev JOIN devices x ON x.uuid = ev.device_uuid
			 WHERE x.fleet_id = $1 AND ev.event_type = 'device.online' AND ev.rollout_id IS NULL),
			(SELECT count(*) FROM rollout_events ev JOIN devices x ON x.uuid = ev.device_uuid
			 WHERE x.fleet_id = $1 AND ev.event_type = 'device.offline' AND ev.rollout_id IS NULL)
		FROM devices WHERE fleet_id = $1`, fleet).Scan(&online, &offline, &onlineEvents, &offlineEvents)
	if err != nil {
		e.t.Fatal(err)
	}
	return
}

// waitDisconnected waits until all n devices of fleet are offline, each with one device.offline event
// of reason "disconnected" (the server's disconnect advisory, not missed heartbeats).
func (e *env) waitDisconnected(fleet string, n int) {
	e.t.Helper()
	wait.For(e.t, 30*time.Second, func() error {
		var events int
		if err := e.srv.Pool.QueryRow(context.Background(), `SELECT count(*) FROM rollout_events ev JOIN devices x ON x.uuid = ev.device_uuid
			WHERE x.fleet_id = $1 AND ev.event_type = 'device.offline' AND ev.data->>'reason' = 'disconnected'`, fleet).Scan(&events); err != nil {
			return err
		}
		if on, off, _, _ := e.presenceCounts(fleet); on != 0 || off != n || events != n {
			return fmt.Errorf("online %d, offline %d, disconnected events %d", on, off, events)
		}
		return nil
	})
}

// TestDevicesGoOfflineAndOnline: simulated devices heartbeating are online; stopped, they go offline
// after the missed heartbeats (device.offline events); started again with the same identities they
// come back online (device.online events).
func TestDevicesGoOfflineAndOnline(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.srv = e.startWith(map[string]string{"FLEETSHIFT_HEARTBEAT_SECONDS": "1", "FLEETSHIFT_OFFLINE_AFTER_MISSED": "2"})
	autoPolicy(e, "acme/other:*")
	state := t.TempDir()
	fast := func(c *sim.Config) { c.Heartbeat = 300 * time.Millisecond; c.StateDir = state }
	_, stop := e.runSimStoppable("presence", 3, []string{"acme/app:1.0"}, fast)
	wait.For(t, 60*time.Second, func() error {
		if on, _, evOn, _ := e.presenceCounts("presence"); on != 3 || evOn != 3 {
			return fmt.Errorf("online %d, online events %d", on, evOn)
		}
		return nil
	})
	stop()
	wait.For(t, 60*time.Second, func() error {
		if on, off, _, evOff := e.presenceCounts("presence"); on != 0 || off != 3 || evOff != 3 {
			return fmt.Errorf("online %d, offline %d, offline events %d", on, off, evOff)
		}
		return nil
	})
	var body struct {
		Devices []struct {
			IsOnline bool `json:"is_online"`
		} `json:"devices"`
	}
	e.admin("GET", "/api/v1/devices?fleet_id=presence", nil, 200).json(t, &body)
	for _, d := range body.Devices {
		if d.IsOnline {
			t.Fatalf("GET /api/v1/devices: a stopped device is online: %+v", body)
		}
	}
	e.runSim("presence", 3, []string{"acme/app:1.0"}, fast)
	wait.For(t, 60*time.Second, func() error {
		if on, _, evOn, _ := e.presenceCounts("presence"); on != 3 || evOn != 6 {
			return fmt.Errorf("online %d, online events %d", on, evOn)
		}
		return nil
	})
}

// joinedBatch is the batch a device row of rollout id is in, or 0 without one.
func (e *env) joinedBatches(id string) map[int]int {
	e.t.Helper()
	rows, err := e.srv.Pool.Query(context.Background(), `SELECT d.batch_number FROM device_rollout_status d
		JOIN rollout_events ev ON ev.rollout_id = d.rollout_id AND ev.device_uuid = d.device_uuid
		WHERE d.rollout_id = $1 AND ev.event_type = 'image.device_joined'`, id)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	out := map[int]int{}
	for rows.Next() {
		var b int
		if err := rows.Scan(&b); err != nil {
			e.t.Fatal(err)
		}
		out[b]++
	}
	return out
}

// TestDevicesJoinActiveRollout: devices that start running the repository while a rollout of it is
// active join it: before start (pending: batch 1), while it awaits approval after batch 1 (batch 2);
// they are updated with the others, and total_devices counts them. After completion a new device
// joins nothing.
func TestDevicesJoinActiveRollout(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start()
	e.admin("POST", "/api/v1/image-policies", stagedPolicy(map[string]any{"update_strategy": "manual",
		"batch_percentages": []int{50, 100}, "batch_delay_seconds": 0, "batch_approval": true, "min_sample_size": 100}), 201)
	s := e.runSim("join", 4, []string{"acme/app:1.0"}, nil)
	waitSim(t, s, 60*time.Second, func(c sim.Counters) bool { return c.ByImage["acme/app:1.0"] == 4 })
	e.push("acme/app", "2.0")
	id := e.latestRollout("acme/app:2.0")
	e.waitStatus(id, 30*time.Second, "pending")

	early := e.runSim("join-early", 1, []string{"acme/app:1.0"}, nil)
	wait.For(t, 30*time.Second, func() error {
		if got := e.joinedBatches(id); got[1] != 1 {
			return fmt.Errorf("joined before start: %v", got)
		}
		return nil
	})
	_, op := e.operatorToken("joiner", "operate")
	if r := e.httpVerb(op, "start", id, ""); r.Code != 200 {
		t.Fatalf("start: %+v", r)
	}
	e.waitStatus(id, 60*time.Second, "awaiting_approval")

	late := e.runSim("join-late", 1, []string{"acme/app:1.0"}, nil)
	wait.For(t, 30*time.Second, func() error {
		if got := e.joinedBatches(id); got[1] != 1 || got[2] != 1 {
			return fmt.Errorf("joined while awaiting approval: %v", got)
		}
		return nil
	})
	if r := e.httpVerb(op, "approve", id, ""); r.Code != 200 {
		t.Fatalf("approve: %+v", r)
	}
	r := e.waitStatus(id, 60*time.Second, "completed")
	if r.Total != 6 {
		t.Fatalf("total_devices %d, want 6 (4 planned + 2 joined)", r.Total)
	}
	for _, x := range []*sim.Sim{s, early, late} {
		waitSim(t, x, 30*time.Second, func(c sim.Counters) bool { return c.ByImage["acme/app:1.0"] == 0 })
	}

	after := e.runSim("join-after", 1, []string{"acme/app:1.0"}, nil)
	waitSim(t, after, 30*time.Second, func(c sim.Counters) bool { return c.ByImage["acme/app:1.0"] == 1 })
	var n int
	if err := e.srv.Pool.QueryRow(context.Background(), `SELECT count(*) FROM device_rollout_status d JOIN devices x ON x.uuid = d.device_uuid
		WHERE d.rollout_id = $1 AND x.fleet_id = 'join-after'`, id).Scan(&n); err != nil || n != 0 {
		t.Fatalf("a device registered after completion joined the rollout: %d %v", n, err)
	}
}

// TestOfflineDeviceIsSkippedAfterGrace: a device offline when its batch is dispatched neither fails by
// health timeout nor blocks the rollout: after offline_grace_seconds it is skipped (image.device_skipped)
// and the rollout completes with no failure; when it comes back it gets its newest target and runs it.
func TestOfflineDeviceIsSkippedAfterGrace(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.srv = e.startWith(map[string]string{"FLEETSHIFT_HEARTBEAT_SECONDS": "1", "FLEETSHIFT_OFFLINE_AFTER_MISSED": "2"})
	e.admin("POST", "/api/v1/image-policies", map[string]any{"image_pattern": "acme/app:*", "update_strategy": "auto",
		"health_check_timeout_seconds": 6, "offline_grace_seconds": 10, "offline_action": "skip"}, 201)
	state := t.TempDir()
	fast := func(c *sim.Config) { c.Heartbeat = 300 * time.Millisecond }
	online := e.runSim("grace-on", 3, []string{"acme/app:1.0"}, fast)
	_, stop := e.runSimStoppable("grace-off", 1, []string{"acme/app:1.0"},
		func(c *sim.Config) { fast(c); c.StateDir = state })
	wait.For(t, 60*time.Second, func() error {
		if on, _, _, _ := e.presenceCounts("grace-off"); on != 1 {
			return fmt.Errorf("not online yet")
		}
		if on, _, _, _ := e.presenceCounts("grace-on"); on != 3 {
			return fmt.Errorf("not online yet")
		}
		return nil
	})
	stop()
	wait.For(t, 60*time.Second, func() error {
		if _, off, _, _ := e.presenceCounts("grace-off"); off != 1 {
			return fmt.Errorf("not offline yet")
		}
		return nil
	})

	e.push("acme/app", "2.0")
	id := e.latestRollout("acme/app:2.0")
	r := e.waitStatus(id, 60*time.Second, "completed")
	if r.Failed != 0 || r.Healthy != 3 || r.Total != 4 {
		t.Fatalf("rollout with an offline device: %+v", r)
	}
	if st := e.deviceStatuses(id); st["skipped"] != 1 || st["completed"] != 3 {
		t.Fatalf("device statuses: %v", st)
	}
	if got := e.eventTypes(id, "image.device_skipped", "image.device_failed"); len(got) != 1 || got[0] != "device_skipped" {
		t.Fatalf("events: %v", got)
	}
	waitSim(t, online, 30*time.Second, func(c sim.Counters) bool { return c.ByImage["acme/app:2.0"] == 3 })

	back := e.runSim("grace-off", 1, []string{"acme/app:1.0"}, func(c *sim.Config) { fast(c); c.StateDir = state })
	waitSim(t, back, 60*time.Second, func(c sim.Counters) bool { return c.ByImage["acme/app:2.0"] == 1 })
}

// TestDisconnectedDeviceIsOfflineAtOnce: with the default heartbeat (offline only after 90 s of
// silence), a device whose NATS connection closes is offline at once (disconnect advisory, reason
// "disconnected") and online again when it reconnects (connect advisory or its first report).
func TestDisconnectedDeviceIsOfflineAtOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start()
	state := t.TempDir()
	_, stop := e.runSimStoppable("disc", 2, []string{"acme/app:1.0"}, func(c *sim.Config) { c.StateDir = state })
	wait.For(t, 60*time.Second, func() error {
		if on, _, _, _ := e.presenceCounts("disc"); on != 2 {
			return fmt.Errorf("online %d", on)
		}
		return nil
	})
	stop()
	e.waitDisconnected("disc", 2)
	e.runSim("disc", 2, []string{"acme/app:1.0"}, func(c *sim.Config) { c.StateDir = state })
	wait.For(t, 60*time.Second, func() error {
		if on, _, evOn, _ := e.presenceCounts("disc"); on != 2 || evOn != 4 {
			return fmt.Errorf("online %d, online events %d", on, evOn)
		}
		return nil
	})
}

// TestDynamicInclusionOptOut: with dynamic_inclusion false a device registering while the rollout is
// pending does not join it.
func TestDynamicInclusionOptOut(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start()
	e.admin("POST", "/api/v1/image-policies", stagedPolicy(map[string]any{"update_strategy": "manual",
		"dynamic_inclusion": false}), 201)
	s := e.runSim("optout", 2, []string{"acme/app:1.0"}, nil)
	waitSim(t, s, 60*time.Second, func(c sim.Counters) bool { return c.ByImage["acme/app:1.0"] == 2 })
	e.push("acme/app", "2.0")
	id := e.latestRollout("acme/app:2.0")
	e.waitStatus(id, 30*time.Second, "pending")
	late := e.runSim("optout-late", 1, []string{"acme/app:1.0"}, nil)
	waitSim(t, late, 60*time.Second, func(c sim.Counters) bool { return c.ByImage["acme/app:1.0"] == 1 })
	if got := e.joinedBatches(id); len(got) != 0 {
		t.Fatalf("joined despite dynamic_inclusion false: %v", got)
	}
	if r := e.rollout(id); r.Total != 2 {
		t.Fatalf("total_devices %d, want 2", r.Total)
	}
}
