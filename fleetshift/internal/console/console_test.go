package console

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/auth"
	"github.com/fleetshift/fleetshift/shared/logging"
	"github.com/fleetshift/fleetshift/shared/natstest"
	"github.com/fleetshift/fleetshift/shared/pgtest"
	"github.com/fleetshift/fleetshift/shared/wait"
	"github.com/fleetshift/fleetshift/streams"
)

// bundle is a console on its own listener over a test database and embedded JetStream.
type bundle struct {
	app         *fiber.App
	url         string
	db          *pgtest.DB
	nats        *natstest.Server
	read, admin string
}

// writeTimeout is the listener's write timeout: streams must outlive it.
const writeTimeout = 300 * time.Millisecond

func setup(t *testing.T) *bundle {
	t.Helper()
	db := pgtest.New(t)
	ns := natstest.New(t)
	ops := auth.NewOperators(db.Pool, "admin-token", logging.Nop())
	c, err := New(Config{Pool: db.Pool, JS: ns.JS, Subjects: ns.Subjects, Operators: ops, Log: logging.Nop(),
		Heartbeat: 50 * time.Millisecond})
	require.NoError(t, err)
	app := fiber.New(fiber.Config{ErrorHandler: apierr.FiberErrorHandler, DisableStartupMessage: true, WriteTimeout: writeTimeout})
	c.Register(app)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go func() { _ = app.Listener(ln) }()
	t.Cleanup(func() { _ = app.ShutdownWithTimeout(5 * time.Second) })
	_, read, err := ops.CreateToken(context.Background(), "viewer", auth.ScopeRead)
	require.NoError(t, err)
	return &bundle{app: app, url: "http://" + ln.Addr().String(), db: db, nats: ns, read: read, admin: "admin-token"}
}

func (b *bundle) get(t *testing.T, path, token string, headers ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest("GET", b.url+path, nil)
	require.NoError(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return res, body
}

// publish puts an event on the EVENTS stream as the outbox relay does.
func (b *bundle) publish(t *testing.T, typ, rollout string) streams.EventV1 {
	t.Helper()
	ev := streams.EventV1{ID: uuid.NewString(), Type: typ, RolloutID: rollout, Message: "test " + typ, Timestamp: time.Now().UTC()}
	raw, err := json.Marshal(ev)
	require.NoError(t, err)
	_, err = b.nats.JS.Publish(context.Background(), b.nats.Subjects.Event(typ, rollout), raw)
	require.NoError(t, err)
	return ev
}

// sse is an open event stream.
type sse struct {
	res    *http.Response
	lines  chan string
	cancel context.CancelFunc
}

func (b *bundle) open(t *testing.T, query string, headers ...string) *sse {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, "GET", b.url+"/api/v1/events/stream"+query, nil)
	require.NoError(t, err)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	require.Equal(t, 200, res.StatusCode)
	require.Equal(t, "text/event-stream", res.Header.Get("Content-Type"))
	s := &sse{res: res, lines: make(chan string, 1024), cancel: cancel}
	go func() {
		defer close(s.lines)
		sc := bufio.NewScanner(res.Body)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
	}()
	t.Cleanup(s.close)
	return s
}

func (s *sse) close() { s.cancel(); _ = s.res.Body.Close() }

// next returns the next SSE message (id and data), skipping comments; it fails after 10 s.
func (s *sse) next(t *testing.T) (id string, ev streams.EventV1) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case line, ok := <-s.lines:
			require.True(t, ok, "stream closed before the next event")
			switch {
			case strings.HasPrefix(line, "id: "):
				id = strings.TrimPrefix(line, "id: ")
			case strings.HasPrefix(line, "data: "):
				require.NotEmpty(t, id, "data without an id")
				require.NoError(t, json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &ev))
				return id, ev
			}
		case <-deadline:
			t.Fatal("no event within 10 s")
		}
	}
}

// waitComment waits for a comment line starting with prefix.
func (s *sse) waitComment(t *testing.T, prefix string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case line, ok := <-s.lines:
			require.True(t, ok, "stream closed while waiting for %q", prefix)
			if strings.HasPrefix(line, ": "+prefix) {
				return
			}
		case <-deadline:
			t.Fatalf("no %q comment within 10 s", prefix)
		}
	}
}

// TestStreamSendsTheRolloutsEventsLive: a stream opened with ?token= gets the events of its rollout,
// published after it opened, with the stream sequence as id, and not those of another rollout.
func TestStreamSendsTheRolloutsEventsLive(t *testing.T) {
	t.Parallel()
	b := setup(t)
	mine, other := uuid.NewString(), uuid.NewString()
	b.publish(t, streams.EventRolloutCreated, mine) // before the stream: not sent
	s := b.open(t, "?rollout="+mine+"&token="+b.read)
	s.waitComment(t, "connected")
	b.publish(t, streams.EventRolloutPaused, other)
	want := b.publish(t, streams.EventRolloutResumed, mine)
	id, got := s.next(t)
	require.Equal(t, want.ID, got.ID)
	require.Equal(t, streams.EventRolloutResumed, got.Type)
	require.Equal(t, "3", id, "the id is the EVENTS stream sequence")

	all := b.open(t, "", "Authorization", "Bearer "+b.read) // every rollout, token in the header
	all.waitComment(t, "connected")
	a := b.publish(t, streams.EventRolloutPaused, other)
	c := b.publish(t, streams.EventRolloutPaused, mine)
	_, first := all.next(t)
	_, second := all.next(t)
	require.Equal(t, []string{a.ID, c.ID}, []string{first.ID, second.ID})
}

// TestStreamResumesAfterLastEventID: a browser reconnecting with Last-Event-ID gets what it missed.
func TestStreamResumesAfterLastEventID(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := uuid.NewString()
	s := b.open(t, "?rollout="+r+"&token="+b.read)
	s.waitComment(t, "connected")
	b.publish(t, streams.EventRolloutStarted, r)
	id, _ := s.next(t)
	s.close()
	missed := b.publish(t, streams.EventBatchCompleted, r)
	again := b.open(t, "?rollout="+r+"&token="+b.read, "Last-Event-ID", id)
	_, got := again.next(t)
	require.Equal(t, missed.ID, got.ID)
}

// TestStreamRefusesBadRequests: no or an unknown token is a 401, a rollout that is no uuid a 400
// naming the field; each with the error document.
func TestStreamRefusesBadRequests(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, tc := range []struct {
		query  string
		status int
		code   string
	}{
		{"", 401, "unauthorized"},
		{"?token=nope", 401, "unauthorized"},
		{"?token=" + b.read + "&rollout=*", 400, "invalid_rollout"},
		{"?token=" + b.read + "&rollout=x.>", 400, "invalid_rollout"},
	} {
		res, body := b.get(t, "/api/v1/events/stream"+tc.query, "")
		require.Equal(t, tc.status, res.StatusCode, "%s: %s", tc.query, body)
		var doc apierr.Body
		require.NoError(t, json.Unmarshal(body, &doc), "%s", body)
		require.Equal(t, tc.code, doc.Error.Code, "%s", body)
	}
}

// TestStreamHeartbeatsAndStopsWithItsClient: an idle stream sends heartbeats for longer than the
// server's write timeout, and its consumer is removed once the client goes away.
func TestStreamHeartbeatsAndStopsWithItsClient(t *testing.T) {
	t.Parallel()
	b := setup(t)
	s := b.open(t, "?token="+b.read)
	s.waitComment(t, "connected")
	start := time.Now()
	for time.Since(start) < 3*writeTimeout {
		s.waitComment(t, "heartbeat")
	}
	ev := b.publish(t, streams.EventRolloutPaused, uuid.NewString())
	_, got := s.next(t)
	require.Equal(t, ev.ID, got.ID)

	consumers := func() int {
		info, err := b.nats.JS.Stream(context.Background(), b.nats.Subjects.EventsStream())
		require.NoError(t, err)
		i, err := info.Info(context.Background())
		require.NoError(t, err)
		return i.State.Consumers
	}
	require.Equal(t, 1, consumers())
	s.close()
	wait.For(t, 30*time.Second, func() error {
		if n := consumers(); n != 0 {
			return fmt.Errorf("%d consumers on EVENTS after the client left", n)
		}
		return nil
	})
}

// TestStreamEndsAtShutdown: an open stream does not hold the server's shutdown: it ends, and the
// client sees the end of the answer.
func TestStreamEndsAtShutdown(t *testing.T) {
	t.Parallel()
	b := setup(t)
	s := b.open(t, "?token="+b.read)
	s.waitComment(t, "connected")
	require.NoError(t, b.app.ShutdownWithTimeout(10*time.Second))
	deadline := time.After(10 * time.Second)
	for {
		select {
		case _, ok := <-s.lines:
			if !ok {
				return
			}
		case <-deadline:
			t.Fatal("the stream is still open after shutdown")
		}
	}
}

// TestWhoamiAndImages: whoami names the token's scope; images counts target images per fleet, filtered
// by fleet and tags, leaving out revoked devices.
func TestWhoamiAndImages(t *testing.T) {
	t.Parallel()
	b := setup(t)
	res, body := b.get(t, "/api/v1/whoami", b.read)
	require.Equal(t, 200, res.StatusCode)
	require.JSONEq(t, `{"scope":"read","name":"viewer"}`, string(body))
	res, body = b.get(t, "/api/v1/whoami", b.admin)
	require.Equal(t, 200, res.StatusCode)
	require.JSONEq(t, `{"scope":"admin","name":"admin"}`, string(body))
	res, _ = b.get(t, "/api/v1/whoami", "")
	require.Equal(t, 401, res.StatusCode)

	ctx := context.Background()
	_, err := b.db.Pool.Exec(ctx, `INSERT INTO devices (uuid, device_name, fleet_id, tags, api_key_hash, is_online, revoked_at) VALUES
		('a1', 'a1', 'north', '{lab}', '\x01', true, NULL), ('a2', 'a2', 'north', '{}', '\x02', false, NULL),
		('b1', 'b1', 'south', '{lab}', '\x03', true, NULL), ('gone', 'gone', 'south', '{lab}', '\x04', false, now())`)
	require.NoError(t, err)
	_, err = b.db.Pool.Exec(ctx, `INSERT INTO device_images (device_uuid, app_id, service_index, repository, tag, image) VALUES
		('a1', '1', 0, 'docker.io/acme/app', '1.0', 'acme/app:1.0'), ('a2', '1', 0, 'docker.io/acme/app', '1.0', 'acme/app:1.0'),
		('b1', '1', 0, 'docker.io/acme/app', '1.1', 'acme/app:1.1'), ('gone', '1', 0, 'docker.io/acme/app', '1.1', 'acme/app:1.1')`)
	require.NoError(t, err)
	for _, tc := range []struct{ query, want string }{
		{"", `[{"repository":"docker.io/acme/app","tag":"1.0","fleet_id":"north","devices":2,"online":1},
			{"repository":"docker.io/acme/app","tag":"1.1","fleet_id":"south","devices":1,"online":1}]`},
		{"?fleet_id=north", `[{"repository":"docker.io/acme/app","tag":"1.0","fleet_id":"north","devices":2,"online":1}]`},
		{"?tag=lab", `[{"repository":"docker.io/acme/app","tag":"1.0","fleet_id":"north","devices":1,"online":1},
			{"repository":"docker.io/acme/app","tag":"1.1","fleet_id":"south","devices":1,"online":1}]`},
		{"?fleet_id=east", `[]`},
	} {
		res, body := b.get(t, "/api/v1/images"+tc.query, b.read)
		require.Equal(t, 200, res.StatusCode, "%s", body)
		var doc struct {
			Images json.RawMessage `json:"images"`
		}
		require.NoError(t, json.Unmarshal(body, &doc))
		require.JSONEq(t, tc.want, string(doc.Images), "query %q", tc.query)
	}
}

// TestServesTheConsole: /ui redirects to /ui/, which is the page; its script and style are served with
// their types; anything else under /ui is a 404.
func TestServesTheConsole(t *testing.T) {
	t.Parallel()
	b := setup(t)
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	res, err := client.Get(b.url + "/ui")
	require.NoError(t, err)
	res.Body.Close()
	require.Equal(t, 301, res.StatusCode)
	require.Equal(t, "/ui/", res.Header.Get("Location"))
	for path, ctype := range map[string]string{"/ui/": "text/html", "/ui/app.js": "text/javascript", "/ui/app.css": "text/css"} {
		res, body := b.get(t, path, "")
		require.Equal(t, 200, res.StatusCode, path)
		require.Contains(t, res.Header.Get("Content-Type"), ctype, path)
		require.NotEmpty(t, res.Header.Get("Content-Security-Policy"), path)
		require.NotEmpty(t, body, path)
	}
	res, _ = b.get(t, "/ui/../../etc/passwd", "")
	require.Equal(t, 404, res.StatusCode)
	res, _ = b.get(t, "/ui/nothing.js", "")
	require.Equal(t, 404, res.StatusCode)
}
