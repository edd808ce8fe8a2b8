package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleetshift/fleetshift/fleetshift/internal/secrets"
	"github.com/fleetshift/fleetshift/shared/broker"
	"github.com/fleetshift/fleetshift/streams"
)

// ServerHello is what the server child prints once it serves.
type ServerHello struct {
	HTTPURL string `json:"http_url"`
	NATSURL string `json:"nats_url"`
	NATS    string `json:"nats_version"`
}

// Server is the fleetshift server under test, running in a child process, and the harness's own
// connections to it.
type Server struct {
	ServerHello
	AdminToken, WebhookToken string
	Child                    *Child
	NC                       *nats.Conn
	JS                       jetstream.JetStream
	Subjects                 streams.Subjects
	http                     *http.Client
}

// ServerOptions say how to start the server child.
type ServerOptions struct {
	DatabaseURL string
	// CPUs pins the server process (empty: unpinned).
	CPUs string
	// CPUProfile, when set, is where the child writes a CPU profile of its whole life.
	CPUProfile string
}

// Env variables the server child reads besides fleetshift's own configuration.
const (
	EnvCPUProfile = "FLEETSHIFT_BENCH_CPUPROFILE"
	// EnvSimHeapProfile is where the simulator child writes a heap profile when told to stop.
	EnvSimHeapProfile = "FLEETSHIFT_BENCH_SIM_HEAPPROFILE"
)

// StartServer runs `<bench> server` over a fresh data dir: all-in-one fleetshift with embedded
// JetStream, admin and webhook tokens chosen here, logs at warn.
func StartServer(ctx context.Context, o ServerOptions) (*Server, error) {
	dir, err := os.MkdirTemp("", "fleetshift-bench-")
	if err != nil {
		return nil, fmt.Errorf("start server: data dir: %w", err)
	}
	// The harness connects to the embedded NATS as the service user: choose its password first.
	svc, err := secrets.Ensure(dir, "nats-service-password", "")
	if err != nil {
		return nil, fmt.Errorf("start server: %w", err)
	}
	s := &Server{AdminToken: secrets.New(), WebhookToken: secrets.New(), Subjects: streams.New(""),
		http: &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}}
	env := []string{
		"DATABASE_URL=" + o.DatabaseURL,
		"FLEETSHIFT_HTTP_ADDR=127.0.0.1:0",
		"FLEETSHIFT_NATS_ADDR=127.0.0.1:0",
		"FLEETSHIFT_DATA_DIR=" + dir,
		"FLEETSHIFT_ADMIN_TOKEN=" + s.AdminToken,
		"FLEETSHIFT_WEBHOOK_TOKEN=" + s.WebhookToken,
		"FLEETSHIFT_LOG_LEVEL=warn",
		"FLEETSHIFT_LOG_FORMAT=console",
		"NATS_URL=",
		EnvCPUs + "=" + o.CPUs,
		EnvCPUProfile + "=" + o.CPUProfile,
	}
	child, err := StartChild(ctx, "server", []string{"server"}, env, 2*time.Minute)
	if err != nil {
		return nil, err
	}
	s.Child = child
	if err := json.Unmarshal(child.Hello, &s.ServerHello); err != nil {
		child.Kill()
		return nil, fmt.Errorf("start server: hello %q: %w", child.Hello, err)
	}
	s.NC, err = broker.Connect(s.NATSURL, "fleetshift-bench", broker.Credentials{User: broker.ServiceUser, Password: svc.Secret},
		nats.ReconnectBufSize(64<<20))
	if err != nil {
		child.Kill()
		return nil, fmt.Errorf("connect harness to server NATS: %w", err)
	}
	if s.JS, err = jetstream.New(s.NC, jetstream.WithPublishAsyncMaxPending(4096)); err != nil {
		s.Stop()
		return nil, fmt.Errorf("open jetstream: %w", err)
	}
	go func() { // the data dir goes with the child
		<-child.Exited()
		_ = os.RemoveAll(filepath.Clean(dir))
	}()
	return s, nil
}

// Stop shuts the server child down cleanly.
func (s *Server) Stop() error {
	if s.NC != nil {
		s.NC.Close()
	}
	return s.Child.Stop(30 * time.Second)
}

// Addr is the host:port of the HTTP listener.
func (s *Server) Addr() string {
	u, err := url.Parse(s.HTTPURL)
	if err != nil {
		return ""
	}
	return u.Host
}

// Do sends a JSON request with the admin token (when admin) and decodes a JSON answer into out (may be
// nil). A status other than want is an error carrying the body.
func (s *Server) Do(ctx context.Context, method, path string, body any, headers map[string]string, want int, out any) error {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			return fmt.Errorf("%s %s: encode body: %w", method, path, err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.HTTPURL+path, rd)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	res, err := s.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != want {
		return fmt.Errorf("%s %s: status %d, want %d: %.300s", method, path, res.StatusCode, want, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("%s %s: decode %.200s: %w", method, path, b, err)
		}
	}
	return nil
}

// Admin calls the operator API with the admin token.
func (s *Server) Admin(ctx context.Context, method, path string, body any, want int, out any) error {
	return s.Do(ctx, method, path, body, map[string]string{"Authorization": "Bearer " + s.AdminToken}, want, out)
}

// Push posts a Docker Hub push webhook for repo:tag and expects it accepted (202).
func (s *Server) Push(ctx context.Context, repo, tag string) error {
	body := map[string]any{
		"callback_url": "https://registry.hub.docker.com/u/" + repo + "/hook/bench/",
		"push_data":    map[string]any{"tag": tag, "pusher": "bench", "pushed_at": time.Now().Unix()},
		"repository":   map[string]any{"repo_name": repo, "name": filepath.Base(repo), "namespace": filepath.Dir(repo)},
	}
	return s.Do(ctx, "POST", "/api/v1/webhooks/docker-registry?token="+url.QueryEscape(s.WebhookToken), body, nil, 202, nil)
}

// Policy creates an image policy and returns its id.
func (s *Server) Policy(ctx context.Context, p map[string]any) error {
	return s.Admin(ctx, "POST", "/api/v1/image-policies", p, 201, nil)
}

// Control sends a rollout verb (start, cancel, ...). A rollout the verb does not apply to (409) is fine.
// It reports routeMissing when the server answers 404 (the control API is not there).
func (s *Server) Control(ctx context.Context, rolloutID, verb string) (routeMissing bool, err error) {
	err = s.Admin(ctx, "POST", "/api/v1/rollouts/"+rolloutID+"/"+verb, nil, 200, nil)
	switch {
	case err == nil:
		return false, nil
	case strings.Contains(err.Error(), "status 409"):
		return false, nil
	case strings.Contains(err.Error(), "status 404"):
		return true, nil
	}
	return false, err
}

// NotifyWatcher counts, per expectation, the distinct devices whose target notification carries a
// marker (the new image), from one subscription to every device's target subject.
type NotifyWatcher struct {
	sub    *nats.Subscription
	mu     sync.Mutex
	marker []byte
	want   int
	seen   map[string]time.Time
	done   chan struct{}
	others int // notifications without the marker while expecting
}

// WatchNotifications subscribes to every device's target subject.
func (s *Server) WatchNotifications() (*NotifyWatcher, error) {
	w := &NotifyWatcher{}
	sub, err := s.NC.Subscribe(s.Subjects.DeviceTargetAll(), func(m *nats.Msg) {
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.marker == nil {
			return
		}
		if !bytes.Contains(m.Data, w.marker) {
			w.others++
			return
		}
		if _, ok := w.seen[m.Subject]; ok {
			return
		}
		w.seen[m.Subject] = time.Now()
		if len(w.seen) == w.want {
			close(w.done)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe to target notifications: %w", err)
	}
	_ = sub.SetPendingLimits(-1, -1)
	if err := s.NC.Flush(); err != nil {
		return nil, fmt.Errorf("subscribe to target notifications: %w", err)
	}
	w.sub = sub
	return w, nil
}

// Expect starts counting devices notified with marker; the returned channel closes when want distinct
// devices were.
func (w *NotifyWatcher) Expect(marker string, want int) <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.marker, w.want, w.seen, w.done, w.others = []byte(marker), want, map[string]time.Time{}, make(chan struct{}), 0
	if want == 0 {
		close(w.done)
	}
	return w.done
}

// Seen returns the subjects notified with the current marker so far and how many notifications lacked it.
func (w *NotifyWatcher) Seen() (map[string]time.Time, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string]time.Time, len(w.seen))
	for k, v := range w.seen {
		out[k] = v
	}
	return out, w.others
}

// Close unsubscribes.
func (w *NotifyWatcher) Close() { _ = w.sub.Unsubscribe() }

// Rollout is a rollout row as measurements read it.
type Rollout struct {
	ID, Status   string
	TotalDevices int
}
