package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/fleetshift/fleetshift/shared/wait"
)

const monitoringDir = "../../../deploy/monitoring"

// monitoringExprs returns every PromQL expression of the alert rules (by alert name) and the dashboard.
func monitoringExprs(t *testing.T) (alerts map[string]string, dashboard []string) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(monitoringDir, "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []struct {
				Alert       string            `yaml:"alert"`
				Expr        string            `yaml:"expr"`
				Labels      map[string]string `yaml:"labels"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(raw, &rules); err != nil {
		t.Fatalf("alerts.yml: %v", err)
	}
	alerts = map[string]string{}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || r.Expr == "" || r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Fatalf("alerts.yml: incomplete rule %+v", r)
			}
			alerts[r.Alert] = r.Expr
		}
	}
	raw, err = os.ReadFile(filepath.Join(monitoringDir, "grafana/dashboards/fleetshift.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID    string `json:"uid"`
		Panels []struct {
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil || dash.UID == "" {
		t.Fatalf("dashboard: %v", err)
	}
	for _, p := range dash.Panels {
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Fatalf("dashboard panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			dashboard = append(dashboard, tg.Expr)
		}
	}
	return alerts, dashboard
}

// TestMonitoringNamesExportedMetrics: every metric the alert rules and the Grafana dashboard name is
// exported by a running server's /metrics; the rules cover auto-paused rollouts, a rising failure rate,
// devices going offline, consumer lag and the outbox backlog; the new gauges count what they say.
func TestMonitoringNamesExportedMetrics(t *testing.T) {
	t.Parallel()
	alerts, dashboard := monitoringExprs(t)
	for _, want := range []string{"FleetshiftRolloutAutoPaused", "FleetshiftRolloutFailureRateRising", "FleetshiftDevicesGoingOffline",
		"FleetshiftConsumerLag", "FleetshiftOutboxBacklog"} {
		if alerts[want] == "" {
			t.Fatalf("alerts.yml has no %s", want)
		}
	}
	exprs := append([]string(nil), dashboard...)
	for _, e := range alerts {
		exprs = append(exprs, e)
	}
	nameRe := regexp.MustCompile(`fleetshift_[a-z0-9_]+`)
	named := map[string]bool{}
	for _, e := range exprs {
		for _, n := range nameRe.FindAllString(e, -1) {
			named[n] = true
		}
	}

	e := newEnv(t)
	e.start()
	e.addDevice("mon-1", "mon", "acme/app:1.0")
	e.addDevice("mon-2", "mon", "acme/app:1.0")
	e.admin("POST", "/api/v1/image-policies", stagedPolicy(map[string]any{"update_strategy": "manual"}), 201)
	e.push("acme/app", "2.0") // a webhook, and an active (pending) rollout with a failure rate
	id := e.latestRollout("acme/app:2.0")
	e.waitStatus(id, 30*time.Second, "pending")
	if _, err := e.db.Pool.Exec(context.Background(), `UPDATE devices SET last_seen_at = now(), is_online = true WHERE uuid = 'mon-1'`); err != nil {
		t.Fatal(err)
	}
	paused, _, _ := e.fixture("paused")
	if _, err := e.db.Pool.Exec(context.Background(), `UPDATE image_rollouts SET auto_paused = true WHERE rollout_id = $1`, paused); err != nil {
		t.Fatal(err)
	}

	typeRe := regexp.MustCompile(`(?m)^# TYPE (fleetshift_[a-z0-9_]+) (\w+)$`)
	wait.For(t, 20*time.Second, func() error {
		body := string(e.call("GET", "/metrics", nil, nil).body)
		exported := map[string]string{}
		for _, m := range typeRe.FindAllStringSubmatch(body, -1) {
			exported[m[1]] = m[2]
		}
		var missing []string
		for n := range named {
			if exported[n] != "" {
				continue
			}
			base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_sum"), "_count")
			if exported[base] == "histogram" {
				continue
			}
			missing = append(missing, n)
		}
		sort.Strings(missing)
		if len(missing) > 0 {
			return fmt.Errorf("deploy/monitoring names metrics /metrics does not export: %v", missing)
		}
		for _, want := range []string{
			"fleetshift_rollouts_auto_paused 1",
			"fleetshift_devices_registered 4", // two added here, two from the paused fixture
			"fleetshift_devices_online 1",
			"fleetshift_outbox_backlog ",
			"fleetshift_outbox_oldest_age_seconds ",
			`fleetshift_rollout_failure_rate{image_name="acme/app",new_tag="2.0",rollout_id="` + id + `"} 0`,
			`fleetshift_jetstream_consumer_pending{consumer="notifier",stream="FLEET_EVENTS"}`,
			`fleetshift_notification_deliveries{status="failed"} 0`,
			`fleetshift_notification_attempts_total{outcome="failed"} 0`,
		} {
			if !strings.Contains(body, want) {
				return fmt.Errorf("/metrics lacks %s", want)
			}
		}
		return nil
	})
}

// TestComposeMonitoringProfile: compose.yaml stays valid with Prometheus and Grafana behind the
// `monitoring` profile, mounting files that exist (checked with docker-compose config, not started).
func TestComposeMonitoringProfile(t *testing.T) {
	t.Parallel()
	bin, err := exec.LookPath("docker-compose")
	if err != nil {
		t.Skip("docker-compose is not installed")
	}
	dir := t.TempDir()
	for _, f := range []string{"compose.yaml", "deploy"} {
		if out, err := exec.Command("cp", "-r", filepath.Join("../../..", f), dir).CombinedOutput(); err != nil {
			t.Fatalf("copy %s: %v %s", f, err, out)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, ".env"), []byte("FLEETSHIFT_NATS_SERVICE_PASSWORD=x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-f", "compose.yaml", "--profile", "monitoring", "config")
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("docker-compose config: %v\n%s", err, out)
	}
	var cfg struct {
		Services map[string]struct {
			Profiles []string `yaml:"profiles"`
			Volumes  []any    `yaml:"volumes"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"prometheus", "grafana"} {
		svc, ok := cfg.Services[name]
		if !ok || len(svc.Profiles) != 1 || svc.Profiles[0] != "monitoring" {
			t.Fatalf("%s: not behind the monitoring profile: %+v", name, svc)
		}
		for _, v := range svc.Volumes {
			m, _ := v.(map[string]any)
			if src, _ := m["source"].(string); m["type"] == "bind" {
				if _, err := os.Stat(src); err != nil {
					t.Fatalf("%s mounts %s: %v", name, src, err)
				}
			}
		}
	}
	if _, ok := cfg.Services["notifier"]; !ok {
		t.Fatal("compose.yaml has no notifier service")
	}
}
