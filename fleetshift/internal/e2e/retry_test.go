package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/fleetshift/fleetshift/agent/sim"
	"github.com/fleetshift/fleetshift/fleetshift/internal/server"
	"github.com/fleetshift/fleetshift/shared/wait"
)

// rolloutDevice is a device row as GET /api/v1/rollouts/:id/devices serves it.
type rolloutDevice struct {
	DeviceUUID    string  `json:"device_uuid"`
	Status        string  `json:"status"`
	FailureReason *string `json:"failure_reason"`
	FailureLog    *string `json:"failure_log"`
	RetryCount    int     `json:"retry_count"`
}

func (e *env) rolloutDevices(id, status string) []rolloutDevice {
	e.t.Helper()
	var doc struct {
		Devices []rolloutDevice `json:"devices"`
	}
	e.admin("GET", "/api/v1/rollouts/"+id+"/devices?limit=500&status="+status, nil, 200).json(e.t, &doc)
	return doc.Devices
}

// retryPolicy is one batch of every device, gated at a failure rate that pauses on the first failure,
// without auto rollback (so failed devices stay failed for the operator).
func retryPolicy(extra map[string]any) map[string]any {
	p := map[string]any{
		"image_pattern": "acme/app:*", "update_strategy": "staged", "batch_percentages": []int{100},
		"health_check_enabled": true, "health_check_timeout_seconds": 60, "auto_rollback_enabled": false,
		"max_failure_rate": 0.2, "min_sample_size": 1,
	}
	for k, v := range extra {
		p[k] = v
	}
	return p
}

// TestFailedDevicesSayWhyAndAreRetried: every simulated device fails its first start of the new image
// (a failing health check or an exited container) and runs it healthy on the second. The failed rows carry
// the agent's reason and the last lines of the container's log (bounded), through the API and the CLI;
// the rollout pauses; retry re-dispatches one device over NATS and the rest over HTTP; they complete,
// counters agree with the rows at each step, image.device_retried is recorded per device, and resume
// completes the rollout.
func TestFailedDevicesSayWhyAndAreRetried(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start()
	e.admin("POST", "/api/v1/image-policies", retryPolicy(nil), 201)
	const n = 8
	s := e.runSim("fleet-retry", n, []string{"acme/app:1.0"}, func(c *sim.Config) {
		c.FailRates = []sim.Rate{{Glob: "acme/app:2.0", P: 1}}
		c.FailAttempts = 1
	})
	waitSim(t, s, 60*time.Second, func(c sim.Counters) bool { return c.Healthy == n })

	e.push("acme/app", "2.0")
	id := e.latestRollout("acme/app:2.0")
	e.waitStatus(id, 90*time.Second, "paused")
	var failed []rolloutDevice
	wait.For(t, 90*time.Second, func() error {
		if failed = e.rolloutDevices(id, "failed"); len(failed) != n {
			return fmt.Errorf("%d of %d devices failed", len(failed), n)
		}
		return nil
	})
	e.countersAgree(id)
	for _, d := range failed {
		if d.FailureReason == nil || !(strings.Contains(*d.FailureReason, "health check failed: GET http://127.0.0.1:8080/healthz answered 500") ||
			strings.Contains(*d.FailureReason, "exited: container exited with code 1")) {
			t.Fatalf("device %s failure_reason %v: want the agent's reason", d.DeviceUUID, d.FailureReason)
		}
		if d.FailureLog == nil || len(*d.FailureLog) > 4096 || strings.Count(*d.FailureLog, "\n") != 49 ||
			!strings.Contains(*d.FailureLog, "acme/app:2.0 attempt 1") {
			t.Fatalf("device %s failure_log: want the last 50 lines of the failed container, got %v", d.DeviceUUID, d.FailureLog)
		}
	}

	// The CLI: the list shows each failed device's reason, the detail view its log tail.
	var out syncBuffer
	if err := e.fleetshift(context.Background(), &out, e.srv.AdminToken, "rollouts", "devices", id[:8], "--status", "failed"); err != nil {
		t.Fatalf("rollouts devices: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "REASON") || strings.Count(out.String(), "service ") < n {
		t.Fatalf("rollouts devices --status failed does not show the reasons:\n%s", out.String())
	}
	out = syncBuffer{}
	if err := e.fleetshift(context.Background(), &out, e.srv.AdminToken, "rollouts", "device", id[:8], failed[0].DeviceUUID); err != nil {
		t.Fatalf("rollouts device: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "last log lines of the failed container:") || !strings.Contains(out.String(), "attempt 1: starting worker 60") {
		t.Fatalf("rollouts device does not show the log tail:\n%s", out.String())
	}

	// Retry one device over NATS, by name.
	_, op := e.operatorToken("retry-bot", "operate")
	nc, err := nats.Connect(e.srv.NATSURL, nats.Token(op))
	if err != nil {
		t.Fatalf("operator NATS connection: %v", err)
	}
	defer nc.Close()
	first := failed[0].DeviceUUID
	m := nats.NewMsg(e.srv.Subjects.Prefix + ".control.rollout." + id + ".retry")
	m.Header.Set("Authorization", op)
	m.Data, _ = json.Marshal(map[string]any{"device_uuids": []string{first}})
	res, err := nc.RequestMsg(m, 10*time.Second)
	if err != nil {
		t.Fatalf("NATS retry: %v", err)
	}
	var ans struct {
		OK      bool     `json:"ok"`
		Status  string   `json:"status"`
		Changed bool     `json:"changed"`
		Retried []string `json:"retried"`
	}
	if err := json.Unmarshal(res.Data, &ans); err != nil || !ans.OK || !ans.Changed || ans.Status != "paused" ||
		len(ans.Retried) != 1 || ans.Retried[0] != first {
		t.Fatalf("NATS retry answer: %s", res.Data)
	}
	wait.For(t, 60*time.Second, func() error {
		var st string
		var retries int
		if err := e.db.Pool.QueryRow(context.Background(), `SELECT status, retry_count FROM device_rollout_status
			WHERE rollout_id = $1 AND device_uuid = $2`, id, first).Scan(&st, &retries); err != nil {
			return err
		}
		if st != "completed" || retries != 1 {
			return fmt.Errorf("retried device is %s after %d retries", st, retries)
		}
		return nil
	})
	e.countersAgree(id)
	if r := e.rollout(id); r.Failed != n-1 || r.Updated != 1 {
		t.Fatalf("after one retry: %+v", r)
	}

	// A named device that is not failed cannot be retried; an unknown one is not in the rollout.
	r := e.call("POST", "/api/v1/rollouts/"+id+"/retry", map[string]any{"device_uuids": []string{first}}, map[string]string{"Authorization": "Bearer " + op})
	if r.status != 409 || !strings.Contains(string(r.body), "device_not_failed") {
		t.Fatalf("retry of a completed device: %d %s", r.status, r.body)
	}
	r = e.call("POST", "/api/v1/rollouts/"+id+"/retry", map[string]any{"device_uuids": []string{"no-such-device"}}, map[string]string{"Authorization": "Bearer " + op})
	if r.status != 404 {
		t.Fatalf("retry of an unknown device: %d %s", r.status, r.body)
	}
	r = e.call("POST", "/api/v1/rollouts/"+id+"/retry", map[string]any{"device_uuids": []string{"bad uuid!"}}, map[string]string{"Authorization": "Bearer " + op})
	if r.status != 400 || !strings.Contains(string(r.body), "device_uuids[0]") {
		t.Fatalf("retry of a malformed device uuid: %d %s", r.status, r.body)
	}

	// The rest over HTTP (the CLI's verb): every failed device.
	out = syncBuffer{}
	if err := e.fleetshift(context.Background(), &out, op, "rollouts", "retry", id[:8], "-o", "json"); err != nil {
		t.Fatalf("rollouts retry: %v\n%s", err, out.String())
	}
	wait.For(t, 60*time.Second, func() error {
		if done := e.rolloutDevices(id, "completed"); len(done) != n {
			return fmt.Errorf("%d of %d devices completed", len(done), n)
		}
		return nil
	})
	e.countersAgree(id)
	for _, d := range e.rolloutDevices(id, "completed") {
		if d.RetryCount != 1 || d.FailureReason != nil || d.FailureLog != nil {
			t.Fatalf("completed device after a retry: %+v", d)
		}
	}
	if got := len(e.eventTypes(id, "image.device_retried")); got != n {
		t.Fatalf("%d image.device_retried events, want %d", got, n)
	}
	// Nothing left to retry.
	r = e.call("POST", "/api/v1/rollouts/"+id+"/retry", nil, map[string]string{"Authorization": "Bearer " + op})
	if r.status != 409 || !strings.Contains(string(r.body), "no_failed_devices") {
		t.Fatalf("retry with no failed device: %d %s", r.status, r.body)
	}
	if rep := e.httpVerb(op, "resume", id, ""); rep.Code != 200 {
		t.Fatalf("resume: %+v", rep)
	}
	if r := e.waitStatus(id, 60*time.Second, "completed"); r.Updated != n || r.Failed != 0 {
		t.Fatalf("completed rollout: %+v", r)
	}
	waitSim(t, s, 30*time.Second, func(c sim.Counters) bool { return c.Healthy == n && c.ByImage["acme/app:2.0"] == n })
}

// TestPolicyRetriesFailedDevicesAutomatically: with max_retries 1, devices that fail their first start
// are re-dispatched by healthwatch before they count: the rollout completes without pausing, with no
// failed device, each device retried once (image.device_retried, auto) and the counters agreeing.
func TestPolicyRetriesFailedDevicesAutomatically(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start()
	e.admin("POST", "/api/v1/image-policies", retryPolicy(map[string]any{"max_retries": 1, "batch_percentages": []int{50, 100}}), 201)
	const n = 6
	s := e.runSim("fleet-autoretry", n, []string{"acme/app:1.0"}, func(c *sim.Config) {
		c.FailRates = []sim.Rate{{Glob: "acme/app:2.0", P: 1}}
		c.FailAttempts = 1
	})
	waitSim(t, s, 60*time.Second, func(c sim.Counters) bool { return c.Healthy == n })

	e.push("acme/app", "2.0")
	id := e.latestRollout("acme/app:2.0")
	r := e.waitStatus(id, 2*time.Minute, "completed", "paused")
	if r.Status != "completed" || r.Updated != n || r.Failed != 0 {
		t.Fatalf("rollout with max_retries 1: %+v", r)
	}
	e.countersAgree(id)
	for _, d := range e.rolloutDevices(id, "") {
		if d.Status != "completed" || d.RetryCount != 1 {
			t.Fatalf("device after an automatic retry: %+v", d)
		}
	}
	var auto int
	if err := e.db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM rollout_events WHERE rollout_id = $1
		AND event_type = 'image.device_retried' AND (data->>'auto')::boolean`, id).Scan(&auto); err != nil {
		t.Fatal(err)
	}
	if auto != n {
		t.Fatalf("%d automatic image.device_retried events, want %d", auto, n)
	}
	if got := len(e.eventTypes(id, "image.rollout_paused")); got != 0 {
		t.Fatalf("the rollout paused %d times; retried devices must not count as failed", got)
	}
}

// TestRetryByRolloutStatus: retry applies to in_progress, paused and awaiting_approval rollouts (200,
// the failed device re-dispatched, the rollout's status kept) and is a 409 on every other status, the
// same over HTTP and NATS.
func TestRetryByRolloutStatus(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start(server.RoleStateAPI)
	_, op := e.operatorToken("ops-bot", "operate")
	nc, err := nats.Connect(e.srv.NATSURL, nats.Token(op))
	if err != nil {
		t.Fatalf("operator NATS connection: %v", err)
	}
	defer nc.Close()
	applies := map[string]bool{"in_progress": true, "paused": true, "awaiting_approval": true}
	for _, status := range allStatuses {
		for _, via := range []string{"http", "nats"} {
			id, d1, _ := e.fixture(status)
			if _, err := e.db.Pool.Exec(context.Background(), `UPDATE device_rollout_status SET status = 'failed',
				error_message = 'x', failure_reason = 'x' WHERE rollout_id = $1 AND device_uuid = $2 AND status = 'completed'`, id, d1); err != nil {
				t.Fatal(err)
			}
			var rep reply
			if via == "http" {
				rep = e.httpVerb(op, "retry", id, "")
			} else {
				rep = natsVerb(t, nc, e.srv.Subjects.Prefix, op, "retry", id, "")
			}
			var st string
			var retries int
			if err := e.db.Pool.QueryRow(context.Background(), `SELECT status, retry_count FROM device_rollout_status
				WHERE rollout_id = $1 AND device_uuid = $2`, id, d1).Scan(&st, &retries); err != nil {
				t.Fatal(err)
			}
			if applies[status] {
				if rep.Code != 200 || rep.Status != status || !rep.Changed || st != "scheduled" || retries != 1 {
					t.Fatalf("%s retry on %s: %+v, device %s after %d retries", via, status, rep, st, retries)
				}
				// (The fixture writes its counters by hand: only the retry's own delta is checked.)
				if r := e.rollout(id); r.Failed != 0 {
					t.Fatalf("%s retry on %s: failed_devices %d after the only failed device was retried", via, status, r.Failed)
				}
				continue
			}
			if rep.Code != 409 || rep.Error != "invalid_state" || retries != 0 {
				t.Fatalf("%s retry on %s: %+v (want 409 invalid_state), device %s after %d retries", via, status, rep, st, retries)
			}
		}
	}
}
