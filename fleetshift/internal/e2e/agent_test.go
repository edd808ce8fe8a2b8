package e2e

import (
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/fleetshift/fleetshift/agent/sim"
	"github.com/fleetshift/fleetshift/shared/wait"
)

func autoPolicy(e *env, pattern string) {
	e.admin("POST", "/api/v1/image-policies", map[string]any{
		"image_pattern": pattern, "update_strategy": "auto", "health_check_enabled": true,
		"health_check_timeout_seconds": 60, "max_failure_rate": 1, "min_sample_size": 0,
	}, 201)
}

// TestProvisionedDevicesFollowRolloutOverNATSAndHTTP: devices registered with a provisioning key follow a
// rollout over NATS, and over HTTP polling alone; a device offline during dispatch converges when it returns.
func TestProvisionedDevicesFollowRolloutOverNATSAndHTTP(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start()
	autoPolicy(e, "acme/app:*")
	overNATS := e.runSim("nats-fleet", 20, []string{"acme/app:1.0"}, func(c *sim.Config) { c.Transport = sim.TransportNATS; c.PollInterval = time.Hour })
	overHTTP := e.runSim("http-fleet", 20, []string{"acme/app:1.0"}, func(c *sim.Config) { c.Transport = sim.TransportHTTP })
	offlineState := t.TempDir()
	offline, goOffline := e.runSimStoppable("offline-fleet", 5, []string{"acme/app:1.0"}, func(c *sim.Config) { c.StateDir = offlineState })
	for _, s := range []*sim.Sim{overNATS, overHTTP, offline} {
		waitSim(t, s, 60*time.Second, func(c sim.Counters) bool { return c.Healthy == c.Devices })
	}
	offlineUUIDs := map[string]bool{}
	for _, d := range offline.Devices() {
		offlineUUIDs[d.UUID] = true
	}
	goOffline()

	e.push("acme/app", "1.1")
	id := e.latestRollout("acme/app:1.1")
	// NATS devices are pushed the target (their polling is an hour away); HTTP devices poll it.
	waitSim(t, overNATS, 30*time.Second, func(c sim.Counters) bool { return c.ByImage["acme/app:1.1"] == 20 && c.Healthy == 20 })
	waitSim(t, overHTTP, 30*time.Second, func(c sim.Counters) bool { return c.ByImage["acme/app:1.1"] == 20 && c.Healthy == 20 })

	// The offline devices were dispatched too; they converge on their first connect (same identities).
	wait.For(t, 30*time.Second, func() error {
		var scheduled int
		_ = e.db.Pool.QueryRow(t.Context(), `SELECT count(*) FROM device_rollout_status WHERE rollout_id = $1 AND device_uuid = ANY($2) AND status = 'scheduled'`,
			id, keys(offlineUUIDs)).Scan(&scheduled)
		if scheduled != 5 {
			var st []string
			_ = e.db.Pool.QueryRow(t.Context(), `SELECT array_agg(status || ':' || coalesce(error_message,'')) FROM device_rollout_status WHERE rollout_id = $1 AND device_uuid = ANY($2)`,
				id, keys(offlineUUIDs)).Scan(&st)
			return fmt.Errorf("offline devices scheduled: %d %v", scheduled, st)
		}
		return nil
	})
	back := e.runSim("offline-fleet", 5, []string{"acme/app:1.0"}, func(c *sim.Config) {
		c.StateDir = offlineState
		c.AdminToken = "" // returning devices must not have their targets reset
	})
	waitSim(t, back, 30*time.Second, func(c sim.Counters) bool { return c.ByImage["acme/app:1.1"] == 5 && c.Healthy == 5 })
	for _, d := range back.Devices() {
		if !offlineUUIDs[d.UUID] {
			t.Fatalf("returning device %s registered anew instead of reusing its identity", d.UUID)
		}
	}
	e.waitStatus(id, 60*time.Second, "completed")
}

// TestSimulatedFleetAutoRollout: 2,000 simulated devices, an auto policy and a webhook: every device reports
// the new image within a minute; with a 30% fail rate about 30% report unhealthy, reproducibly for a seed.
func TestSimulatedFleetAutoRollout(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start()
	autoPolicy(e, "acme/app:*")
	const n = 2000
	s := e.runSim("big-fleet", n, []string{"acme/app:1.0"}, func(c *sim.Config) {
		c.FailRates = []sim.Rate{mustRate(t, "acme/app:3.*=0.3")}
		c.Seed = 42
	})
	waitSim(t, s, 2*time.Minute, func(c sim.Counters) bool { return c.Healthy == n })

	e.push("acme/app", "2.0")
	start := time.Now()
	waitSim(t, s, time.Minute, func(c sim.Counters) bool { return c.ByImage["acme/app:2.0"] == n && c.Healthy == n })
	t.Logf("%d devices on the new image %s after the webhook", n, time.Since(start).Round(time.Millisecond))

	e.push("acme/app", "3.0")
	waitSim(t, s, time.Minute, func(c sim.Counters) bool { return c.ByImage["acme/app:3.0"] == n && c.Healthy+c.Failed == n })
	failed := s.Counters().Failed
	if math.Abs(float64(failed)/n-0.3) > 0.05 {
		t.Fatalf("fail rate 0.3: %d of %d devices unhealthy", failed, n)
	}
	// The server saw the same: the rollout's failed devices are the simulator's unhealthy ones.
	id := e.latestRollout("acme/app:3.0")
	r := e.waitStatus(id, time.Minute, "completed")
	if r.Failed != failed || r.Updated != n-failed {
		t.Fatalf("server counted %d failed / %d updated, the devices %d unhealthy", r.Failed, r.Updated, failed)
	}
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
