// Package registrye2e runs fleetshift end to end on real parts: a CNCF Distribution registry container
// sends its own push notifications to `fleetshift serve` on the host; real `fleetshift-agent run` devices,
// each in its own network namespace with its own address, run the demo app as real containers on the
// host's Docker engine (one compose project each) and move through a staged policy.
package registrye2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
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
	"github.com/testcontainers/testcontainers-go"

	"github.com/fleetshift/fleetshift/realtest/internal/dockerenv"
	"github.com/fleetshift/fleetshift/realtest/internal/netns"
	"github.com/fleetshift/fleetshift/realtest/internal/testbin"
)

const numDevices = 5

// TestRegistryNotificationsRollOutToRealDevices: pushing demoapp:v2 to the registry starts a staged
// rollout that moves five real devices' containers to v2 (one device cut off from the network while it
// runs converges when its link comes back); pushing demoapp:broken pauses the rollout automatically and
// every failed device runs its v2 container again, as `docker inspect` shows.
func TestRegistryNotificationsRollOutToRealDevices(t *testing.T) {
	dockerenv.Require(t)
	if why := netns.Available(); why != "" {
		t.Fatalf("network namespaces are needed (run as root with iproute2): %s", why)
	}
	dockerenv.Images(t)
	bin := testbin.Build(t)
	lan := netns.New(t)
	id := randHex(3)

	// fleetshift serve on the host, reachable from the namespaces (lan.HostIP) and from containers (the
	// docker bridge gateway): HTTP and NATS listen on every interface.
	dbURL := scratchDatabase(t)
	admin, hook := randHex(16), randHex(16)
	httpPort, natsPort := testbin.FreePort(t), testbin.FreePort(t)
	srv := start(t, "serve", exec.Command(filepath.Join(bin, "fleetshift"), "serve"), append(os.Environ(),
		"DATABASE_URL="+dbURL,
		"FLEETSHIFT_HTTP_ADDR=0.0.0.0:"+strconv.Itoa(httpPort),
		"FLEETSHIFT_NATS_ADDR=0.0.0.0:"+strconv.Itoa(natsPort),
		fmt.Sprintf("FLEETSHIFT_PUBLIC_NATS_URL=nats://%s:%d", lan.HostIP, natsPort),
		"FLEETSHIFT_DATA_DIR="+t.TempDir(),
		"FLEETSHIFT_ADMIN_TOKEN="+admin,
		"FLEETSHIFT_WEBHOOK_TOKEN="+hook,
		"FLEETSHIFT_LOG_FORMAT=json",
	))
	api := &apiClient{t: t, base: fmt.Sprintf("http://127.0.0.1:%d", httpPort), token: admin}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		b, _ := api.do(http.MethodGet, "/api/v1/rollouts", nil)
		var page struct {
			Rollouts []rollout `json:"rollouts"`
		}
		_ = json.Unmarshal(b, &page)
		for _, r := range page.Rollouts {
			devs, _ := api.do(http.MethodGet, "/api/v1/rollouts/"+r.ID+"/devices?limit=100", nil)
			evs, _ := api.do(http.MethodGet, "/api/v1/rollouts/"+r.ID+"/events?limit=100", nil)
			t.Logf("rollout %s (%s) devices:\n%s\nevents:\n%s", r.ID, r.NewTag, devs, evs)
		}
	})
	testbin.Poll(t, 2*time.Minute, "fleetshift serve answers", func() error {
		_, err := api.do(http.MethodGet, "/api/v1/image-policies", nil)
		if err != nil && srv.exited() {
			return fmt.Errorf("serve exited: %s", srv.out.Tail(2000))
		}
		return err
	})

	// The registry, configured to notify ingest with the webhook token.
	gateway := dockerBridgeGateway(t)
	registry := dockerenv.StartRegistry(t, testcontainers.WithFiles(testcontainers.ContainerFile{
		Reader:            strings.NewReader(registryConfig(fmt.Sprintf("http://%s:%d/api/v1/webhooks/docker-registry", gateway, httpPort), hook)),
		ContainerFilePath: "/etc/distribution/config.yml", FileMode: 0o644,
	}))
	repo := registry.Host + "/demoapp"
	// push tags the local demo image into the registry and removes the tag again, so devices really pull.
	push := func(tag string) {
		t.Helper()
		registry.Push(t, "fleetshift/demoapp:"+tag, "demoapp:"+tag)
		t.Cleanup(func() { _, _ = testbin.Run("", nil, "docker", "image", "rm", "-f", repo+":"+tag) })
	}
	push("v1") // no policy yet: nothing rolls out

	_, err := api.do(http.MethodPost, "/api/v1/image-policies", map[string]any{
		"image_pattern": repo + ":*", "update_strategy": "staged", "batch_percentages": []int{20, 60, 100},
		"batch_delay_seconds": 1, "health_check_enabled": true, "health_check_timeout_seconds": 120,
		"health_check_config":   map[string]any{"type": "container", "interval_seconds": 2, "retries": 20, "timeout_seconds": 20},
		"auto_rollback_enabled": true, "max_failure_rate": 0.2, "min_sample_size": 1,
	})
	require.NoError(t, err)
	keyBody, err := api.do(http.MethodPost, "/api/v1/provisioning-keys", map[string]any{"fleet_id": "e2e-" + id})
	require.NoError(t, err)
	var key struct {
		Key string `json:"key"`
	}
	require.NoError(t, json.Unmarshal(keyBody, &key))

	// Five devices, each an agent in its own namespace with its own compose project prefix.
	devs := make([]*device, numDevices)
	for i := range devs {
		h := lan.AddHost(t, i+1)
		d := &device{host: h, name: fmt.Sprintf("dev-%s-%d", id, i+1), state: t.TempDir(),
			prefix: fmt.Sprintf("e2e%sd%d-", id, i+1)}
		d.project = d.prefix + "1"
		cmd := h.Command(context.Background(), filepath.Join(bin, "fleetshift-agent"), "run",
			"--server", fmt.Sprintf("http://%s:%d", lan.HostIP, httpPort), "--provisioning-key", key.Key,
			"--name", d.name, "--state-dir", d.state, "--project-prefix", d.prefix,
			"--poll-interval", "5s", "--heartbeat", "10s", "--log-level", "debug")
		d.proc = start(t, d.name, cmd, os.Environ())
		t.Cleanup(func() { removeProject(d.project) }) // runs after the agent is stopped
		t.Cleanup(func() {
			if t.Failed() && d.uuid != "" {
				cur, _ := api.do(http.MethodGet, "/api/v1/devices/"+d.uuid+"/current-state", nil)
				tgt, _ := api.do(http.MethodGet, "/api/v1/devices/"+d.uuid+"/target-state", nil)
				c, err := d.container()
				t.Logf("%s: current state %s\ntarget %s\ncontainer %+v %v", d.name, cur, tgt, c, err)
			}
		})
		devs[i] = d
	}
	for _, d := range devs {
		testbin.Poll(t, time.Minute, d.name+" registers", func() error {
			b, err := os.ReadFile(filepath.Join(d.state, "identity.json"))
			if err != nil {
				return err
			}
			var ident struct {
				UUID string `json:"uuid"`
			}
			if err := json.Unmarshal(b, &ident); err != nil || ident.UUID == "" {
				return fmt.Errorf("identity %s: %v", b, err)
			}
			d.uuid = ident.UUID
			return nil
		})
		_, err := api.do(http.MethodPut, "/api/v1/devices/"+d.uuid+"/target-state", targetOf(repo+":v1"))
		require.NoError(t, err)
	}
	for _, d := range devs {
		d.waitRunning(t, repo+":v1", false, 3*time.Minute)
	}

	// v2: the registry's notification starts the rollout. The last device is cut off before the push
	// and comes back once its batch has been dispatched to it.
	cut := devs[numDevices-1]
	require.NoError(t, cut.host.SetLink(context.Background(), false))
	push("v2")
	r2 := api.waitRollout("v2", time.Minute)
	testbin.Poll(t, 3*time.Minute, "the cut-off device's batch is dispatched", func() error {
		st := api.deviceStatus(r2, cut.uuid)
		if st == "pending" || st == "" {
			return fmt.Errorf("%s is %q", cut.name, st)
		}
		return nil
	})
	// Its target changed while it could not be reached: it still runs v1 until the link is back.
	require.True(t, sameImage(cut.inspect(t).Config.Image, repo+":v1"), "%s moved while cut off", cut.name)
	require.NoError(t, cut.host.SetLink(context.Background(), true))
	api.waitStatus(r2, "completed", 3*time.Minute)
	for _, d := range devs {
		require.Equal(t, "completed", api.deviceStatus(r2, d.uuid), d.name)
		d.waitRunning(t, repo+":v2", true, time.Minute)
	}

	// broken: batch 1 fails its health check, the rollout pauses itself and the failed device is rolled
	// back to its v2 container.
	v2IDs := map[string]string{}
	for _, d := range devs {
		v2IDs[d.name] = d.inspect(t).ID
	}
	push("broken")
	r3 := api.waitRollout("broken", time.Minute)
	api.waitStatus(r3, "paused", 3*time.Minute)
	var failed []*device
	for _, d := range devs {
		switch st := api.deviceStatus(r3, d.uuid); st {
		case "failed", "rolled_back":
			failed = append(failed, d)
		case "pending", "skipped":
		default:
			t.Fatalf("%s is %s in the paused rollout", d.name, st)
		}
	}
	require.NotEmpty(t, failed, "no device failed on the broken image")
	for _, d := range failed {
		testbin.Poll(t, 2*time.Minute, d.name+" rolled back", func() error {
			if st := api.deviceStatus(r3, d.uuid); st != "rolled_back" {
				return fmt.Errorf("status %s", st)
			}
			return nil
		})
		c := d.waitRunning(t, repo+":v2", true, 2*time.Minute)
		require.NotEqual(t, v2IDs[d.name], c.ID, "%s: the v2 container after rollback is a new one (it ran broken in between)", d.name)
	}
	for _, d := range devs {
		img := d.inspect(t).Config.Image
		require.True(t, sameImage(img, repo+":v2"), "%s runs %s after the broken rollout, want v2", d.name, img)
	}
}

type device struct {
	host                               *netns.Host
	name, state, prefix, project, uuid string
	proc                               *process
}

// container is what the test reads from `docker inspect`.
type container struct {
	ID     string `json:"Id"`
	Config struct {
		Image  string            `json:"Image"`
		Labels map[string]string `json:"Labels"`
	} `json:"Config"`
	State struct {
		Status string `json:"Status"`
		Health *struct {
			Status string `json:"Status"`
		} `json:"Health"`
	} `json:"State"`
}

// inspect returns the device's one container (service web of its compose project), read from Docker.
func (d *device) inspect(t *testing.T) container {
	t.Helper()
	c, err := d.container()
	require.NoError(t, err)
	return c
}

func (d *device) container() (container, error) {
	out, err := testbin.Run("", nil, "docker", "ps", "-aq", "--filter", "label=com.docker.compose.project="+d.project,
		"--filter", "label=com.docker.compose.service=web")
	if err != nil {
		return container{}, fmt.Errorf("%v: %s", err, out)
	}
	ids := strings.Fields(out)
	if len(ids) != 1 {
		return container{}, fmt.Errorf("%s has %d containers of service web", d.name, len(ids))
	}
	out, err = testbin.Run("", nil, "docker", "inspect", ids[0])
	if err != nil {
		return container{}, fmt.Errorf("%v: %s", err, out)
	}
	var cs []container
	if err := json.Unmarshal([]byte(out), &cs); err != nil || len(cs) != 1 {
		return container{}, fmt.Errorf("docker inspect %s: %v", ids[0], err)
	}
	return cs[0], nil
}

// waitRunning waits until Docker shows the device's container running image (and healthy, if asked).
func (d *device) waitRunning(t *testing.T, image string, healthy bool, timeout time.Duration) container {
	t.Helper()
	var c container
	testbin.Poll(t, timeout, d.name+" runs "+image, func() error {
		var err error
		if c, err = d.container(); err != nil {
			if d.proc.exited() {
				return fmt.Errorf("agent exited: %s", d.proc.out.Tail(2000))
			}
			return err
		}
		if !sameImage(c.Config.Image, image) || c.State.Status != "running" ||
			healthy && (c.State.Health == nil || c.State.Health.Status != "healthy") {
			return fmt.Errorf("container %.12s: image %s, %s, health %+v", c.ID, c.Config.Image, c.State.Status, c.State.Health)
		}
		return nil
	})
	return c
}

// removeProject removes a device's containers and network (the agent is gone by then).
func removeProject(project string) {
	out, _ := testbin.Run("", nil, "docker", "ps", "-aq", "--filter", "label=com.docker.compose.project="+project)
	if ids := strings.Fields(out); len(ids) > 0 {
		_, _ = testbin.Run("", nil, "docker", append([]string{"rm", "-f"}, ids...)...)
	}
	_, _ = testbin.Run("", nil, "docker", "network", "rm", project+"_default")
}

// sameImage: ref is want, or want pinned to a digest (a rollout writes repo:tag@sha256:... when the
// registry's notification carried the digest).
func sameImage(ref, want string) bool {
	return ref == want || strings.HasPrefix(ref, want+"@sha256:")
}

func targetOf(image string) map[string]any {
	return map[string]any{"config": map[string]any{}, "apps": map[string]any{"1": map[string]any{
		"appId": 1, "appName": "demo", "services": []any{map[string]any{
			// Docker's default bridge: no network per compose project to create (and no iptables work).
			"serviceId": 1, "serviceName": "web", "imageName": image, "config": map[string]any{"image": image, "network_mode": "bridge"},
		}},
	}}}
}

// process is a command started for the test, stopped in t.Cleanup.
type process struct {
	cmd  *exec.Cmd
	out  testbin.Buffer
	done chan struct{}
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func start(t *testing.T, name string, cmd *exec.Cmd, env []string) *process {
	t.Helper()
	p := &process{cmd: cmd, done: make(chan struct{})}
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = &p.out, &p.out
	require.NoError(t, cmd.Start(), "start %s", name)
	go func() { _ = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("%s output (tail):\n%s", name, p.out.Tail(4000))
		}
	})
	return p
}

// scratchDatabase creates an empty database on the test server (TEST_DATABASE_URL) for serve to migrate,
// dropped at cleanup.
func scratchDatabase(t *testing.T) string {
	t.Helper()
	server := os.Getenv("TEST_DATABASE_URL")
	if server == "" {
		server = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, server)
	require.NoError(t, err, "connect to the test PostgreSQL (TEST_DATABASE_URL)")
	defer conn.Close(ctx)
	name := "fleetshift_e2e_" + randHex(6)
	_, err = conn.Exec(ctx, "CREATE DATABASE "+name)
	require.NoError(t, err)
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), server)
		if err == nil {
			_, _ = c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
			_ = c.Close(context.Background())
		}
	})
	cfg, err := pgx.ParseConfig(server)
	require.NoError(t, err)
	return fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", cfg.User, cfg.Host, cfg.Port, name)
}

// dockerBridgeGateway is the host's address on Docker's default bridge, where containers reach the host:
// the IPAM gateway when set, else the IPv4 address of the bridge interface (docker0).
func dockerBridgeGateway(t *testing.T) string {
	t.Helper()
	out, err := testbin.Run("", nil, "docker", "network", "inspect", "bridge", "-f",
		`{{range .IPAM.Config}}{{.Gateway}}{{end}} {{index .Options "com.docker.network.bridge.name"}}`)
	require.NoError(t, err, out)
	f := strings.Fields(out)
	if len(f) == 2 {
		return f[0]
	}
	require.Len(t, f, 1, "docker network inspect bridge: %q", out)
	ifc, err := net.InterfaceByName(f[0])
	require.NoError(t, err, "docker bridge interface")
	addrs, err := ifc.Addrs()
	require.NoError(t, err)
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil {
			return ipn.IP.String()
		}
	}
	t.Fatalf("docker bridge %s has no IPv4 address", f[0])
	return ""
}

// registryConfig is the registry's config.yml: filesystem storage, and notifications of pushes to url
// with the webhook token as a Bearer header (Distribution's notifications.endpoints).
func registryConfig(url, token string) string {
	return fmt.Sprintf(`version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: /var/lib/registry
http:
  addr: :5000
notifications:
  endpoints:
    - name: fleetshift
      url: %s
      headers:
        Authorization: [Bearer %s]
      timeout: 5s
      threshold: 3
      backoff: 1s
      ignore:
        actions: [pull]
`, url, token)
}

type apiClient struct {
	t           *testing.T
	base, token string
}

func (a *apiClient) do(method, path string, body any) ([]byte, error) {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, a.base+path, r)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+a.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		return b, fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	return b, nil
}

type rollout struct {
	ID         string `json:"rollout_id"`
	NewTag     string `json:"new_tag"`
	Status     string `json:"status"`
	AutoPaused bool   `json:"auto_paused"`
}

// waitRollout returns the rollout of the given tag once the pushed notification has created it.
func (a *apiClient) waitRollout(tag string, timeout time.Duration) string {
	a.t.Helper()
	var id string
	testbin.Poll(a.t, timeout, "a rollout of tag "+tag, func() error {
		b, err := a.do(http.MethodGet, "/api/v1/rollouts", nil)
		if err != nil {
			return err
		}
		var page struct {
			Rollouts []rollout `json:"rollouts"`
		}
		if err := json.Unmarshal(b, &page); err != nil {
			return err
		}
		for _, r := range page.Rollouts {
			if r.NewTag == tag {
				id = r.ID
				return nil
			}
		}
		return fmt.Errorf("no rollout of %s yet", tag)
	})
	return id
}

func (a *apiClient) waitStatus(id, want string, timeout time.Duration) {
	a.t.Helper()
	testbin.Poll(a.t, timeout, "rollout "+id+" "+want, func() error {
		b, err := a.do(http.MethodGet, "/api/v1/rollouts/"+id, nil)
		if err != nil {
			return err
		}
		var r rollout
		if err := json.Unmarshal(b, &r); err != nil {
			return err
		}
		if r.Status != want {
			return fmt.Errorf("status %s: %s", r.Status, b)
		}
		return nil
	})
}

// deviceStatus is the device's row status in the rollout ("" when it has none).
func (a *apiClient) deviceStatus(rolloutID, uuid string) string {
	a.t.Helper()
	b, err := a.do(http.MethodGet, "/api/v1/rollouts/"+rolloutID+"/devices?limit=100", nil)
	require.NoError(a.t, err)
	var page struct {
		Devices []struct {
			UUID   string `json:"device_uuid"`
			Status string `json:"status"`
		} `json:"devices"`
	}
	require.NoError(a.t, json.Unmarshal(b, &page), "%s", b)
	for _, d := range page.Devices {
		if d.UUID == uuid {
			return d.Status
		}
	}
	return ""
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
