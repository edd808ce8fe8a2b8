package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fleetshift/fleetshift/agent/sim"
	"github.com/fleetshift/fleetshift/fleetshift/internal/server"
	"github.com/fleetshift/fleetshift/shared/wait"
)

// push sends a Docker Hub delivery for acme/app:tag and returns the event id.
func (e *env) push(repo, tag string) string {
	e.t.Helper()
	ns, name, _ := strings.Cut(repo, "/")
	body := fmt.Sprintf(`{"push_data":{"tag":%q,"pushed_at":%d,"pusher":"ci"},"repository":{"repo_name":%q,"name":%q,"namespace":%q}}`,
		tag, time.Now().UnixNano(), repo, name, ns)
	r := e.call("POST", "/api/v1/webhooks/docker-registry?token="+e.srv.WebhookToken, []byte(body), nil)
	if r.status != 202 {
		e.t.Fatalf("push %s:%s: %d %s", repo, tag, r.status, r.body)
	}
	var acc struct {
		EventID string `json:"event_id"`
	}
	r.json(e.t, &acc)
	return acc.EventID
}

type rolloutRow struct {
	ID                                          string
	Status                                      string
	Total, Updated, Failed, Healthy, RolledBack int
	CurrentBatch                                int
	AutoPaused                                  bool
}

// latestRollout waits for a rollout of image to exist and returns its id.
func (e *env) latestRollout(image string) string {
	e.t.Helper()
	var id string
	wait.For(e.t, 30*time.Second, func() error {
		return e.db.Pool.QueryRow(context.Background(),
			`SELECT rollout_id::text FROM image_rollouts WHERE new_image LIKE $1 || '%' ORDER BY created_at DESC LIMIT 1`, image).Scan(&id)
	})
	return id
}

func (e *env) rollout(id string) rolloutRow {
	e.t.Helper()
	var r rolloutRow
	err := e.db.Pool.QueryRow(context.Background(), `SELECT rollout_id::text, status, total_devices, updated_devices,
		failed_devices, healthy_devices, rolled_back_devices, current_batch, auto_paused FROM image_rollouts WHERE rollout_id = $1`, id).
		Scan(&r.ID, &r.Status, &r.Total, &r.Updated, &r.Failed, &r.Healthy, &r.RolledBack, &r.CurrentBatch, &r.AutoPaused)
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

func (e *env) waitStatus(id string, timeout time.Duration, statuses ...string) rolloutRow {
	e.t.Helper()
	var r rolloutRow
	wait.For(e.t, timeout, func() error {
		r = e.rollout(id)
		for _, s := range statuses {
			if r.Status == s {
				return nil
			}
		}
		return fmt.Errorf("rollout %s is %s (%+v), want %v", id, r.Status, r, statuses)
	})
	return r
}

// countersAgree checks the rollout counters against its device rows.
func (e *env) countersAgree(id string) {
	e.t.Helper()
	var ok bool
	var detail string
	err := e.db.Pool.QueryRow(context.Background(), `
		SELECT r.updated_devices = count(*) FILTER (WHERE d.status = 'completed')
		   AND r.failed_devices = count(*) FILTER (WHERE d.status = 'failed')
		   AND r.rolled_back_devices = count(*) FILTER (WHERE d.status = 'rolled_back')
		   AND r.total_devices = count(*),
		       format('updated %s/%s failed %s/%s rolled_back %s/%s total %s/%s', r.updated_devices,
		              count(*) FILTER (WHERE d.status = 'completed'), r.failed_devices, count(*) FILTER (WHERE d.status = 'failed'),
		              r.rolled_back_devices, count(*) FILTER (WHERE d.status = 'rolled_back'), r.total_devices, count(*))
		FROM image_rollouts r JOIN device_rollout_status d USING (rollout_id)
		WHERE r.rollout_id = $1 GROUP BY r.rollout_id`, id).Scan(&ok, &detail)
	if err != nil {
		e.t.Fatal(err)
	}
	if !ok {
		e.t.Fatalf("rollout counters disagree with device rows: %s", detail)
	}
}

func (e *env) eventTypes(id string, only ...string) []string {
	e.t.Helper()
	rows, err := e.db.Pool.Query(context.Background(), `SELECT event_type FROM rollout_events WHERE rollout_id = $1 AND event_type = ANY($2) ORDER BY id`, id, only)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		_ = rows.Scan(&s)
		out = append(out, strings.TrimPrefix(s, "image."))
	}
	return out
}

func stagedPolicy(extra map[string]any) map[string]any {
	p := map[string]any{
		"image_pattern": "acme/app:*", "update_strategy": "staged", "batch_percentages": []int{10, 50, 100},
		"batch_delay_seconds": 1, "health_check_enabled": true, "health_check_timeout_seconds": 60,
		"auto_rollback_enabled": true, "max_failure_rate": 0.2, "min_sample_size": 20,
	}
	for k, v := range extra {
		p[k] = v
	}
	return p
}

// TestHealthyStagedRolloutCompletesByItself: 1,000 healthy simulated devices, staged 10/50/100 with a 1 s
// delay: the rollout runs to the end by itself with the counters and events right.
func TestHealthyStagedRolloutCompletesByItself(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start()
	e.admin("POST", "/api/v1/image-policies", stagedPolicy(nil), 201)
	s := e.runSim("fleet-1k", 1000, []string{"acme/app:1.0"}, nil)
	waitSim(t, s, 90*time.Second, func(c sim.Counters) bool { return c.Healthy == 1000 && c.ByImage["acme/app:1.0"] == 1000 })

	e.push("acme/app", "2.0")
	id := e.latestRollout("acme/app:2.0")
	r := e.waitStatus(id, 3*time.Minute, "completed")
	if r.Total != 1000 || r.Updated != 1000 || r.Failed != 0 || r.Healthy != 1000 {
		t.Fatalf("completed rollout counters: %+v", r)
	}
	e.countersAgree(id)
	got := strings.Join(e.eventTypes(id, []string{"image.batch_started", "image.batch_completed", "image.rollout_completed"}...), ",")
	want := "batch_started,batch_completed,batch_started,batch_completed,batch_started,batch_completed,rollout_completed"
	if got != want {
		t.Fatalf("events in order:\n got %s\nwant %s", got, want)
	}
	waitSim(t, s, 30*time.Second, func(c sim.Counters) bool { return c.ByImage["acme/app:2.0"] == 1000 })

	// The fleet default moved too: a device registering now starts on the new image.
	late := e.runSim("fleet-1k", 1, nil, func(c *sim.Config) { c.AdminToken = ""; c.NamePrefix = "late" })
	waitSim(t, late, 30*time.Second, func(c sim.Counters) bool { return c.ByImage["acme/app:2.0"] == 1 })
}

// TestFailingBatchPausesAndRollsBack: half the devices fail on the new image; the rollout pauses in
// batch 1, no later-batch device is ever moved, and every failed device is back on its old image.
func TestFailingBatchPausesAndRollsBack(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start()
	e.admin("POST", "/api/v1/image-policies", stagedPolicy(nil), 201)
	s := e.runSim("fleet-f", 400, []string{"acme/app:1.0"}, func(c *sim.Config) {
		c.FailRates = []sim.Rate{mustRate(t, "acme/app:2.*=0.5")}
	})
	waitSim(t, s, 60*time.Second, func(c sim.Counters) bool { return c.Healthy == 400 })

	e.push("acme/app", "2.0")
	id := e.latestRollout("acme/app:2.0")
	r := e.waitStatus(id, 60*time.Second, "paused")
	if !r.AutoPaused || r.CurrentBatch != 1 {
		t.Fatalf("paused rollout: %+v", r)
	}
	ctx := context.Background()
	wait.For(t, 30*time.Second, func() error {
		var failed, rolledBack int
		if err := e.db.Pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE status = 'failed'), count(*) FILTER (WHERE status = 'rolled_back')
			FROM device_rollout_status WHERE rollout_id = $1`, id).Scan(&failed, &rolledBack); err != nil {
			return err
		}
		if failed != 0 || rolledBack == 0 {
			return fmt.Errorf("failed %d, rolled back %d", failed, rolledBack)
		}
		return nil
	})
	var moved int
	if err := e.db.Pool.QueryRow(ctx, `SELECT count(*) FROM device_rollout_status WHERE rollout_id = $1 AND batch_number > 1 AND status <> 'pending'`, id).Scan(&moved); err != nil || moved != 0 {
		t.Fatalf("later-batch devices moved: %d %v", moved, err)
	}
	var newTargets int
	if err := e.db.Pool.QueryRow(ctx, `SELECT count(*) FROM device_images i JOIN device_rollout_status d ON d.device_uuid = i.device_uuid
		WHERE d.rollout_id = $1 AND d.batch_number > 1 AND i.tag = '2.0'`, id).Scan(&newTargets); err != nil || newTargets != 0 {
		t.Fatalf("later-batch targets on the new image: %d %v", newTargets, err)
	}
	e.countersAgree(id)
	// Every rolled-back device reports its old image running, healthy again.
	rolled := map[string]bool{}
	rows, _ := e.db.Pool.Query(ctx, `SELECT device_uuid FROM device_rollout_status WHERE rollout_id = $1 AND status = 'rolled_back'`, id)
	for rows.Next() {
		var u string
		_ = rows.Scan(&u)
		rolled[u] = true
	}
	rows.Close()
	wait.For(t, 30*time.Second, func() error {
		for _, d := range s.Devices() {
			if rolled[d.UUID] && d.Images != "acme/app:1.0" {
				return fmt.Errorf("rolled-back device %s runs %s", d.UUID, d.Images)
			}
		}
		return nil
	})
	if ev := e.eventTypes(id, "image.rollout_paused"); len(ev) != 1 {
		t.Fatalf("rollout_paused events: %v", ev)
	}
}

// TestSilentDevicesTimeOut: devices that go dark fail by health timeout; the rest complete and, the failure
// rate staying under the threshold, the rollout completes.
func TestSilentDevicesTimeOut(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start()
	e.admin("POST", "/api/v1/image-policies", stagedPolicy(map[string]any{"health_check_timeout_seconds": 5, "max_failure_rate": 0.3}), 201)
	s := e.runSim("fleet-s", 200, []string{"acme/app:1.0"}, func(c *sim.Config) {
		c.SilentRates = []sim.Rate{mustRate(t, "acme/app:2.*=0.1")}
	})
	waitSim(t, s, 60*time.Second, func(c sim.Counters) bool { return c.Healthy == 200 })
	e.push("acme/app", "2.0")
	id := e.latestRollout("acme/app:2.0")
	r := e.waitStatus(id, 2*time.Minute, "completed")
	if r.Failed == 0 || r.Updated+r.Failed != 200 || r.Failed != s.Counters().Silent {
		t.Fatalf("silent devices: rollout %+v, simulator silent %d", r, s.Counters().Silent)
	}
	var timeouts int
	_ = e.db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM device_rollout_status WHERE rollout_id = $1 AND status = 'failed' AND error_message ILIKE '%timeout%'`, id).Scan(&timeouts)
	if timeouts != r.Failed {
		t.Fatalf("%d of %d failures say timeout", timeouts, r.Failed)
	}
	e.countersAgree(id)
}

// TestRestartsMidRollout: healthwatch killed during a batch delay and during a health timeout, then the whole
// server restarted: the rollout finishes with every device in exactly one terminal state.
func TestRestartsMidRollout(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start(server.RoleIngest, server.RolePlanner, server.RoleDispatcher, server.RoleStateAPI)
	hw := e.startWorker(server.RoleHealthwatch)
	e.admin("POST", "/api/v1/image-policies", stagedPolicy(map[string]any{"batch_delay_seconds": 2, "health_check_timeout_seconds": 4, "max_failure_rate": 0.5}), 201)
	s := e.runSim("fleet-r", 100, []string{"acme/app:1.0"}, func(c *sim.Config) {
		c.SilentRates = []sim.Rate{mustRate(t, "acme/app:2.*=0.05")}
	})
	waitSim(t, s, 60*time.Second, func(c sim.Counters) bool { return c.Healthy == 100 })
	e.push("acme/app", "2.0")
	id := e.latestRollout("acme/app:2.0")

	// Batch 1 done -> a batch delay is running: kill healthwatch, start another.
	wait.For(t, 60*time.Second, func() error {
		if ev := e.eventTypes(id, "image.batch_completed"); len(ev) < 1 {
			return fmt.Errorf("batch 1 not completed")
		}
		return nil
	})
	hw.Shutdown()
	hw = e.startWorker(server.RoleHealthwatch)
	// Batch 2 dispatched -> health timeouts are running: kill it again, and then the whole server.
	wait.For(t, 60*time.Second, func() error {
		if r := e.rollout(id); r.CurrentBatch < 2 {
			return fmt.Errorf("batch 2 not started")
		}
		return nil
	})
	hw.Shutdown()
	e.stop()
	e.start()
	r := e.waitStatus(id, 2*time.Minute, "completed")
	var nonTerminal, total int
	_ = e.db.Pool.QueryRow(context.Background(), `SELECT count(*) FILTER (WHERE status NOT IN ('completed','failed')), count(*)
		FROM device_rollout_status WHERE rollout_id = $1`, id).Scan(&nonTerminal, &total)
	if nonTerminal != 0 || total != 100 || r.Updated+r.Failed != 100 {
		t.Fatalf("after restarts: %d of %d devices not terminal; rollout %+v", nonTerminal, total, r)
	}
	e.countersAgree(id)
	got := strings.Join(e.eventTypes(id, "image.batch_started", "image.rollout_completed"), ",")
	if got != "batch_started,batch_started,batch_started,rollout_completed" {
		t.Fatalf("each batch started exactly once: %s", got)
	}
}

func mustRate(t *testing.T, s string) sim.Rate {
	t.Helper()
	r, err := sim.ParseRate(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func waitSim(t *testing.T, s *sim.Sim, timeout time.Duration, ok func(sim.Counters) bool) {
	t.Helper()
	wait.For(t, timeout, func() error {
		if c := s.Counters(); !ok(c) {
			return fmt.Errorf("simulator: %s", c)
		}
		return nil
	})
}
