package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/fleetshift/fleetshift/streams"
)

// api is the harness's HTTP client of the system under test.
type api struct {
	base, admin, webhook string
}

var httpClient = &http.Client{Timeout: 30 * time.Second}

func (a *api) do(ctx context.Context, method, path string, body any, auth bool) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, rd)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if auth {
		req.Header.Set("Authorization", "Bearer "+a.admin)
	}
	res, err := httpClient.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, b, nil
}

func (a *api) provisioningKey(ctx context.Context, fleetID string) (string, error) {
	code, b, err := a.do(ctx, "POST", "/api/v1/provisioning-keys", map[string]any{"fleet_id": fleetID}, true)
	if err != nil {
		return "", err
	}
	var k struct {
		Key string `json:"key"`
	}
	if code != 201 || json.Unmarshal(b, &k) != nil || k.Key == "" {
		return "", fmt.Errorf("create provisioning key: status %d: %.200s", code, b)
	}
	return k.Key, nil
}

func (a *api) policy(ctx context.Context, p map[string]any) error {
	code, b, err := a.do(ctx, "POST", "/api/v1/image-policies", p, true)
	if err != nil {
		return err
	}
	if code != 201 {
		return fmt.Errorf("create policy: status %d: %.300s", code, b)
	}
	return nil
}

// webhookBody is a Docker Hub push of repo:tag by pusher.
func webhookBody(repo, tag, pusher string) map[string]any {
	return map[string]any{
		"callback_url": "https://registry.hub.docker.com/u/" + repo + "/hook/chaos/",
		"push_data":    map[string]any{"tag": tag, "pusher": pusher, "pushed_at": 1767225600},
		"repository":   map[string]any{"repo_name": repo, "name": repo, "namespace": "chaos"},
	}
}

// push posts a Docker Hub webhook; 202 (queued) and 200 (duplicate) are success. The server may be
// restarting: connection errors and 503 are retried for a minute.
func (a *api) push(ctx context.Context, repo, tag, pusher string) error {
	deadline := time.Now().Add(time.Minute)
	for {
		code, b, err := a.do(ctx, "POST", "/api/v1/webhooks/docker-registry?token="+url.QueryEscape(a.webhook), webhookBody(repo, tag, pusher), false)
		if err == nil && (code == 200 || code == 202) {
			return nil
		}
		if err == nil && code != 503 {
			return fmt.Errorf("webhook %s:%s: status %d: %.200s", repo, tag, code, b)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("webhook %s:%s: status %d, %v", repo, tag, code, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// poison sends the three poison messages: a NATS report with a NUL in a string (for a real device of
// the rollout), a dispatch command whose batch is beyond int4, a webhook with a NUL in pusher. It says
// what the system answered; the dead letters are checked after the run.
func (e *env) poison(ctx context.Context) string {
	var device, rollout string
	_ = poll(ctx, 30*time.Second, 200*time.Millisecond, "rollout planned", func() (bool, error) {
		err := e.db.QueryRow(ctx, `SELECT s.rollout_id::text, s.device_uuid FROM device_rollout_status s
			JOIN image_rollouts r USING (rollout_id) WHERE r.repository = $1 LIMIT 1`, repository).Scan(&rollout, &device)
		return err == nil, nil
	})
	if rollout == "" {
		return "rollout not planned within 30 s: poison not sent"
	}
	report := fmt.Sprintf(`{%q:{"apps":{"1":{"appName":"sim","services":[{"serviceName":"app\u0000","status":"running","imageName":"x"}]}}}}`, device)
	note := ""
	if _, err := e.js.Publish(ctx, e.subj.DeviceState(device), []byte(report)); err != nil {
		note += "report publish: " + err.Error() + "; "
	}
	cmd := fmt.Sprintf(`{"rollout_id":%q,"batch":2147483648}`, rollout)
	if _, err := e.js.Publish(ctx, e.subj.Command(streams.CommandDispatch, rollout), []byte(cmd)); err != nil {
		note += "command publish: " + err.Error() + "; "
	}
	code, b, err := e.api.do(ctx, "POST", "/api/v1/webhooks/docker-registry?token="+url.QueryEscape(e.api.webhook),
		webhookBody(poisonRepo, "1", "ch\u0000aos"), false)
	switch {
	case err != nil:
		note += "webhook: " + err.Error()
	case code >= 500:
		e.poisonErr = fmt.Sprintf("webhook with NUL in pusher answered %d: %.200s", code, b)
		note += fmt.Sprintf("webhook %d", code)
	default:
		note += fmt.Sprintf("webhook %d", code)
	}
	e.poisoned = true
	return note
}
