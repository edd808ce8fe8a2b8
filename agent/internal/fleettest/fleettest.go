// Package fleettest plays the fleetshift server's role for the agent's tests: an httptest server with
// the device and admin routes the agent uses, and an embedded JetStream server that admits a device only
// with its own uuid and key and only to its own subjects (as the real auth callout does).
package fleettest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleetshift/fleetshift/agent/wire"
)

// Names the fake server uses.
const (
	ProvisioningKey = "prov-key"
	AdminToken      = "admin-token"
	Fleet           = "fleet-1"
	adminUser       = "admin"
)

// Options shape the fake server.
type Options struct {
	// NoNATS runs the HTTP side only.
	NoNATS bool
}

// Received is one report the server got.
type Received struct {
	Via    string // "nats" or "http"
	At     time.Time
	Report wire.DeviceReport
}

type dev struct {
	key, name string
	tags      []string
	target    wire.DeviceTarget
	reports   []Received
}

// Server is the fake fleetshift server.
type Server struct {
	t        testing.TB
	HTTP     *httptest.Server
	NATS     *server.Server
	NATSURL  string
	js       jetstream.JetStream
	mu       sync.Mutex
	devices  map[string]*dev
	fleetDef map[string]wire.App
	// HTTPDown makes every route answer 503; PatchDown only the report route.
	HTTPDown  atomic.Bool
	PatchDown atomic.Bool
	// Counters.
	Gets, NotModified, Patches, Registrations atomic.Int64
}

// New starts the fake server; everything stops with the test.
func New(t testing.TB, o Options) *Server {
	t.Helper()
	s := &Server{t: t, devices: map[string]*dev{}}
	if !o.NoNATS {
		s.startNATS(t)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/v1/device/register", s.register)
	mux.HandleFunc("GET /api/v1/device/{uuid}/state", s.getState)
	mux.HandleFunc("PATCH /api/v1/device/state", s.patchState)
	mux.HandleFunc("PUT /api/v1/devices/{uuid}/target-state", s.putDeviceTarget)
	mux.HandleFunc("PUT /api/v1/fleets/{fleet}/target-state", s.putFleetTarget)
	mux.HandleFunc("GET /api/v1/devices/{uuid}", s.getDevice)
	s.HTTP = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.HTTPDown.Load() {
			http.Error(w, `{"error":{"code":"unavailable","message":"down"}}`, http.StatusServiceUnavailable)
			return
		}
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(s.HTTP.Close)
	return s
}

type authenticator struct{ s *Server }

func (a authenticator) Check(c server.ClientAuthentication) bool {
	o := c.GetOpts()
	if o.Username == adminUser && o.Password == adminUser {
		c.RegisterUser(&server.User{Username: adminUser})
		return true
	}
	a.s.mu.Lock()
	d, ok := a.s.devices[o.Username]
	a.s.mu.Unlock()
	if !ok || d.key != o.Password {
		return false
	}
	uuid := o.Username
	target := "fleet.device." + uuid + ".target"
	c.RegisterUser(&server.User{
		Username: uuid,
		Permissions: &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: []string{"fleet.device." + uuid + ".state", "$JS.API.DIRECT.GET.FLEET_TARGETS." + target}},
			Subscribe: &server.SubjectPermission{Allow: []string{target, "_INBOX_" + uuid + ".>"}},
		},
	})
	return true
}

func (s *Server) startNATS(t testing.TB) {
	ns, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true,
		CustomClientAuthentication: authenticator{s},
	})
	if err != nil {
		t.Fatalf("start nats: %v", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats not ready")
	}
	t.Cleanup(ns.Shutdown)
	s.NATS = ns
	s.NATSURL = ns.ClientURL()
	nc, err := nats.Connect(s.NATSURL, nats.UserInfo(adminUser, adminUser))
	if err != nil {
		t.Fatalf("connect nats: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, cfg := range []jetstream.StreamConfig{
		{Name: "FLEET_TARGETS", Subjects: []string{"fleet.device.*.target"}, MaxMsgsPerSubject: 1, AllowDirect: true, Storage: jetstream.MemoryStorage},
		{Name: "FLEET_REPORTS", Subjects: []string{"fleet.device.*.state"}, Storage: jetstream.MemoryStorage},
	} {
		if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
			t.Fatalf("create stream %s: %v", cfg.Name, err)
		}
	}
	if _, err := nc.Subscribe("fleet.device.*.state", func(m *nats.Msg) {
		uuid := strings.Split(m.Subject, ".")[2]
		s.record(uuid, "nats", m.Data)
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	s.js = js
}

func (s *Server) record(uuid, via string, body []byte) bool {
	var rep wire.Report
	if err := json.Unmarshal(body, &rep); err != nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for id := range rep {
		if id != uuid {
			return false
		}
	}
	d, ok := s.devices[uuid]
	if !ok {
		return false
	}
	if r, ok := rep[uuid]; ok {
		d.reports = append(d.reports, Received{Via: via, At: time.Now(), Report: r})
	}
	return true
}

func newID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func bearer(r *http.Request) string {
	return strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
}

func (s *Server) register(w http.ResponseWriter, r *http.Request) {
	if bearer(r) != ProvisioningKey {
		writeJSON(w, 401, map[string]any{"error": map[string]string{"code": "unauthorized", "message": "bad key"}})
		return
	}
	var body struct {
		Name string   `json:"device_name"`
		Tags []string `json:"tags"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil || body.Name == "" {
		writeJSON(w, 400, map[string]any{"error": map[string]string{"code": "invalid", "message": "device_name"}})
		return
	}
	s.Registrations.Add(1)
	uuid, key := newID(), newID()
	s.mu.Lock()
	d := &dev{key: key, name: body.Name, tags: body.Tags}
	s.devices[uuid] = d
	def := s.fleetDef
	s.mu.Unlock()
	if def != nil {
		s.SetTarget(uuid, def)
	}
	writeJSON(w, 201, map[string]string{"uuid": uuid, "api_key": key, "nats_url": s.NATSURL})
}

func (s *Server) device(r *http.Request, uuid string) (*dev, bool) {
	key := r.Header.Get("X-Device-API-Key")
	if key == "" {
		key = bearer(r)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.devices[uuid]
	return d, ok && d.key == key
}

func (s *Server) getState(w http.ResponseWriter, r *http.Request) {
	uuid := r.PathValue("uuid")
	d, ok := s.device(r, uuid)
	if !ok {
		writeJSON(w, 401, map[string]any{"error": map[string]string{"code": "unauthorized", "message": "bad key"}})
		return
	}
	s.Gets.Add(1)
	s.mu.Lock()
	t := d.target
	s.mu.Unlock()
	etag := `"` + strconv.FormatInt(t.Version, 10) + `"`
	if r.Header.Get("If-None-Match") == etag {
		s.NotModified.Add(1)
		w.WriteHeader(http.StatusNotModified)
		return
	}
	w.Header().Set("ETag", etag)
	writeJSON(w, 200, wire.Target{uuid: t})
}

func (s *Server) patchState(w http.ResponseWriter, r *http.Request) {
	if s.PatchDown.Load() {
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	}
	var all json.RawMessage
	var raw map[string]json.RawMessage
	if err := json.NewDecoder(r.Body).Decode(&all); err != nil || json.Unmarshal(all, &raw) != nil || len(raw) != 1 {
		writeJSON(w, 400, map[string]any{"error": map[string]string{"code": "invalid", "message": "body"}})
		return
	}
	for uuid := range raw {
		if _, ok := s.device(r, uuid); !ok {
			writeJSON(w, 401, map[string]any{"error": map[string]string{"code": "unauthorized", "message": "bad key"}})
			return
		}
		s.Patches.Add(1)
		s.record(uuid, "http", all)
	}
	writeJSON(w, 200, map[string]bool{"ok": true})
}

func (s *Server) putDeviceTarget(w http.ResponseWriter, r *http.Request) {
	if bearer(r) != AdminToken {
		writeJSON(w, 401, map[string]any{"error": map[string]string{"code": "unauthorized", "message": "admin"}})
		return
	}
	var body struct {
		Apps map[string]wire.App `json:"apps"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		writeJSON(w, 400, map[string]any{"error": map[string]string{"code": "invalid", "message": err.Error()}})
		return
	}
	if _, ok := s.SetTargetOK(r.PathValue("uuid"), body.Apps); !ok {
		writeJSON(w, 404, map[string]any{"error": map[string]string{"code": "not_found", "message": "device"}})
		return
	}
	writeJSON(w, 200, map[string]bool{"ok": true})
}

func (s *Server) putFleetTarget(w http.ResponseWriter, r *http.Request) {
	if bearer(r) != AdminToken || r.PathValue("fleet") != Fleet {
		writeJSON(w, 401, map[string]any{"error": map[string]string{"code": "unauthorized", "message": "admin"}})
		return
	}
	var body struct {
		Apps map[string]wire.App `json:"apps"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		writeJSON(w, 400, map[string]any{"error": map[string]string{"code": "invalid", "message": err.Error()}})
		return
	}
	s.mu.Lock()
	s.fleetDef = body.Apps
	s.mu.Unlock()
	writeJSON(w, 200, map[string]bool{"ok": true})
}

func (s *Server) getDevice(w http.ResponseWriter, r *http.Request) {
	if bearer(r) != AdminToken {
		writeJSON(w, 401, map[string]any{"error": map[string]string{"code": "unauthorized", "message": "admin"}})
		return
	}
	uuid := r.PathValue("uuid")
	s.mu.Lock()
	d, ok := s.devices[uuid]
	s.mu.Unlock()
	if !ok {
		writeJSON(w, 404, map[string]any{"error": map[string]string{"code": "not_found", "message": "device"}})
		return
	}
	writeJSON(w, 200, map[string]any{"uuid": uuid, "device_name": d.name, "fleet_id": Fleet})
}

// AddDevice registers a device directly and returns its uuid and key.
func (s *Server) AddDevice(name string) (uuid, key string) {
	uuid, key = newID(), newID()
	s.mu.Lock()
	s.devices[uuid] = &dev{key: key, name: name}
	s.mu.Unlock()
	return uuid, key
}

// SetTarget gives a device a new target version with apps and publishes it on NATS.
func (s *Server) SetTarget(uuid string, apps map[string]wire.App) wire.DeviceTarget {
	t, ok := s.SetTargetOK(uuid, apps)
	if !ok {
		s.t.Errorf("set target: no device %s", uuid)
	}
	return t
}

// SetTargetOK is SetTarget reporting whether the device exists.
func (s *Server) SetTargetOK(uuid string, apps map[string]wire.App) (wire.DeviceTarget, bool) {
	return s.setTarget(uuid, apps, nil)
}

// SetTargetPrefetch is SetTarget with prefetch entries: images to pull ahead.
func (s *Server) SetTargetPrefetch(uuid string, apps map[string]wire.App, prefetch ...string) wire.DeviceTarget {
	var entries []wire.Prefetch
	for _, img := range prefetch {
		entries = append(entries, wire.Prefetch{Image: img, RolloutID: "r-" + img})
	}
	t, ok := s.setTarget(uuid, apps, entries)
	if !ok {
		s.t.Errorf("set target: no device %s", uuid)
	}
	return t
}

func (s *Server) setTarget(uuid string, apps map[string]wire.App, prefetch []wire.Prefetch) (wire.DeviceTarget, bool) {
	s.mu.Lock()
	d, ok := s.devices[uuid]
	if !ok {
		s.mu.Unlock()
		return wire.DeviceTarget{}, false
	}
	d.target = wire.DeviceTarget{Apps: apps, Config: json.RawMessage(`{}`), Prefetch: prefetch, Version: d.target.Version + 1}
	t := d.target
	s.mu.Unlock()
	if s.js != nil {
		s.Publish(uuid, t)
	}
	return t, true
}

// Publish puts a target message on the device's subject (into the targets stream) without touching
// what the HTTP side serves: tests use it to replay stale or duplicate messages.
func (s *Server) Publish(uuid string, t wire.DeviceTarget) {
	b, err := json.Marshal(wire.Target{uuid: t})
	if err != nil {
		s.t.Errorf("publish target: %v", err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := s.js.Publish(ctx, "fleet.device."+uuid+".target", b); err != nil {
		s.t.Errorf("publish target: %v", err)
	}
}

// Reports returns the reports a device sent, oldest first.
func (s *Server) Reports(uuid string) []Received {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d, ok := s.devices[uuid]; ok {
		return append([]Received(nil), d.reports...)
	}
	return nil
}

// LastReport returns the newest report of a device.
func (s *Server) LastReport(uuid string) (Received, bool) {
	r := s.Reports(uuid)
	if len(r) == 0 {
		return Received{}, false
	}
	return r[len(r)-1], true
}

// Eventually polls cond until it returns nil or timeout passes (then fails the test with its error).
func Eventually(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: %v", timeout, err)
		}
		<-tick.C
	}
}

// Images is a one-app target running images, one service each, named s0, s1, ...
func Images(images ...string) map[string]wire.App {
	app := wire.App{AppID: json.RawMessage("1"), AppName: "app"}
	for i, img := range images {
		app.Services = append(app.Services, wire.Service{ServiceName: fmt.Sprintf("s%d", i), ImageName: img})
	}
	return map[string]wire.App{"1": app}
}
