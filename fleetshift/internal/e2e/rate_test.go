package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fleetshift/fleetshift/agent/sim"
	"github.com/fleetshift/fleetshift/shared/wait"
)

func ratePolicy(extra map[string]any) map[string]any {
	return mergeMaps(map[string]any{"image_pattern": "acme/app:*", "update_strategy": "rate", "rate_base_per_minute": 6,
		"rate_increment_factor": 2, "rate_increase_criteria": "notified", "rate_increase_threshold": 3,
		"rate_maximum_per_minute": 24, "health_check_enabled": true, "health_check_timeout_seconds": 60,
		"max_failure_rate": 0.2, "min_sample_size": 2, "auto_rollback_enabled": true}, extra)
}

// rateDispatched is the rollout's rate_dispatched.
func (e *env) rateDispatched(id string) int {
	return e.countRows(`SELECT rate_dispatched FROM image_rollouts WHERE rollout_id = $1`, id)
}

// waitDispatched waits until the rate rollout has dispatched n devices.
func (e *env) waitDispatched(id string, n int) {
	e.t.Helper()
	wait.For(e.t, 30*time.Second, func() error {
		if got := e.rateDispatched(id); got != n {
			return fmt.Errorf("%d devices dispatched, want %d", got, n)
		}
		return nil
	})
}

// TestRateRolloutRampsToCompletion: webhook -> a rate rollout (one batch) that dispatches one device
// every 10 s (6/min), raises the rate to 12 and 24 after every 3 devices notified, each raise an event,
// and completes once every simulated device reports healthy. The clock is the services' injected one:
// at each instant exactly the devices due are out.
func TestRateRolloutRampsToCompletion(t *testing.T) {
	t.Parallel()
	start := time.Date(2030, 3, 1, 12, 0, 0, 0, time.UTC)
	clock := &fakeClock{t: start}
	e := newEnv(t)
	e.startClocked(clock, 0)
	// The policy from the CLI's kebab-case flags.
	var pol map[string]any
	e.cliJSON(&pol, "policies", "create", "--image-pattern", "acme/app:*", "--update-strategy", "rate",
		"--rate-base-per-minute", "6", "--rate-increment-factor", "2", "--rate-increase-criteria", "notified",
		"--rate-increase-threshold", "3", "--rate-maximum-per-minute", "24", "--health-check-timeout-seconds", "60",
		"--max-failure-rate", "0.2", "--min-sample-size", "2", "--auto-rollback-enabled", "true")
	if pol["update_strategy"] != "rate" || pol["rate_base_per_minute"] != 6.0 || pol["rate_maximum_per_minute"] != 24.0 ||
		pol["rate_increase_threshold"] != 3.0 || pol["rate_increase_criteria"] != "notified" {
		t.Fatalf("policy from the CLI: %v", pol)
	}
	var errOut syncBuffer
	if err := e.fleetshift(context.Background(), &errOut, e.srv.AdminToken, "policies", "create", "--image-pattern", "x/y:*",
		"--update-strategy", "rate"); err == nil || !strings.Contains(err.Error(), "rate_base_per_minute") ||
		strings.Contains(strings.TrimSpace(err.Error()), "\n") {
		t.Fatalf("a rate policy without its base rate: err=%v", err)
	}
	s := e.runSim("rate", 8, []string{"acme/app:1.0"}, nil)
	waitSim(t, s, 60*time.Second, func(c sim.Counters) bool { return c.ByImage["acme/app:1.0"] == 8 })

	// The dry run: one batch of 8, 6/min, one device every 10 s.
	var preview struct {
		Strategy string `json:"strategy"`
		Batches  []struct {
			Size int `json:"size"`
		} `json:"batches"`
		Rate struct {
			Base     int     `json:"base_per_minute"`
			Chunk    int     `json:"chunk_size"`
			Interval float64 `json:"interval_seconds"`
		} `json:"rate"`
	}
	e.admin("POST", "/api/v1/rollouts/preview", map[string]any{"image": "acme/app:2.0"}, 200).json(t, &preview)
	if preview.Strategy != "rate" || len(preview.Batches) != 1 || preview.Batches[0].Size != 8 ||
		preview.Rate.Base != 6 || preview.Rate.Chunk != 1 || preview.Rate.Interval != 10 {
		t.Fatalf("preview: %+v", preview)
	}

	e.push("acme/app", "2.0")
	id := e.latestRollout("acme/app:2.0")
	// Base 6/min: 1 at once, then one every 10 s; 3 notified -> 12/min (every 5 s); 6 -> 24/min (2.5 s).
	for _, step := range []struct {
		at time.Duration
		n  int
	}{{0, 1}, {10 * time.Second, 2}, {20 * time.Second, 3}, {30 * time.Second, 4}, {35 * time.Second, 5},
		{40 * time.Second, 6}, {45 * time.Second, 7}, {47500 * time.Millisecond, 8}} {
		clock.Set(start.Add(step.at))
		e.waitDispatched(id, step.n)
		if step.at == 30*time.Second {
			// Between due times nothing more goes out, however often the timer runs.
			clock.Set(start.Add(33 * time.Second))
			time.Sleep(time.Second)
			if got := e.rateDispatched(id); got != 4 {
				t.Fatalf("%d devices out at +33s, want 4", got)
			}
		}
	}
	r := e.waitStatus(id, 60*time.Second, "completed")
	if r.Total != 8 || r.Updated != 8 || r.Failed != 0 || r.CurrentBatch != 1 {
		t.Fatalf("completed rate rollout: %+v", r)
	}
	e.countersAgree(id)
	waitSim(t, s, 30*time.Second, func(c sim.Counters) bool { return c.ByImage["acme/app:2.0"] == 8 })

	var got struct {
		Strategy     string `json:"strategy"`
		TotalBatches int    `json:"total_batches"`
		Rate         int    `json:"rate_per_minute"`
		Dispatched   int    `json:"rate_dispatched"`
	}
	e.admin("GET", "/api/v1/rollouts/"+id, nil, 200).json(t, &got)
	if got.Strategy != "rate" || got.TotalBatches != 1 || got.Rate != 24 || got.Dispatched != 8 {
		t.Fatalf("GET rollout: %+v", got)
	}
	var shown syncBuffer
	if err := e.fleetshift(context.Background(), &shown, e.srv.AdminToken, "rollouts", "show", id); err != nil ||
		!strings.Contains(shown.String(), "rate_per_minute") || !strings.Contains(shown.String(), "rate_dispatched") {
		t.Fatalf("rollouts show: %v\n%s", err, shown.String())
	}
	var listed syncBuffer
	if err := e.fleetshift(context.Background(), &listed, e.srv.AdminToken, "rollouts", "list"); err != nil ||
		!strings.Contains(listed.String(), "RATE_PER_MINUTE") || !strings.Contains(listed.String(), " 24") {
		t.Fatalf("rollouts list: %v\n%s", err, listed.String())
	}
	rows, err := e.db.Pool.Query(context.Background(), `SELECT format('%s->%s@%s', data->>'from', data->>'to', data->>'count')
		FROM rollout_events WHERE rollout_id = $1 AND event_type = 'image.rollout_rate_increased' ORDER BY id`, id)
	if err != nil {
		t.Fatal(err)
	}
	var raises []string
	for rows.Next() {
		var s string
		_ = rows.Scan(&s)
		raises = append(raises, s)
	}
	rows.Close()
	if strings.Join(raises, ",") != "6->12@3,12->24@6" {
		t.Fatalf("rate raises: %v", raises)
	}
	if ev := strings.Join(e.eventTypes(id, "image.rollout_started", "image.batch_started", "image.rollout_completed"), ","); ev != "rollout_started,batch_started,rollout_completed" {
		t.Fatalf("events: %s", ev)
	}
}

// TestRateRolloutPausesOnFailures: every device fails on the new image; once min_sample_size devices
// finished above max_failure_rate the rate rollout pauses by itself, its failed devices are rolled
// back, and however much time passes nothing more is dispatched; cancel then skips the rest.
func TestRateRolloutPausesOnFailures(t *testing.T) {
	t.Parallel()
	start := time.Date(2030, 3, 1, 12, 0, 0, 0, time.UTC)
	clock := &fakeClock{t: start}
	e := newEnv(t)
	e.startClocked(clock, 0)
	e.admin("POST", "/api/v1/image-policies", ratePolicy(map[string]any{"rate_base_per_minute": 60,
		"rate_increase_criteria": "succeeded", "rate_increase_threshold": 60, "rate_maximum_per_minute": 60}), 201)
	s := e.runSim("ratefail", 10, []string{"acme/app:1.0"}, func(c *sim.Config) {
		c.FailRates = []sim.Rate{mustRate(t, "acme/app:2.*=1.0")}
	})
	waitSim(t, s, 60*time.Second, func(c sim.Counters) bool { return c.ByImage["acme/app:1.0"] == 10 })

	e.push("acme/app", "2.0")
	id := e.latestRollout("acme/app:2.0")
	// One device a second; each waits for its report before the clock moves on.
	for i := 1; i <= 10 && e.rollout(id).Status != "paused"; i++ {
		wait.For(t, 30*time.Second, func() error {
			if e.rollout(id).Status == "paused" || e.rateDispatched(id) >= i {
				return nil
			}
			return fmt.Errorf("%d dispatched, want %d", e.rateDispatched(id), i)
		})
		wait.For(t, 30*time.Second, func() error {
			if e.rollout(id).Status == "paused" || e.countRows(`SELECT count(*) FROM device_rollout_status WHERE rollout_id = $1
				AND status IN ('failed', 'rolled_back')`, id) >= i {
				return nil
			}
			return fmt.Errorf("device %d has not failed yet", i)
		})
		clock.Set(start.Add(time.Duration(i) * time.Second))
	}
	r := e.waitStatus(id, 30*time.Second, "paused")
	if !r.AutoPaused {
		t.Fatalf("paused rollout: %+v", r)
	}
	out := e.rateDispatched(id)
	if out < 2 || out >= 10 {
		t.Fatalf("%d devices dispatched before the pause, want at least min_sample_size (2) and not all", out)
	}
	// Auto rollback: the failed devices go back to their old image.
	wait.For(t, 30*time.Second, func() error {
		if n := e.countRows(`SELECT count(*) FROM device_rollout_status WHERE rollout_id = $1 AND status = 'rolled_back'`, id); n != out {
			return fmt.Errorf("%d of %d dispatched devices rolled back", n, out)
		}
		return nil
	})

	// Ten minutes pass in steps: the paused rollout dispatches nothing.
	for i := 1; i <= 5; i++ {
		clock.Set(start.Add(time.Duration(i) * 2 * time.Minute))
		time.Sleep(300 * time.Millisecond)
	}
	if got := e.rateDispatched(id); got != out {
		t.Fatalf("%d devices dispatched while paused, had %d", got, out)
	}
	if st := e.deviceStatuses(id); st["pending"] != 10-out || e.rollout(id).Status != "paused" {
		t.Fatalf("while paused: %v, status %s", st, e.rollout(id).Status)
	}
	if n := e.countRows(`SELECT count(*) FROM rollout_events e, jsonb_array_elements_text(e.data->'devices') u
		WHERE e.rollout_id = $1 AND e.event_type = 'image.batch_devices_scheduled'`, id); n != out {
		t.Fatalf("%d devices named by batch_devices_scheduled events, want %d", n, out)
	}

	// Cancel: the devices never dispatched are skipped; time passing still dispatches nothing.
	e.admin("POST", "/api/v1/rollouts/"+id+"/cancel", nil, 200)
	clock.Set(start.Add(time.Hour))
	time.Sleep(500 * time.Millisecond)
	if st := e.deviceStatuses(id); st["skipped"] != 10-out || st["pending"] != 0 || e.rateDispatched(id) != out {
		t.Fatalf("after cancel: %v, %d dispatched", st, e.rateDispatched(id))
	}
}
