package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fleetshift/fleetshift/agent/sim"
	"github.com/fleetshift/fleetshift/shared/wait"
)

type replayAnswer struct {
	Pushes   int `json:"pushes"`
	Rollouts []struct {
		PushEventID     string  `json:"push_event_id"`
		Image           string  `json:"image"`
		Status          string  `json:"status"`
		TotalDevices    int     `json:"total_devices"`
		BatchSizes      []int   `json:"batch_sizes"`
		ActualRolloutID *string `json:"actual_rollout_id"`
		Batches         []struct {
			Batch   int `json:"batch"`
			Devices []struct {
				DeviceUUID string `json:"device_uuid"`
			} `json:"devices"`
		} `json:"batches"`
	} `json:"rollouts"`
	Skipped []struct {
		PushEventID     string `json:"push_event_id"`
		Reason          string `json:"reason"`
		WinningPolicyID *int64 `json:"winning_policy_id"`
	} `json:"skipped"`
}

// writes counts the rows a replay must never add or change.
func (e *env) writes() string {
	e.t.Helper()
	var s string
	err := e.db.Pool.QueryRow(context.Background(), `SELECT concat_ws(' ',
		(SELECT count(*) FROM image_rollouts), (SELECT count(*) FROM device_rollout_status),
		(SELECT count(*) FROM planner_pushes), (SELECT count(*) FROM rollout_events WHERE rollout_id IS NOT NULL),
		(SELECT count(*) || '/' || coalesce(max(updated_at)::text, '') FROM image_update_policies),
		(SELECT last_value FROM image_update_policies_id_seq))`).Scan(&s)
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

// TestPolicyReplay replays past pushes through a new policy, a changed policy and a stored one (API and
// CLI): it lists the rollouts the planner would create (devices and batches equal to a real rollout of
// the same policy over the same devices), names the policy that wins the other pushes, and writes nothing.
func TestPolicyReplay(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start()
	ctx := context.Background()

	// History: two pushes of acme/web nobody had a policy for, one of acme/other under its own policy.
	var other struct {
		ID int64 `json:"id"`
	}
	e.admin("POST", "/api/v1/image-policies", map[string]any{"image_pattern": "acme/other:*", "update_strategy": "manual"}, 201).json(t, &other)
	s := e.runSim("replay", 20, []string{"acme/web:1.0"}, nil)
	waitSim(t, s, 60*time.Second, func(c sim.Counters) bool { return c.Healthy == 20 })
	for _, tag := range []string{"2.0", "2.1"} {
		e.push("acme/web", tag)
	}
	e.push("acme/other", "1.1")
	wait.For(t, 30*time.Second, func() error {
		if n := e.countRows(`SELECT count(*) FROM planner_pushes`); n != 3 {
			return fmt.Errorf("%d pushes planned", n)
		}
		return nil
	})
	before := e.writes()

	// A new policy: both acme/web pushes would have become staged rollouts of all 20 devices (5 + 15);
	// acme/other's more specific policy keeps its push.
	newPolicy := map[string]any{"image_pattern": "acme/*", "update_strategy": "staged", "batch_percentages": []int{25, 100}}
	var got replayAnswer
	e.admin("POST", "/api/v1/image-policies/replay", map[string]any{"policy": newPolicy, "days": 7}, 200).json(t, &got)
	if got.Pushes != 3 || len(got.Rollouts) != 2 || len(got.Skipped) != 1 {
		t.Fatalf("replay of a new policy: %+v", got)
	}
	for i, tag := range []string{"2.0", "2.1"} {
		r := got.Rollouts[i]
		if r.Image != "acme/web:"+tag || r.TotalDevices != 20 || fmt.Sprint(r.BatchSizes) != "[5 15]" ||
			r.Status != "in_progress" || r.ActualRolloutID != nil {
			t.Fatalf("replayed rollout %d: %+v", i, r)
		}
	}
	if sk := got.Skipped[0]; sk.Reason != "another policy wins" || sk.WinningPolicyID == nil || *sk.WinningPolicyID != other.ID {
		t.Fatalf("skipped push: %+v", sk)
	}
	// A changed policy: the acme/other policy turned into acme/web:* takes both acme/web pushes (as manual
	// rollouts) and no longer matches its own push.
	var changed replayAnswer
	e.admin("POST", "/api/v1/image-policies/replay", map[string]any{"days": 1,
		"policy": map[string]any{"id": other.ID, "image_pattern": "acme/web:*", "update_strategy": "manual"}}, 200).json(t, &changed)
	if len(changed.Rollouts) != 2 || changed.Rollouts[0].Status != "pending" || len(changed.Skipped) != 1 ||
		changed.Skipped[0].Reason != "the policy does not match the pushed image" {
		t.Fatalf("replay of a changed policy: %+v", changed)
	}

	// Bad input names the field.
	for _, c := range []struct {
		body  any
		field string
	}{
		{map[string]any{"policy": newPolicy, "days": 0}, `"days`},
		{map[string]any{"policy": newPolicy, "days": 31}, `"days`},
		{map[string]any{"days": 3}, `"policy`},
		{map[string]any{"policy": map[string]any{"update_strategy": "staged"}}, `policy.image_pattern`},
		{map[string]any{"policy": map[string]any{"image_pattern": "acme/*", "update_strategy": "sometimes"}}, `policy.update_strategy`},
	} {
		r := e.call("POST", "/api/v1/image-policies/replay", c.body, map[string]string{"Authorization": "Bearer " + e.srv.AdminToken})
		if r.status != 400 || !json.Valid(r.body) || !strings.Contains(string(r.body), c.field) {
			t.Fatalf("replay %v: %d %s, want 400 naming %s", c.body, r.status, r.body, c.field)
		}
	}
	e.admin("POST", "/api/v1/image-policies/999999/replay", map[string]any{"days": 2}, 404)
	if after := e.writes(); after != before {
		t.Fatalf("replay wrote: before %s, after %s", before, after)
	}

	// The same policy stored (manual: the real rollout stays pending, devices stay where they are) and a
	// real push: replaying the stored policy lists that push's rollout with exactly the real batches.
	newPolicy["update_strategy"] = "manual"
	var stored struct {
		ID int64 `json:"id"`
	}
	e.admin("POST", "/api/v1/image-policies", newPolicy, 201).json(t, &stored)
	ev := e.push("acme/web", "3.0")
	real := e.latestRollout("acme/web:3.0")
	var cli replayAnswer
	e.cliJSON(&cli, "policies", "replay", "--id", strconv.FormatInt(stored.ID, 10), "--days", "7")
	if cli.Pushes != 4 || len(cli.Rollouts) != 3 {
		t.Fatalf("CLI replay of the stored policy: %+v", cli)
	}
	last := cli.Rollouts[2]
	if last.PushEventID != ev || last.ActualRolloutID == nil || *last.ActualRolloutID != real {
		t.Fatalf("replayed push of 3.0: %+v (event %s, rollout %s)", last, ev, real)
	}
	want := map[string]int{}
	rows, err := e.db.Pool.Query(ctx, `SELECT device_uuid, batch_number FROM device_rollout_status WHERE rollout_id = $1`, real)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var uuid string
		var batch int
		if err := rows.Scan(&uuid, &batch); err != nil {
			t.Fatal(err)
		}
		want[uuid] = batch
	}
	rows.Close()
	gotBatches := map[string]int{}
	for _, b := range last.Batches {
		for _, d := range b.Devices {
			gotBatches[d.DeviceUUID] = b.Batch
		}
	}
	if len(want) != 20 || fmt.Sprint(gotBatches) != fmt.Sprint(want) {
		t.Fatalf("replayed batches %v, real rollout %v", gotBatches, want)
	}

	// The CLI takes a policy file too, and says what is wrong in one line.
	file := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(file, []byte("image_pattern: acme/web:*\nupdate_strategy: auto\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var fromFile replayAnswer
	e.cliJSON(&fromFile, "policies", "replay", "-f", file, "--days", "7")
	if len(fromFile.Rollouts) != 3 || fmt.Sprint(fromFile.Rollouts[0].BatchSizes) != "[20]" {
		t.Fatalf("CLI replay of a file: %+v", fromFile)
	}
	var out syncBuffer
	if err := e.fleetshift(ctx, &out, e.srv.AdminToken, "policies", "replay", "--days", "7"); err == nil {
		t.Fatalf("replay without --id or -f succeeded: %s", out.String())
	}
	if err := e.fleetshift(ctx, &out, e.srv.AdminToken, "policies", "replay", "-f", file, "--days", "0"); err == nil || !strings.Contains(err.Error(), "days") {
		t.Fatalf("replay --days 0: %v", err)
	}
}
