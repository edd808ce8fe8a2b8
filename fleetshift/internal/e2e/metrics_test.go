package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fleetshift/fleetshift/shared/wait"
)

// TestMetrics: /metrics exposes webhooks by registry and outcome, rollouts and devices by status, consumer
// backlogs, stream throughput and HTTP latency, all prefixed fleetshift_.
func TestMetrics(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start()
	e.addDevice("m1", "f", "acme/app:1.0")
	e.admin("POST", "/api/v1/image-policies", map[string]any{"image_pattern": "acme/app", "update_strategy": "auto"}, 201)
	e.push("acme/app", "2.0")
	e.call("POST", "/api/v1/webhooks/docker-registry", []byte("{"), map[string]string{"Authorization": "Bearer " + e.srv.WebhookToken})
	wait.For(t, 20*time.Second, func() error {
		body := string(e.call("GET", "/metrics", nil, nil).body)
		if testing.Verbose() {
			for _, l := range strings.Split(body, "\n") {
				if strings.HasPrefix(l, "fleetshift_http_request_duration_seconds_count") || strings.HasPrefix(l, "fleetshift_webhooks") {
					fmt.Println(l)
				}
			}
		}
		for _, want := range []string{
			`fleetshift_webhooks_total{outcome="accepted",registry="dockerhub"} 1`,
			`fleetshift_rollouts{status="in_progress"} 1`,
			`fleetshift_rollout_devices{status="scheduled"} 1`,
			`fleetshift_jetstream_consumer_pending{consumer="planner",stream="FLEET_PUSHES"} 0`,
			`fleetshift_stream_messages_total{stream="FLEET_TARGETS"}`,
			`fleetshift_http_request_duration_seconds_count{method="POST",route="/api/v1/webhooks/docker-registry",status="202"} 1`,
		} {
			if !strings.Contains(body, want) {
				return fmt.Errorf("/metrics lacks %s", want)
			}
		}
		if !strings.Contains(body, `fleetshift_webhooks_total{outcome="invalid",registry="unknown"} 1`) ||
			!strings.Contains(body, `route="/api/v1/webhooks/docker-registry",status="400"} 1`) {
			return fmt.Errorf("/metrics lacks the rejected webhook")
		}
		return nil
	})
}
