package e2e

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/fleetshift/fleetshift/fleetshift/internal/server"
	"github.com/fleetshift/fleetshift/shared/wait"
	"github.com/fleetshift/fleetshift/streams"
)

const digest11 = "sha256:1111111111111111111111111111111111111111111111111111111111111111"

// ghcrPush is a GitHub `package` delivery for ghcr.io/<owner>/app:<tag>, as GHCR sends it.
func ghcrPush(owner, tag, digest string) []byte {
	b, _ := json.Marshal(map[string]any{
		"action": "published",
		"package": map[string]any{
			"name": "app", "namespace": owner, "ecosystem": "CONTAINER", "package_type": "CONTAINER",
			"owner": map[string]any{"login": owner},
			"package_version": map[string]any{
				"name": digest, "version": digest,
				"container_metadata": map[string]any{"tag": map[string]any{"name": tag, "digest": digest}},
				"package_url":        "ghcr.io/" + strings.ToLower(owner) + "/app:" + tag,
			},
		},
		"repository": map[string]any{"full_name": owner + "/app"},
	})
	return b
}

func sign(secret string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

type deviceState map[string]struct {
	Apps    map[string]any `json:"apps"`
	Config  map[string]any `json:"config"`
	Version int64          `json:"version"`
}

// webImage returns the image of the "web" service in a device's target document.
func webImage(t *testing.T, body []byte, uuid string) string {
	t.Helper()
	var st deviceState
	if err := json.Unmarshal(body, &st); err != nil {
		t.Fatalf("decode state %s: %v", body, err)
	}
	app := st[uuid].Apps["1"].(map[string]any)
	return app["services"].([]any)[0].(map[string]any)["imageName"].(string)
}

func (e *env) countRows(query string, args ...any) int {
	e.t.Helper()
	var n int
	if err := e.db.Pool.QueryRow(context.Background(), query, args...).Scan(&n); err != nil {
		e.t.Fatalf("%s: %v", query, err)
	}
	return n
}

// TestPushToFirstBatch is the pipeline's end-to-end acceptance: a signed GHCR push becomes one staged rollout whose
// first batch, and only it, sees the new image over HTTP and NATS; redeliveries and bad requests change nothing.
func TestPushToFirstBatch(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	srv := e.start()
	ctx := context.Background()

	keys := map[string]string{}
	var uuids []string
	for i := range 20 {
		u := fmt.Sprintf("dev-%02d", i)
		keys[u] = e.addDevice(u, "fleet-a", "ghcr.io/acme/app:1.0")
		uuids = append(uuids, u)
	}
	for i, img := range []string{"ghcr.io/acme/other:1.0", "ghcr.io/evilacme/app:1.0", "nginx:1.25"} {
		e.addDevice(fmt.Sprintf("bystander-%d", i), "fleet-a", img)
	}
	e.admin("POST", "/api/v1/image-policies", map[string]any{
		"image_pattern": "ghcr.io/acme/app:*", "update_strategy": "staged", "staged_batches": 3,
		"batch_percentages": []int{10, 50, 100}, "batch_delay_seconds": 3600, "health_check_enabled": true,
		"health_check_timeout_seconds": 3600,
	}, 201)

	// Every device's ETag before the push; subscribe to every device's target subject over NATS.
	etags := map[string]string{}
	for _, u := range uuids {
		r := e.call("GET", "/api/v1/device/"+u+"/state", nil, map[string]string{"X-Device-API-Key": keys[u]})
		if r.status != 200 || r.header.Get("ETag") == "" {
			t.Fatalf("poll %s: %d %s", u, r.status, r.body)
		}
		etags[u] = r.header.Get("ETag")
	}
	got := make(chan string, 100)
	sub, err := srv.NC.Subscribe(srv.Subjects.DeviceTargetAll(), func(m *nats.Msg) {
		if u, ok := srv.Subjects.DeviceFromSubject(m.Subject); ok {
			got <- u
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	_ = srv.NC.Flush()

	// Bad requests first: nothing may be written.
	body := ghcrPush("ACME", "1.1", digest11)
	hdr := map[string]string{"X-GitHub-Event": "package", "X-GitHub-Delivery": "delivery-1"}
	hdr["X-Hub-Signature-256"] = sign("wrong", body)
	if r := e.call("POST", "/api/v1/webhooks/docker-registry", body, hdr); r.status != 401 {
		t.Fatalf("bad signature: %d %s", r.status, r.body)
	}
	if r := e.call("POST", "/api/v1/webhooks/docker-registry", []byte("{not json"), map[string]string{"Authorization": "Bearer " + srv.WebhookToken}); r.status != 400 {
		t.Fatalf("garbage: %d %s", r.status, r.body)
	}

	hdr["X-Hub-Signature-256"] = sign(e.secret, body)
	r := e.call("POST", "/api/v1/webhooks/docker-registry", body, hdr)
	if r.status != 202 {
		t.Fatalf("push: %d %s", r.status, r.body)
	}
	var accepted struct {
		EventID string `json:"event_id"`
	}
	r.json(t, &accepted)
	if accepted.EventID == "" {
		t.Fatalf("push: no event id: %s", r.body)
	}

	// One rollout of 20 devices in batches 2/8/10.
	var rollout struct {
		ID         string `json:"rollout_id"`
		Status     string `json:"status"`
		Total      int    `json:"total_devices"`
		BatchSizes []int  `json:"batch_sizes"`
	}
	wait.For(t, 20*time.Second, func() error {
		var list struct {
			Rollouts []json.RawMessage `json:"rollouts"`
		}
		e.admin("GET", "/api/v1/rollouts", nil, 200).json(t, &list)
		if len(list.Rollouts) != 1 {
			return fmt.Errorf("%d rollouts", len(list.Rollouts))
		}
		return json.Unmarshal(list.Rollouts[0], &rollout)
	})
	if rollout.Total != 20 || fmt.Sprint(rollout.BatchSizes) != "[2 8 10]" || rollout.Status != "in_progress" {
		t.Fatalf("rollout: %+v", rollout)
	}

	// Exactly the two batch-1 devices move, over HTTP and over NATS.
	var batch1 []string
	wait.For(t, 20*time.Second, func() error {
		batch1 = nil
		rows, err := e.db.Pool.Query(ctx, `SELECT device_uuid FROM device_rollout_status WHERE rollout_id = $1 AND batch_number = 1 AND status = 'scheduled' ORDER BY 1`, rollout.ID)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var u string
			_ = rows.Scan(&u)
			batch1 = append(batch1, u)
		}
		if len(batch1) != 2 {
			return fmt.Errorf("batch 1 scheduled: %v", batch1)
		}
		return nil
	})
	notified := map[string]bool{}
	wait.For(t, 10*time.Second, func() error {
		for {
			select {
			case u := <-got:
				notified[u] = true
			default:
				if len(notified) < 2 {
					return fmt.Errorf("notified %v", notified)
				}
				return nil
			}
		}
	})
	want := ghcrImage("1.1", digest11)
	for _, u := range uuids {
		in1 := u == batch1[0] || u == batch1[1]
		r := e.call("GET", "/api/v1/device/"+u+"/state", nil, map[string]string{"X-Device-API-Key": keys[u], "If-None-Match": etags[u]})
		switch {
		case in1 && r.status != 200:
			t.Fatalf("batch-1 device %s: status %d, want 200 with a new ETag", u, r.status)
		case in1:
			if img := webImage(t, r.body, u); img != want {
				t.Fatalf("batch-1 device %s runs %q, want %q", u, img, want)
			}
			if r.header.Get("ETag") == etags[u] {
				t.Fatalf("batch-1 device %s: ETag unchanged", u)
			}
			again := e.call("GET", "/api/v1/device/"+u+"/state", nil, map[string]string{"X-Device-API-Key": keys[u], "If-None-Match": r.header.Get("ETag")})
			if again.status != 304 || len(again.body) != 0 {
				t.Fatalf("batch-1 device %s re-poll: %d %q, want 304", u, again.status, again.body)
			}
		case r.status != 304:
			t.Fatalf("device %s outside batch 1 changed: %d %s", u, r.status, r.body)
		}
		if notified[u] != in1 {
			t.Fatalf("device %s: NATS notified=%v, in batch 1=%v", u, notified[u], in1)
		}
	}
	// Other services and apps of a moved device are untouched.
	r = e.call("GET", "/api/v1/device/"+batch1[0]+"/state", nil, map[string]string{"X-Device-API-Key": keys[batch1[0]]})
	var st deviceState
	r.json(t, &st)
	svcs := st[batch1[0]].Apps["1"].(map[string]any)["services"].([]any)
	if svcs[1].(map[string]any)["imageName"] != "redis:7" || st[batch1[0]].Apps["2"] == nil {
		t.Fatalf("unrelated services changed: %s", r.body)
	}

	// The same delivery again: same event id, 200, still one rollout.
	r = e.call("POST", "/api/v1/webhooks/docker-registry", body, hdr)
	var dup struct {
		EventID string `json:"event_id"`
	}
	r.json(t, &dup)
	if r.status != 200 || dup.EventID != accepted.EventID {
		t.Fatalf("redelivery: %d %s (first id %s)", r.status, r.body, accepted.EventID)
	}
	if n := e.countRows(`SELECT count(*) FROM image_rollouts`); n != 1 {
		t.Fatalf("%d rollouts after redelivery", n)
	}
	// Events: each one a row and a JetStream message.
	wait.For(t, 10*time.Second, func() error {
		var types []string
		rows, _ := e.db.Pool.Query(ctx, `SELECT DISTINCT event_type FROM rollout_events WHERE rollout_id = $1`, rollout.ID)
		for rows.Next() {
			var s string
			_ = rows.Scan(&s)
			types = append(types, s)
		}
		rows.Close()
		sort.Strings(types)
		for _, w := range []string{"image.batch_devices_scheduled", "image.batch_started", "image.rollout_created", "image.rollout_started", "image.webhook_received"} {
			if !contains(types, w) {
				return fmt.Errorf("event %s missing from %v", w, types)
			}
		}
		rowsN := e.countRows(`SELECT count(*) FROM rollout_events`)
		info, err := srv.JS.Stream(ctx, srv.Subjects.EventsStream())
		if err != nil {
			return err
		}
		si, err := info.Info(ctx)
		if err != nil {
			return err
		}
		if int(si.State.Msgs) != rowsN {
			return fmt.Errorf("%d event rows, %d event messages", rowsN, si.State.Msgs)
		}
		return nil
	})
}

func ghcrImage(tag, digest string) string { return "ghcr.io/acme/app:" + tag + "@" + digest }

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// TestPushSurvivesCrashBeforePlanning: the push is in JetStream (202) but the process dies before any rollout is
// written; after a restart the rollout is created exactly once.
func TestPushSurvivesCrashBeforePlanning(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	// First life: everything but the planner, so the push is acknowledged and never planned.
	e.start(server.RoleIngest, server.RoleStateAPI, server.RoleDispatcher)
	e.addDevice("d1", "f", "acme/app:1.0")
	e.admin("POST", "/api/v1/image-policies", map[string]any{"image_pattern": "acme/app", "update_strategy": "auto"}, 201)
	push := []byte(`{"push_data":{"tag":"2.0","pushed_at":1700000000,"pusher":"ci"},"repository":{"repo_name":"acme/app","name":"app","namespace":"acme"}}`)
	r := e.call("POST", "/api/v1/webhooks/docker-registry?token="+e.srv.WebhookToken, push, nil)
	if r.status != 202 {
		t.Fatalf("push: %d %s", r.status, r.body)
	}
	e.stop()
	if n := e.countRows(`SELECT count(*) FROM image_rollouts`); n != 0 {
		t.Fatalf("planned before the planner ran: %d", n)
	}
	// Second life: the full server over the same data dir and database.
	e.start()
	wait.For(t, 20*time.Second, func() error {
		if n := e.countRows(`SELECT count(*) FROM device_rollout_status WHERE status = 'scheduled'`); n != 1 {
			return fmt.Errorf("scheduled devices: %d", n)
		}
		return nil
	})
	// A third life replays nothing.
	e.stop()
	e.start()
	r = e.call("POST", "/api/v1/webhooks/docker-registry?token="+e.srv.WebhookToken, push, nil)
	if r.status != 200 {
		t.Fatalf("redelivery after restart: %d %s", r.status, r.body)
	}
	ctx := context.Background()
	wait.For(t, 10*time.Second, func() error {
		cons, err := e.srv.JS.Consumer(ctx, e.srv.Subjects.PushesStream(), streams.ConsumerPlanner)
		if err != nil {
			return err
		}
		info, err := cons.Info(ctx)
		if err != nil {
			return err
		}
		if info.NumPending != 0 || info.NumAckPending != 0 {
			return fmt.Errorf("planner still has %d pending, %d unacked", info.NumPending, info.NumAckPending)
		}
		return nil
	})
	if n := e.countRows(`SELECT count(*) FROM image_rollouts`); n != 1 {
		t.Fatalf("rollouts after restarts and redelivery: %d", n)
	}
}
