// Package composetest starts compose.yaml as shipped (three NATS nodes with R3 streams, PostgreSQL, every
// service in its own containers, workers in replicas) with the commands of README.md's "Running with
// Docker Compose" section, drives rollouts through it with the operator CLI and simulated devices, and
// kills a NATS node and restarts the dispatchers in the middle of one.
package composetest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/fleetshift/fleetshift/realtest/internal/dockerenv"
	"github.com/fleetshift/fleetshift/realtest/internal/testbin"
)

const devices = 40

// TestComposeAsShipped: README's compose commands bring the stack up; a staged rollout of 40 simulated
// devices driven through the CLI completes; a second one completes although a NATS node is killed and the
// dispatchers are restarted while it runs, and every device has exactly one terminal row, scheduled once,
// with the rollout's counters equal to its rows.
func TestComposeAsShipped(t *testing.T) {
	dockerenv.Images(t)
	compose := composeCommand(t)
	ensurePostgresImage(t)
	root := testbin.RepoRoot(t)
	bin := testbin.Build(t)

	dir := stackDir(t, root, bin)
	project := fmt.Sprintf("fsct%d", time.Now().UnixNano()%1_000_000)
	httpPort, hookPort, natsPort := testbin.FreePort(t), testbin.FreePort(t), testbin.FreePort(t)
	env := append(os.Environ(),
		"COMPOSE_PROJECT_NAME="+project,
		"FLEETSHIFT_HTTP_PORT="+strconv.Itoa(httpPort),
		"FLEETSHIFT_WEBHOOK_PORT="+strconv.Itoa(hookPort),
		"FLEETSHIFT_NATS_PORT="+strconv.Itoa(natsPort),
	)
	dc := func(args ...string) (string, error) {
		return testbin.Run(dir, env, compose[0], append(append(compose[1:], "-f", "compose.yaml", "-f", "deploy/compose/compose.local.yaml"), args...)...)
	}
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := dc("logs", "--tail", "40", "--no-color")
			t.Logf("compose logs:\n%s", out)
		}
		if out, err := dc("down", "-v", "--remove-orphans", "-t", "3"); err != nil {
			t.Errorf("compose down: %v\n%s", err, out)
		}
	})

	// README.md's commands, as written (docker compose -> docker-compose where only v1 exists).
	for _, line := range readmeCommands(t, root) {
		if strings.HasPrefix(line, "docker compose ") && compose[0] != "docker" {
			line = strings.Join(compose, " ") + strings.TrimPrefix(line, "docker compose")
		}
		t.Logf("README: %s", line)
		out, err := testbin.Run(dir, env, "bash", "-euo", "pipefail", "-c", line)
		require.NoError(t, err, "README command %q:\n%s", line, out)
	}

	secrets := readEnvFile(t, filepath.Join(dir, ".env"))
	admin := secrets["FLEETSHIFT_ADMIN_TOKEN"]
	hook := secrets["FLEETSHIFT_WEBHOOK_TOKEN"]
	require.NotEmpty(t, admin, ".env has no FLEETSHIFT_ADMIN_TOKEN")
	require.NotEmpty(t, hook, ".env has no FLEETSHIFT_WEBHOOK_TOKEN")
	server := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	cliEnv := append(os.Environ(), "FLEETSHIFT_URL="+server, "FLEETSHIFT_TOKEN="+admin)
	cli := func(args ...string) (string, error) {
		return testbin.Run(dir, cliEnv, filepath.Join(bin, "fleetshift"), args...)
	}

	// Replicas as shipped.
	for svc, want := range map[string]int{"planner": 2, "dispatcher": 2, "healthwatch": 2, "stateapi": 1, "ingest": 1,
		"nats-1": 1, "nats-2": 1, "nats-3": 1, "postgres": 1} {
		require.Len(t, containers(t, project, svc), want, "running containers of %s", svc)
	}

	testbin.Poll(t, 3*time.Minute, "stateapi answers the CLI", func() error {
		_, err := cli("policies", "list", "-o", "json")
		return err
	})
	db := connectDB(t, project)

	out, err := cli("provisioning-keys", "create", "--fleet", "compose", "-o", "json")
	require.NoError(t, err, out)
	var key struct {
		Key string `json:"key"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &key), out)
	out, err = cli("policies", "create", "--image-pattern", "acme/app:*", "--update-strategy", "staged",
		"--batch-percentages", "10,50,100", "--batch-delay-seconds", "1", "--health-check-enabled", "true",
		"--health-check-timeout-seconds", "60", "--auto-rollback-enabled", "true", "--max-failure-rate", "0.2", "-o", "json")
	require.NoError(t, err, out)

	// Simulated devices on the host, following their targets over the cluster's NATS (port of nats-1).
	simCtx, stopSim := context.WithCancel(context.Background())
	sim := exec.CommandContext(simCtx, filepath.Join(bin, "fleetshift-agent"), "sim", "--server", server,
		"--provisioning-key", key.Key, "--devices", strconv.Itoa(devices), "--image", "acme/app:1.0",
		"--admin-token", admin, "--pull-time", "100ms-500ms", "--heartbeat", "5s", "--poll-interval", "3s",
		"--summary-every", "10s")
	var simOut testbin.Buffer
	sim.Stdout, sim.Stderr = &simOut, &simOut
	require.NoError(t, sim.Start())
	t.Cleanup(func() {
		stopSim()
		_ = sim.Wait()
		if t.Failed() {
			t.Logf("simulator:\n%s", simOut.Tail(8000))
		}
	})
	testbin.Poll(t, 2*time.Minute, "every simulated device runs acme/app:1.0", func() error {
		var n int
		err := db.QueryRow(context.Background(), `SELECT count(*) FROM device_current_state WHERE apps::text LIKE '%acme/app:1.0%'`).Scan(&n)
		if err != nil {
			return err
		}
		if n != devices {
			return fmt.Errorf("%d of %d devices report acme/app:1.0", n, devices)
		}
		return nil
	})

	// Rollout 1: a push of acme/app:1.1, followed with the CLI to completion.
	r1 := pushAndFind(t, cli, hookPort, hook, "1.1")
	waitStatus(t, cli, r1, "completed", 3*time.Minute)
	checkRollout(t, db, r1)

	// Rollout 2: acme/app:1.2; once its first batch has moved, kill one NATS node and restart the
	// dispatchers. It still completes, every device exactly once.
	r2 := pushAndFind(t, cli, hookPort, hook, "1.2")
	testbin.Poll(t, 2*time.Minute, "rollout 2 has moved a device", func() error {
		var n int
		if err := db.QueryRow(context.Background(), `SELECT count(*) FROM device_rollout_status
			WHERE rollout_id = $1 AND status <> 'pending'`, r2).Scan(&n); err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("no device of rollout 2 dispatched yet")
		}
		return nil
	})
	killed := containers(t, project, "nats-2")
	require.Len(t, killed, 1)
	out, err = testbin.Run(dir, env, "docker", "kill", killed[0])
	require.NoError(t, err, out)
	out, err = dc("restart", "-t", "5", "dispatcher")
	require.NoError(t, err, out)
	waitStatus(t, cli, r2, "completed", 3*time.Minute)
	checkRollout(t, db, r2)
}

// composeCommand is `docker compose` when the v2 plugin answers, else docker-compose (v1).
func composeCommand(t *testing.T) []string {
	t.Helper()
	if exec.Command("docker", "compose", "version").Run() == nil {
		return []string{"docker", "compose"}
	}
	if p, err := exec.LookPath("docker-compose"); err == nil {
		return []string{p}
	}
	t.Fatal("neither `docker compose` nor docker-compose is installed")
	return nil
}

// ensurePostgresImage builds fleetshift/postgres:dev with scripts/build-postgres-image when it is missing.
func ensurePostgresImage(t *testing.T) {
	t.Helper()
	if exec.Command("docker", "image", "inspect", "fleetshift/postgres:dev").Run() == nil {
		return
	}
	out, err := testbin.Run(testbin.RepoRoot(t), nil, filepath.Join(testbin.RepoRoot(t), "scripts", "build-postgres-image"))
	require.NoError(t, err, "build fleetshift/postgres:dev:\n%s", out)
}

// stackDir lays out what the README's commands need: compose.yaml, deploy/nats, deploy/compose (copies of
// the shipped files) and bin/ with the binaries just built.
func stackDir(t *testing.T, root, bin string) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"compose.yaml", "deploy/nats/nats.conf", "deploy/compose/compose.local.yaml"} {
		b, err := os.ReadFile(filepath.Join(root, f))
		require.NoError(t, err)
		require.NoError(t, os.MkdirAll(filepath.Dir(filepath.Join(dir, f)), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(dir, f), b, 0o644))
	}
	require.NoError(t, os.Symlink(bin, filepath.Join(dir, "bin")))
	return dir
}

// readmeCommands returns the `bin/fleetshift ...` and `docker compose ...` lines of the first sh block
// under README.md's "## Running with Docker Compose" (the image builds before them are done above).
func readmeCommands(t *testing.T, root string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "README.md"))
	require.NoError(t, err)
	_, section, ok := strings.Cut(string(b), "\n## Running with Docker Compose\n")
	require.True(t, ok, "README.md has no '## Running with Docker Compose' section")
	_, block, ok := strings.Cut(section, "```sh\n")
	require.True(t, ok, "no sh block in README's compose section")
	block, _, _ = strings.Cut(block, "```")
	var cmds []string
	for line := range strings.SplitSeq(block, "\n") {
		line, _, _ = strings.Cut(line, " #")
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "bin/fleetshift ") || strings.HasPrefix(line, "docker compose ") {
			cmds = append(cmds, line)
		}
	}
	require.NotEmpty(t, cmds, "README's compose block has no commands")
	return cmds
}

func readEnvFile(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	m := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			m[k] = v
		}
	}
	return m
}

// containers lists the running containers of a compose service by its labels.
func containers(t *testing.T, project, service string) []string {
	t.Helper()
	out, err := testbin.Run("", nil, "docker", "ps", "-q", "--filter", "label=com.docker.compose.project="+project,
		"--filter", "label=com.docker.compose.service="+service)
	require.NoError(t, err, out)
	return strings.Fields(out)
}

// connectDB connects to the stack's PostgreSQL at its container address.
func connectDB(t *testing.T, project string) *pgx.Conn {
	t.Helper()
	ids := containers(t, project, "postgres")
	require.Len(t, ids, 1)
	out, err := testbin.Run("", nil, "docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", ids[0])
	require.NoError(t, err, out)
	ips := strings.Fields(out)
	require.NotEmpty(t, ips, "postgres container has no address")
	url := fmt.Sprintf("postgres://fleetshift:fleetshift@%s:5432/fleetshift?sslmode=disable", ips[0])
	var conn *pgx.Conn
	testbin.Poll(t, time.Minute, "connect to the stack's PostgreSQL", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, url)
		if err != nil {
			return err
		}
		conn = c
		return nil
	})
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// pushAndFind sends the registry's push of acme/app:<tag> to ingest (Docker Hub format) and returns the
// rollout the CLI then lists for it.
func pushAndFind(t *testing.T, cli func(...string) (string, error), hookPort int, hook, tag string) string {
	t.Helper()
	body := fmt.Sprintf(`{"push_data":{"tag":%q,"pushed_at":%d,"pusher":"ci"},"repository":{"repo_name":"acme/app","name":"app","namespace":"acme"}}`,
		tag, time.Now().Unix())
	req, err := http.NewRequest(http.MethodPost, fmt.Sprintf("http://127.0.0.1:%d/api/v1/webhooks/docker-registry", hookPort), strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+hook)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusAccepted, resp.StatusCode, "webhook answer")
	var id string
	testbin.Poll(t, time.Minute, "a rollout of acme/app:"+tag, func() error {
		out, err := cli("rollouts", "list", "--image-name", "acme/app", "-o", "json")
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		list, err := decodeRollouts(out)
		if err != nil {
			return err
		}
		for _, r := range list {
			if r.NewTag == tag {
				id = r.ID
				return nil
			}
		}
		return fmt.Errorf("no rollout with tag %s in %s", tag, out)
	})
	return id
}

type rollout struct {
	ID     string `json:"rollout_id"`
	NewTag string `json:"new_tag"`
	Status string `json:"status"`
}

// decodeRollouts reads `rollouts list -o json`: the API's {"rollouts": [...]} or a bare list.
func decodeRollouts(out string) ([]rollout, error) {
	var page struct {
		Rollouts []rollout `json:"rollouts"`
	}
	if err := json.Unmarshal([]byte(out), &page); err == nil && page.Rollouts != nil {
		return page.Rollouts, nil
	}
	var list []rollout
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		return nil, fmt.Errorf("decode rollouts list: %w: %s", err, out)
	}
	return list, nil
}

func waitStatus(t *testing.T, cli func(...string) (string, error), id, want string, timeout time.Duration) {
	t.Helper()
	testbin.Poll(t, timeout, "rollout "+id+" "+want, func() error {
		out, err := cli("rollouts", "show", id, "-o", "json")
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		var r rollout
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			return fmt.Errorf("decode rollout: %w: %s", err, out)
		}
		if r.Status != want {
			return fmt.Errorf("status %s: %s", r.Status, out)
		}
		return nil
	})
}

// checkRollout: every device of the fleet has exactly one row in the rollout, completed; each was
// scheduled exactly once; the rollout's counters equal its rows.
func checkRollout(t *testing.T, db *pgx.Conn, id string) {
	t.Helper()
	ctx := context.Background()
	var rows, completed, scheduledTwice, missing int
	require.NoError(t, db.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE status = 'completed')
		FROM device_rollout_status WHERE rollout_id = $1`, id).Scan(&rows, &completed))
	require.Equal(t, devices, rows, "rows of rollout %s", id)
	require.Equal(t, devices, completed, "completed rows of rollout %s", id)
	require.NoError(t, db.QueryRow(ctx, `SELECT count(*) FROM devices d WHERE NOT EXISTS
		(SELECT 1 FROM device_rollout_status s WHERE s.rollout_id = $1 AND s.device_uuid = d.uuid)`, id).Scan(&missing))
	require.Zero(t, missing, "devices without a row in rollout %s", id)
	require.NoError(t, db.QueryRow(ctx, `SELECT count(*) FROM (SELECT u FROM rollout_events e, jsonb_array_elements_text(e.data->'devices') u
		WHERE e.rollout_id = $1 AND e.event_type = 'image.batch_devices_scheduled' GROUP BY u HAVING count(*) <> 1) x`, id).Scan(&scheduledTwice))
	require.Zero(t, scheduledTwice, "devices not scheduled exactly once in rollout %s", id)
	var total, updated, failed, rolledBack int
	require.NoError(t, db.QueryRow(ctx, `SELECT total_devices, updated_devices, failed_devices, rolled_back_devices
		FROM image_rollouts WHERE rollout_id = $1`, id).Scan(&total, &updated, &failed, &rolledBack))
	require.Equal(t, [4]int{rows, completed, 0, 0}, [4]int{total, updated, failed, rolledBack},
		"counters total, updated, failed, rolled back of rollout %s", id)
}
