package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
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

const adminToken = "admin-secret-token"

type fixture struct {
	t    *testing.T
	db   *pgtest.DB
	ns   *natstest.Server
	app  *fiber.App
	ops  *auth.Operators
	svc  *Service
	stop func()
}

func newFixture(t *testing.T, mod func(*Config)) *fixture {
	t.Helper()
	f := &fixture{t: t, db: pgtest.New(t), ns: natstest.New(t)}
	f.app = fiber.New(fiber.Config{ErrorHandler: apierr.FiberErrorHandler})
	f.ops = auth.NewOperators(f.db.Pool, adminToken, logging.Nop())
	(&API{Pool: f.db.Pool, Operators: f.ops}).Register(f.app)
	cfg := Config{Pool: f.db.Pool, JS: f.ns.JS, Subjects: f.ns.Subjects, Log: logging.Nop(),
		PollInterval: 50 * time.Millisecond, Backoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}
	if mod != nil {
		mod(&cfg)
	}
	svc, err := New(cfg)
	require.NoError(t, err)
	f.svc = svc
	f.stop = f.run()
	t.Cleanup(func() { f.stop() })
	return f
}

// run starts the notifier; the returned function stops it and waits for it.
func (f *fixture) run() func() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.svc.Run(ctx) }()
	var once sync.Once
	return func() { once.Do(func() { cancel(); require.NoError(f.t, <-done) }) }
}

// call sends a request to the API; token "" sends none.
func (f *fixture) call(method, path, token string, body any) (int, []byte) {
	f.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(f.t, err)
		rd = bytes.NewReader(b)
	}
	req := httptest.NewRequest(method, path, rd)
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := f.app.Test(req, 10_000)
	require.NoError(f.t, err)
	defer res.Body.Close()
	out, err := io.ReadAll(res.Body)
	require.NoError(f.t, err)
	return res.StatusCode, out
}

func (f *fixture) subscribe(body map[string]any) Subscription {
	f.t.Helper()
	code, out := f.call("POST", "/api/v1/notifications", adminToken, body)
	require.Equal(f.t, 201, code, string(out))
	var s Subscription
	require.NoError(f.t, json.Unmarshal(out, &s))
	return s
}

func (f *fixture) deliveries(id string) []Delivery {
	f.t.Helper()
	code, out := f.call("GET", "/api/v1/notifications/"+id+"/deliveries", adminToken, nil)
	require.Equal(f.t, 200, code, string(out))
	var doc struct {
		Deliveries []Delivery `json:"deliveries"`
	}
	require.NoError(f.t, json.Unmarshal(out, &doc))
	return doc.Deliveries
}

// publish puts an event on the EVENTS stream as the outbox relay would.
func (f *fixture) publish(ev streams.EventV1) {
	f.t.Helper()
	b, err := json.Marshal(ev)
	require.NoError(f.t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = f.ns.JS.Publish(ctx, f.ns.Subjects.Event(ev.Type, ev.RolloutID), b)
	require.NoError(f.t, err)
}

func event(typ string) streams.EventV1 {
	return streams.EventV1{ID: uuid.NewString(), Type: typ, RolloutID: uuid.NewString(), Message: "failure rate 0.40 above 0.20",
		Timestamp: time.Now().UTC()}
}

// receiver is a local webhook endpoint that answers 503 while down, and records what it accepted.
type receiver struct {
	srv  *httptest.Server
	down atomic.Bool
	hits atomic.Int32
	mu   sync.Mutex
	got  []*http.Request
	body [][]byte
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.hits.Add(1)
		b, _ := io.ReadAll(req.Body)
		if r.down.Load() {
			http.Error(w, "receiver down", http.StatusServiceUnavailable)
			return
		}
		r.mu.Lock()
		r.got = append(r.got, req)
		r.body = append(r.body, b)
		r.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) received() ([]*http.Request, [][]byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*http.Request(nil), r.got...), append([][]byte(nil), r.body...)
}

// TestSubscriptionAPI: create shows the secret once; list and get never do; bad input names the field;
// delete removes; no token, no answer (read tokens: TestReadTokensSeeSubscriptionsWithoutURLs).
func TestSubscriptionAPI(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	s := f.subscribe(map[string]any{"name": "ops", "url": "https://hooks.example.test/x", "format": "slack",
		"event_types": []string{"paused", "image.rollout_failed", "paused"}})
	require.Len(t, s.Secret, 64)
	require.Equal(t, []string{"paused", "failed"}, s.EventTypes)
	require.Equal(t, "slack", s.Format)
	require.NotNil(t, s.CreatedBy)

	all := f.subscribe(map[string]any{"name": "all", "url": "http://127.0.0.1:9/hook"})
	require.Equal(t, Kinds(), all.EventTypes)
	require.Equal(t, "json", all.Format)

	code, out := f.call("GET", "/api/v1/notifications", adminToken, nil)
	require.Equal(t, 200, code)
	require.NotContains(t, string(out), s.Secret)
	require.NotContains(t, string(out), `"secret"`)
	var list struct {
		Notifications []Subscription `json:"notifications"`
	}
	require.NoError(t, json.Unmarshal(out, &list))
	require.Len(t, list.Notifications, 2)

	code, out = f.call("GET", "/api/v1/notifications/"+s.ID, adminToken, nil)
	require.Equal(t, 200, code)
	require.NotContains(t, string(out), s.Secret)

	for field, body := range map[string]map[string]any{
		"url":         {"name": "x", "url": "ftp://example.test/"},
		"name":        {"url": "https://example.test/"},
		"format":      {"name": "x", "url": "https://example.test/", "format": "xml"},
		"event_types": {"name": "x", "url": "https://example.test/", "event_types": []string{"exploded"}},
	} {
		code, out := f.call("POST", "/api/v1/notifications", adminToken, body)
		require.Equal(t, 400, code, string(out))
		require.Contains(t, string(out), `"field":"`+field+`"`)
	}
	code, out = f.call("POST", "/api/v1/notifications", adminToken, map[string]any{"name": "x", "url": "https://e.test/", "colour": "red"})
	require.Equal(t, 400, code)
	require.Contains(t, string(out), "colour")

	code, _ = f.call("GET", "/api/v1/notifications", "", nil)
	require.Equal(t, 401, code)

	code, _ = f.call("DELETE", "/api/v1/notifications/"+s.ID, adminToken, nil)
	require.Equal(t, 204, code)
	code, _ = f.call("GET", "/api/v1/notifications/"+s.ID, adminToken, nil)
	require.Equal(t, 404, code)
	code, _ = f.call("DELETE", "/api/v1/notifications/"+s.ID, adminToken, nil)
	require.Equal(t, 404, code)
	code, out = f.call("GET", "/api/v1/notifications/not-an-id/deliveries", adminToken, nil)
	require.Equal(t, 400, code, string(out))
}

// token makes an operator token of scope.
func (f *fixture) token(name string, scope auth.Scope) string {
	f.t.Helper()
	_, tok, err := f.ops.CreateToken(context.Background(), name, scope)
	require.NoError(f.t, err)
	return tok
}

// TestReadTokensSeeSubscriptionsWithoutURLs: read and operate tokens list subscriptions, their newest
// delivery and their deliveries, with each URL cut to scheme and host (also inside a delivery's last
// error); they may not create or delete (403, nothing changed). Admin sees the URL whole.
func TestReadTokensSeeSubscriptionsWithoutURLs(t *testing.T) {
	t.Parallel()
	f := newFixture(t, func(c *Config) { c.MaxAttempts = 1 })
	read, operate := f.token("viewer", auth.ScopeRead), f.token("operator", auth.ScopeOperate)
	// Nothing listens on port 9: the POST fails with Go's error, which quotes the URL.
	const secretURL = "http://127.0.0.1:9/services/T000/B000/very-secret-path?key=hush"
	sub := f.subscribe(map[string]any{"name": "slack-ops", "url": secretURL, "format": "slack", "event_types": []string{"paused"}})
	f.publish(event(streams.EventRolloutPaused))
	var failed Delivery
	wait.For(t, 20*time.Second, func() error {
		ds := f.deliveries(sub.ID)
		if len(ds) != 1 || ds[0].Status != "failed" || ds[0].LastError == nil {
			return fmt.Errorf("want one failed delivery, got %+v", ds)
		}
		failed = ds[0]
		return nil
	})
	require.Contains(t, *failed.LastError, "very-secret-path", "admin sees the error as it was")

	for _, tok := range []string{read, operate} {
		code, out := f.call("GET", "/api/v1/notifications", tok, nil)
		require.Equal(t, 200, code, string(out))
		require.NotContains(t, string(out), "very-secret-path")
		require.NotContains(t, string(out), "hush")
		var list struct {
			Notifications []Subscription `json:"notifications"`
		}
		require.NoError(t, json.Unmarshal(out, &list))
		require.Len(t, list.Notifications, 1)
		got := list.Notifications[0]
		require.Equal(t, "http://127.0.0.1:9/…", got.URL)
		require.Equal(t, "slack-ops", got.Name)
		require.Equal(t, "slack", got.Format)
		require.Equal(t, []string{"paused"}, got.EventTypes)
		require.Equal(t, 1, got.Failed)
		require.NotNil(t, got.LatestDelivery)
		require.Equal(t, "failed", got.LatestDelivery.Status)
		require.Equal(t, failed.ID, got.LatestDelivery.ID)
		require.Equal(t, 1, got.LatestDelivery.Attempts)

		code, out = f.call("GET", "/api/v1/notifications/"+sub.ID, tok, nil)
		require.Equal(t, 200, code, string(out))
		require.NotContains(t, string(out), "very-secret-path")

		code, out = f.call("GET", "/api/v1/notifications/"+sub.ID+"/deliveries", tok, nil)
		require.Equal(t, 200, code, string(out))
		require.NotContains(t, string(out), "very-secret-path")
		require.NotContains(t, string(out), "hush")
		require.Contains(t, string(out), "http://127.0.0.1:9/…", "the error still says where it failed")

		code, out = f.call("POST", "/api/v1/notifications", tok, map[string]any{"name": "x", "url": "https://e.test/"})
		require.Equal(t, 403, code, string(out))
		code, out = f.call("DELETE", "/api/v1/notifications/"+sub.ID, tok, nil)
		require.Equal(t, 403, code, string(out))
	}
	code, out := f.call("GET", "/api/v1/notifications", adminToken, nil)
	require.Equal(t, 200, code)
	require.Contains(t, string(out), secretURL)
	require.Contains(t, string(out), `"latest_delivery":{`)
}

func TestRedactURL(t *testing.T) {
	t.Parallel()
	for raw, want := range map[string]string{
		"https://hooks.slack.com/services/T/B/X": "https://hooks.slack.com/…",
		"https://example.test":                   "https://example.test",
		"https://example.test/":                  "https://example.test",
		"https://example.test/?token=x":          "https://example.test/…",
		"https://user:pw@example.test:8443/":     "https://example.test:8443/…",
		"not a url":                              "…",
	} {
		require.Equal(t, want, RedactURL(raw), raw)
	}
	msg := `POST: Post "https://u:***@e.test/p": dial tcp: refused`
	require.Equal(t, `POST: Post "https://e.test/…": dial tcp: refused`, redactError(msg, "https://u:pw@e.test/p"))
}

// TestDeliveryRetriesUntilReceiverRecovers: a receiver that fails gets the notification again with
// backoff, the failures visible as attempts and last error; once it recovers the delivery succeeds,
// signed over the raw body, and the same event redelivered adds nothing.
func TestDeliveryRetriesUntilReceiverRecovers(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	rcv := newReceiver(t)
	rcv.down.Store(true)
	sub := f.subscribe(map[string]any{"name": "ci", "url": rcv.srv.URL + "/hook", "event_types": []string{"paused"}})
	other := f.subscribe(map[string]any{"name": "done-only", "url": rcv.srv.URL + "/other", "event_types": []string{"completed"}})

	ev := event(streams.EventRolloutPaused)
	f.publish(ev)
	wait.For(t, 20*time.Second, func() error {
		ds := f.deliveries(sub.ID)
		if len(ds) != 1 || ds[0].Attempts < 2 || ds[0].LastError == nil || !strings.Contains(*ds[0].LastError, "HTTP 503") ||
			ds[0].Status != "pending" || ds[0].LastStatusCode == nil || *ds[0].LastStatusCode != 503 {
			return fmt.Errorf("want a pending delivery retried after 503s, got %+v", ds)
		}
		return nil
	})
	rcv.down.Store(false)
	var final Delivery
	wait.For(t, 20*time.Second, func() error {
		ds := f.deliveries(sub.ID)
		if len(ds) != 1 || ds[0].Status != "delivered" {
			return fmt.Errorf("want delivered, got %+v", ds)
		}
		final = ds[0]
		return nil
	})
	require.GreaterOrEqual(t, final.Attempts, 3)
	require.Equal(t, 204, *final.LastStatusCode)
	require.Nil(t, final.LastError)
	require.Equal(t, ev.ID, final.EventID)

	reqs, bodies := rcv.received()
	require.Len(t, reqs, 1)
	require.True(t, Verify(sub.Secret, bodies[0], reqs[0].Header.Get(HeaderSignature)), "signature %s", reqs[0].Header.Get(HeaderSignature))
	require.False(t, Verify(other.Secret, bodies[0], reqs[0].Header.Get(HeaderSignature)))
	require.Equal(t, streams.EventRolloutPaused, reqs[0].Header.Get(HeaderEvent))
	require.Equal(t, ev.ID, reqs[0].Header.Get(HeaderEventID))
	require.Equal(t, "application/json", reqs[0].Header.Get("Content-Type"))
	var doc map[string]any
	require.NoError(t, json.Unmarshal(bodies[0], &doc))
	require.Equal(t, "paused", doc["kind"])
	require.Equal(t, ev.RolloutID, doc["rollout_id"])
	require.Equal(t, ev.Message, doc["message"])

	// The subscription to "completed" got nothing; the same event again adds nothing.
	require.Empty(t, f.deliveries(other.ID))
	n, err := f.svc.Enqueue(context.Background(), ev)
	require.NoError(t, err)
	require.Zero(t, n)
	f.publish(ev)
	f.publish(event(streams.EventRolloutCompleted))
	wait.For(t, 20*time.Second, func() error {
		if ds := f.deliveries(other.ID); len(ds) != 1 || ds[0].Status != "delivered" {
			return fmt.Errorf("completed subscription: %+v", ds)
		}
		return nil
	})
	require.Len(t, f.deliveries(sub.ID), 1)
}

// TestDeliveryGivesUpAndSlackFormat: a Slack-format subscription gets {"text": ...}; a receiver that
// never recovers leaves the delivery failed after MaxAttempts with its last error.
func TestDeliveryGivesUpAndSlackFormat(t *testing.T) {
	t.Parallel()
	f := newFixture(t, func(c *Config) { c.MaxAttempts = 3 })
	rcv := newReceiver(t)
	slack := f.subscribe(map[string]any{"name": "slack", "url": rcv.srv.URL + "/slack", "format": "slack", "event_types": []string{"rolled_back"}})
	ev := event(streams.EventRolloutRolledBack)
	f.publish(ev)
	wait.For(t, 20*time.Second, func() error {
		if ds := f.deliveries(slack.ID); len(ds) != 1 || ds[0].Status != "delivered" {
			return fmt.Errorf("slack delivery: %+v", ds)
		}
		return nil
	})
	_, bodies := rcv.received()
	var doc map[string]any
	require.NoError(t, json.Unmarshal(bodies[0], &doc))
	require.Len(t, doc, 1)
	text, _ := doc["text"].(string)
	require.Contains(t, text, "rolled back")
	require.Contains(t, text, ev.RolloutID)

	broken := f.subscribe(map[string]any{"name": "broken", "url": rcv.srv.URL + "/broken", "event_types": []string{"failed"}})
	rcv.down.Store(true)
	f.publish(event(streams.EventRolloutFailed))
	wait.For(t, 20*time.Second, func() error {
		ds := f.deliveries(broken.ID)
		if len(ds) != 1 || ds[0].Status != "failed" {
			return fmt.Errorf("want failed, got %+v", ds)
		}
		if ds[0].Attempts != 3 || ds[0].LastError == nil || !strings.Contains(*ds[0].LastError, "503") || ds[0].NextAttemptAt != nil {
			return fmt.Errorf("failed delivery: %+v", ds[0])
		}
		return nil
	})
}

// TestShutdownMidPostCountsNoAttempt: a notifier stopped while a post is in flight releases the delivery
// without counting an attempt, and the next notifier delivers it.
func TestShutdownMidPostCountsNoAttempt(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	arrived := make(chan struct{}, 16)
	release := make(chan struct{})
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer rcv.Close()
	sub := f.subscribe(map[string]any{"name": "slow", "url": rcv.URL, "event_types": []string{"completed"}})
	f.publish(event(streams.EventRolloutCompleted))
	select {
	case <-arrived:
	case <-time.After(20 * time.Second):
		t.Fatal("the notification never arrived")
	}
	// Stop the running notifier mid-post (the fixture's cleanup finds it stopped).
	f.stop()
	ds := f.deliveries(sub.ID)
	require.Len(t, ds, 1)
	require.Equal(t, "pending", ds[0].Status)
	require.Zero(t, ds[0].Attempts, "an interrupted post is not an attempt")
	require.NotNil(t, ds[0].NextAttemptAt)
	require.False(t, ds[0].NextAttemptAt.After(time.Now().Add(time.Second)), "the claim is released: due now, not after the lease")

	close(release)
	f.stop = f.run()
	wait.For(t, 20*time.Second, func() error {
		if ds := f.deliveries(sub.ID); ds[0].Status != "delivered" || ds[0].Attempts != 1 {
			return fmt.Errorf("after restart: %+v", ds[0])
		}
		return nil
	})
}
