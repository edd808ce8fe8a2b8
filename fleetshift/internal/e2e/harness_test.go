package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetshift/fleetshift/agent/sim"

	"github.com/fleetshift/fleetshift/fleetshift/internal/server"
	"github.com/fleetshift/fleetshift/shared/broker"
	"github.com/fleetshift/fleetshift/shared/config"
	"github.com/fleetshift/fleetshift/shared/logging"
	"github.com/fleetshift/fleetshift/shared/pgtest"
)

// env is one in-process fleetshift over a test database and a data dir that survive restarts.
type env struct {
	t       *testing.T
	db      *pgtest.DB
	dataDir string
	srv     *server.Server
	secret  string
	// httpAddr and natsAddr are pinned after the first start, so a restarted server keeps its URLs
	// (devices hold them).
	httpAddr, natsAddr string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return &env{t: t, db: pgtest.New(t), dataDir: t.TempDir(), secret: "hmac-secret",
		httpAddr: "127.0.0.1:0", natsAddr: "127.0.0.1:0"}
}

// start runs the server with roles (nil: all) until the test ends or stop is called.
func (e *env) start(roles ...string) *server.Server {
	e.t.Helper()
	return e.startTuned(server.Tuning{TickInterval: 100 * time.Millisecond}, roles...)
}

// startTuned is start with service timing (clock, chunk sizes) injected.
func (e *env) startTuned(tune server.Tuning, roles ...string) *server.Server {
	e.t.Helper()
	srv := e.startWithTune(nil, tune, roles...)
	e.srv = srv
	e.httpAddr = strings.TrimPrefix(srv.HTTPURL, "http://")
	if srv.Embedded != nil {
		e.natsAddr = srv.Embedded.Server.Addr().String()
	}
	return srv
}

// startWorker starts another "process" running only roles against the running server's NATS and
// database, as `fleetshift <role>` does; it stops at the returned function or when the test ends.
func (e *env) startWorker(roles ...string) *server.Server {
	e.t.Helper()
	pass, err := os.ReadFile(filepath.Join(e.dataDir, "nats-service-password"))
	if err != nil {
		e.t.Fatal(err)
	}
	return e.startWith(map[string]string{
		"NATS_URL": e.srv.NATSURL, "NATS_USER": broker.ServiceUser, "NATS_PASSWORD": strings.TrimSpace(string(pass)),
		"FLEETSHIFT_HTTP_ADDR": "127.0.0.1:0", "FLEETSHIFT_DATA_DIR": e.t.TempDir(),
		"FLEETSHIFT_ADMIN_TOKEN": e.srv.AdminToken, "FLEETSHIFT_WEBHOOK_TOKEN": e.srv.WebhookToken,
	}, roles...)
}

func (e *env) startWith(extra map[string]string, roles ...string) *server.Server {
	e.t.Helper()
	return e.startWithTune(extra, server.Tuning{TickInterval: 100 * time.Millisecond}, roles...)
}

func (e *env) startWithTune(extra map[string]string, tune server.Tuning, roles ...string) *server.Server {
	e.t.Helper()
	cfg, err := config.FromLookup(func(k string) (string, bool) {
		if v, ok := extra[k]; ok {
			return v, true
		}
		v, ok := map[string]string{
			"DATABASE_URL":          e.db.URL,
			"FLEETSHIFT_HTTP_ADDR":  e.httpAddr,
			"FLEETSHIFT_NATS_ADDR":  e.natsAddr,
			"FLEETSHIFT_DATA_DIR":   e.dataDir,
			"DOCKER_WEBHOOK_SECRET": e.secret,
			"FLEETSHIFT_LOG_LEVEL":  "warn",
		}[k]
		return v, ok
	})
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := server.Start(ctx, server.Options{Config: cfg, Log: logging.Nop(), Roles: roles, EmbedNATS: true, Tune: tune})
	if err != nil {
		e.t.Fatalf("start server: %v", err)
	}
	e.t.Cleanup(srv.Shutdown)
	return srv
}

// provisioningKey creates a provisioning key for fleet.
func (e *env) provisioningKey(fleet string) string {
	e.t.Helper()
	var k struct {
		Key string `json:"key"`
	}
	e.admin("POST", "/api/v1/provisioning-keys", map[string]any{"fleet_id": fleet}, 201).json(e.t, &k)
	if k.Key == "" {
		e.t.Fatal("no provisioning key")
	}
	return k.Key
}

// runSim starts simulated devices registering into fleet on images; they stop when the test ends.
func (e *env) runSim(fleet string, n int, images []string, mod func(*sim.Config)) *sim.Sim {
	e.t.Helper()
	s, _ := e.runSimStoppable(fleet, n, images, mod)
	return s
}

// runSimStoppable is runSim returning a function that takes the devices offline (and waits for them).
func (e *env) runSimStoppable(fleet string, n int, images []string, mod func(*sim.Config)) (*sim.Sim, func()) {
	e.t.Helper()
	cfg := sim.Config{
		Server: e.srv.HTTPURL, ProvisioningKey: e.provisioningKey(fleet), AdminToken: e.srv.AdminToken,
		Fleet: fleet, Devices: n, Images: images, Seed: 7, PullMin: 10 * time.Millisecond, PullMax: 60 * time.Millisecond,
		PollInterval: time.Second, Heartbeat: 2 * time.Second, StateDir: e.t.TempDir(), NamePrefix: fleet,
		Log: logging.Nop(),
	}
	if mod != nil {
		mod(&cfg)
	}
	s, err := sim.New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Run(ctx)
	}()
	stop := func() { cancel(); <-done }
	e.t.Cleanup(stop)
	return s, stop
}

func (e *env) stop() {
	if e.srv != nil {
		e.srv.Shutdown()
		e.srv = nil
	}
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
}

// call sends a request; body may be nil, a []byte, or a value encoded as JSON.
func (e *env) call(method, path string, body any, headers map[string]string) response {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, e.srv.HTTPURL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return response{status: res.StatusCode, header: res.Header, body: b}
}

// admin calls the operator API with the bootstrap admin token and fails the test on an unexpected status.
func (e *env) admin(method, path string, body any, want int) response {
	e.t.Helper()
	r := e.call(method, path, body, map[string]string{"Authorization": "Bearer " + e.srv.AdminToken})
	if r.status != want {
		e.t.Fatalf("%s %s: status %d, want %d: %s", method, path, r.status, want, r.body)
	}
	return r
}

// appsFor is a one-app, one-service target running image (plus an unrelated sidecar).
func appsFor(image string) map[string]any {
	return map[string]any{
		"1": map[string]any{"appId": 1, "appName": "main", "services": []any{
			map[string]any{"serviceId": 1, "serviceName": "web", "imageName": image, "config": map[string]any{"image": image}},
			map[string]any{"serviceId": 2, "serviceName": "cache", "imageName": "redis:7", "config": map[string]any{"image": "redis:7"}},
		}},
		"2": map[string]any{"appId": 2, "appName": "other", "services": []any{
			map[string]any{"serviceId": 3, "serviceName": "metrics", "imageName": "prom/node-exporter:1.8"},
		}},
	}
}

// addDevice creates a device in fleet running image and returns its key.
func (e *env) addDevice(uuid, fleet, image string) string {
	e.t.Helper()
	var created struct {
		UUID   string `json:"uuid"`
		APIKey string `json:"api_key"`
	}
	e.admin("POST", "/api/v1/devices", map[string]any{"uuid": uuid, "device_name": uuid, "fleet_id": fleet}, 201).json(e.t, &created)
	if created.UUID != uuid || created.APIKey == "" {
		e.t.Fatalf("create device: %+v", created)
	}
	e.admin("PUT", "/api/v1/devices/"+uuid+"/target-state", map[string]any{"apps": appsFor(image), "config": map[string]any{}}, 200)
	return created.APIKey
}
