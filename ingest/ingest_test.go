package ingest

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/fleetshift/fleetshift/ingest/registry"
	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/logging"
	"github.com/fleetshift/fleetshift/shared/natstest"
	"github.com/fleetshift/fleetshift/streams"
)

const (
	testToken  = "webhook-token-for-tests"
	testSecret = "webhook-secret-for-tests"
	digest11   = "sha256:954b378c375d852eb3c63ab88978f640b4348b01c1b3456a024a81536dafbbf4"
)

// ghcrPush is a real-shaped GHCR `package` delivery of acme/app:1.1 with an uppercase owner.
const ghcrPush = `{"action":"published","package":{"name":"app","namespace":"ACME","package_type":"CONTAINER",
"owner":{"login":"ACME"},"package_version":{"package_url":"ghcr.io/ACME/app:1.1","updated_at":"2024-05-01T10:00:00Z",
"container_metadata":{"tag":{"name":"1.1","digest":"` + digest11 + `"}}}},"sender":{"login":"ci"}}`

type bundle struct {
	app *fiber.App
	svc *Service
	ns  *natstest.Server
}

func setup(t *testing.T, mutate func(*Config)) *bundle {
	t.Helper()
	ns := natstest.New(t)
	cfg := Config{
		JS: ns.JS, Subjects: ns.Subjects, Log: logging.Nop(),
		WebhookToken: testToken, WebhookSecret: testSecret, MaxBody: 64 << 10,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	svc, err := New(cfg)
	require.NoError(t, err)
	app := fiber.New(fiber.Config{ErrorHandler: apierr.FiberErrorHandler})
	svc.Register(app)
	return &bundle{app: app, svc: svc, ns: ns}
}

type reply struct {
	status int
	body   map[string]any
}

func (b *bundle) do(t *testing.T, req *http.Request) reply {
	t.Helper()
	resp, err := b.app.Test(req, -1)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	r := reply{status: resp.StatusCode}
	if len(raw) > 0 {
		require.NoError(t, json.Unmarshal(raw, &r.body), "response is not JSON: %s", raw)
	}
	return r
}

func post(body string, kv ...string) *http.Request {
	req := httptest.NewRequest(http.MethodPost, WebhookPath, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(kv); i += 2 {
		req.Header.Set(kv[i], kv[i+1])
	}
	return req
}

func signedGHCR(body, delivery string) *http.Request {
	return post(body, "X-GitHub-Event", "package", "X-GitHub-Delivery", delivery,
		SignatureHeader, Sign(testSecret, []byte(body)))
}

func (b *bundle) streamMsgs(t *testing.T) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := b.ns.JS.Stream(ctx, b.ns.Subjects.PushesStream())
	require.NoError(t, err)
	info, err := st.Info(ctx)
	require.NoError(t, err)
	return info.State.Msgs
}

func (b *bundle) storedPushes(t *testing.T) []streams.PushV1 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := b.ns.JS.Stream(ctx, b.ns.Subjects.PushesStream())
	require.NoError(t, err)
	n := b.streamMsgs(t)
	var out []streams.PushV1
	for seq := uint64(1); seq <= n; seq++ {
		m, err := st.GetMsg(ctx, seq)
		require.NoError(t, err)
		require.Equal(t, KindPushV1, m.Header.Get(streams.HeaderKind))
		var p streams.PushV1
		require.NoError(t, json.Unmarshal(m.Data, &p))
		require.Equal(t, p.EventID, m.Header.Get(streams.HeaderMsgID))
		out = append(out, p)
	}
	return out
}

func TestTestEndpoint(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	r := b.do(t, httptest.NewRequest(http.MethodGet, WebhookTestPath, nil))
	require.Equal(t, http.StatusOK, r.status)
	require.Equal(t, "ok", r.body["status"])
}

// A signed delivery is stored once: 202 with its event id, then 200 with the same id on redelivery,
// and the PUSHES stream holds exactly one message describing the push.
func TestRedeliveryIsStoredOnce(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	first := b.do(t, signedGHCR(ghcrPush, "delivery-1"))
	require.Equal(t, http.StatusAccepted, first.status, "%v", first.body)
	id, _ := first.body["event_id"].(string)
	require.NotEmpty(t, id)
	require.Equal(t, EventID("github:delivery-1"), id)

	again := b.do(t, signedGHCR(ghcrPush, "delivery-1"))
	require.Equal(t, http.StatusOK, again.status, "%v", again.body)
	require.Equal(t, id, again.body["event_id"])

	pushes := b.storedPushes(t)
	require.Len(t, pushes, 1)
	p := pushes[0]
	require.Equal(t, id, p.EventID)
	require.Equal(t, "github:delivery-1", p.DedupeKey)
	require.Equal(t, registry.GitHub, p.Registry)
	require.Equal(t, "ghcr.io/acme/app", p.Repository)
	require.Equal(t, "ghcr.io/acme/app", p.ImageName)
	require.Equal(t, "1.1", p.Tag)
	require.Equal(t, digest11, p.Digest)
	require.Equal(t, "ci", p.Pusher)
	require.False(t, p.ReceivedAt.IsZero())
	require.True(t, p.PushedAt.Equal(time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)))

	require.Equal(t, 1.0, testutil.ToFloat64(b.svc.webhooks.WithLabelValues(registry.GitHub, OutcomeAccepted)))
	require.Equal(t, 1.0, testutil.ToFloat64(b.svc.webhooks.WithLabelValues(registry.GitHub, OutcomeDuplicate)))
}

// Without a delivery id the dedupe key is the content: Docker Hub redelivering the sample is one push.
func TestContentDedupeWithoutDeliveryID(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	body, err := os.ReadFile("registry/testdata/webhooks/dockerhub.json")
	require.NoError(t, err)
	first := b.do(t, post(string(body)+"", "Authorization", "Bearer "+testToken))
	require.Equal(t, http.StatusAccepted, first.status, "%v", first.body)
	again := b.do(t, post(string(body), "Authorization", "Bearer "+testToken))
	require.Equal(t, http.StatusOK, again.status)
	require.Equal(t, first.body["event_id"], again.body["event_id"])
	require.EqualValues(t, 1, b.streamMsgs(t))
}

func TestTokenAuthentication(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	quay := `{"docker_url":"quay.io/acme/app","updated_tags":["1.0"]}`
	bearer := b.do(t, post(quay, "Authorization", "Bearer "+testToken))
	require.Equal(t, http.StatusAccepted, bearer.status, "%v", bearer.body)

	req := httptest.NewRequest(http.MethodPost, WebhookPath+"?token="+testToken, strings.NewReader(`{"docker_url":"quay.io/acme/app","updated_tags":["2.0"]}`))
	query := b.do(t, req)
	require.Equal(t, http.StatusAccepted, query.status, "%v", query.body)
	require.EqualValues(t, 2, b.streamMsgs(t))
}

// Every rejected request gets its 4xx JSON error and leaves the stream empty.
func TestRejectedRequestsPublishNothing(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	big := `{"docker_url":"quay.io/acme/app","updated_tags":["1.0"],"pad":"` + strings.Repeat("x", 70<<10) + `"}`
	cases := []struct {
		name   string
		req    *http.Request
		status int
		code   string
	}{
		{"no credentials", post(ghcrPush, "X-GitHub-Event", "package"), 401, "unauthorized"},
		{"wrong token", post(ghcrPush, "Authorization", "Bearer nope"), 401, "unauthorized"},
		{"wrong query token", httptest.NewRequest(http.MethodPost, WebhookPath+"?token=nope", strings.NewReader(ghcrPush)), 401, "unauthorized"},
		{"bad signature", post(ghcrPush, "X-GitHub-Event", "package", SignatureHeader, Sign("other secret", []byte(ghcrPush))), 401, "invalid_signature"},
		{"signature over another body", post(ghcrPush, SignatureHeader, Sign(testSecret, []byte(ghcrPush+" "))), 401, "invalid_signature"},
		{"signature not hex", post(ghcrPush, SignatureHeader, "sha256="+strings.Repeat("zz", 32)), 401, "invalid_signature"},
		{"signature too short", post(ghcrPush, SignatureHeader, "sha256=abcd"), 401, "invalid_signature"},
		{"signature too long", post(ghcrPush, SignatureHeader, Sign(testSecret, []byte(ghcrPush))+"00"), 401, "invalid_signature"},
		{"signature without scheme", post(ghcrPush, SignatureHeader, strings.TrimPrefix(Sign(testSecret, []byte(ghcrPush)), "sha256=")), 401, "invalid_signature"},
		{"bad signature with a valid token", post(ghcrPush, SignatureHeader, "sha256=00", "Authorization", "Bearer "+testToken), 401, "invalid_signature"},
		{"garbage", post("this is not json", "Authorization", "Bearer "+testToken), 400, "unreadable_payload"},
		{"unknown format", post(`{"hello":"world"}`, "Authorization", "Bearer "+testToken), 400, "unreadable_payload"},
		{"too large", post(big, "Authorization", "Bearer "+testToken), 413, "payload_too_large"},
		{"compressed", post(ghcrPush, "Authorization", "Bearer "+testToken, "Content-Encoding", "gzip"), 400, "unsupported_content_encoding"},
	}
	for _, c := range cases {
		r := b.do(t, c.req)
		require.Equal(t, c.status, r.status, "%s: %v", c.name, r.body)
		errBody, ok := r.body["error"].(map[string]any)
		require.True(t, ok, "%s: no error object in %v", c.name, r.body)
		require.Equal(t, c.code, errBody["code"], c.name)
		require.NotEmpty(t, errBody["message"], c.name)
	}
	require.EqualValues(t, 0, b.streamMsgs(t))
	require.Equal(t, 10.0, testutil.ToFloat64(b.svc.webhooks.WithLabelValues(registry.Unknown, OutcomeUnauthorized)))
}

// The body limit of the Fiber app itself (smaller than the service's) still answers a JSON 413.
func TestFiberBodyLimitIsJSON(t *testing.T) {
	t.Parallel()
	ns := natstest.New(t)
	svc, err := New(Config{JS: ns.JS, Subjects: ns.Subjects, Log: logging.Nop(), WebhookToken: testToken})
	require.NoError(t, err)
	app := fiber.New(fiber.Config{ErrorHandler: apierr.FiberErrorHandler, BodyLimit: 1024, DisableStartupMessage: true})
	svc.Register(app)
	ln := newListener(t, app)
	resp, err := http.Post("http://"+ln+WebhookPath+"?token="+testToken, "application/json", strings.NewReader(strings.Repeat("x", 4096)))
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)
	var body apierr.Body
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
	require.Equal(t, "too_large", body.Error.Code)
}

func TestIgnoredDeliveries(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	for _, c := range []struct{ file, reason string }{
		{"distribution.json", "untagged (multi-arch child), layer blob"},
		{"harbor.json", registry.ReasonUntagged},
		{"gar-pubsub-delete.json", registry.ReasonDelete},
	} {
		body, err := os.ReadFile("registry/testdata/webhooks/" + c.file)
		require.NoError(t, err)
		r := b.do(t, post(string(body), "Authorization", "Bearer "+testToken))
		require.Equal(t, http.StatusAccepted, r.status, c.file)
		require.Equal(t, c.reason, r.body["ignored"], c.file)
		require.Nil(t, r.body["event_id"], c.file)
	}
	pull := `{"events":[{"id":"p1","action":"pull","target":{"repository":"app","tag":"1"},"request":{"host":"r.example"}}]}`
	r := b.do(t, post(pull, "Authorization", "Bearer "+testToken))
	require.Equal(t, http.StatusAccepted, r.status)
	require.Equal(t, registry.ReasonPull, r.body["ignored"])
	require.EqualValues(t, 0, b.streamMsgs(t))
}

// A delivery holding several pushes answers every event id; redelivering it answers 200.
func TestSeveralPushesInOneDelivery(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	quay := `{"docker_url":"quay.io/acme/app","updated_tags":["1.2","latest"]}`
	r := b.do(t, post(quay, "Authorization", "Bearer "+testToken))
	require.Equal(t, http.StatusAccepted, r.status, "%v", r.body)
	ids, ok := r.body["event_ids"].([]any)
	require.True(t, ok, "%v", r.body)
	require.Len(t, ids, 2)
	require.Equal(t, ids[0], r.body["event_id"])
	require.NotEqual(t, ids[0], ids[1])
	again := b.do(t, post(quay, "Authorization", "Bearer "+testToken))
	require.Equal(t, http.StatusOK, again.status)
	require.Equal(t, ids, again.body["event_ids"])
	pushes := b.storedPushes(t)
	require.Len(t, pushes, 2)
	require.Equal(t, "1.2", pushes[0].Tag)
	require.Equal(t, "latest", pushes[1].Tag)
}

func TestUnauthenticatedConfiguration(t *testing.T) {
	t.Parallel()
	quay := `{"docker_url":"quay.io/acme/app","updated_tags":["1.0"]}`
	closed := setup(t, func(c *Config) { c.WebhookToken, c.WebhookSecret = "", "" })
	r := closed.do(t, post(quay, "Authorization", "Bearer anything"))
	require.Equal(t, http.StatusUnauthorized, r.status)
	require.EqualValues(t, 0, closed.streamMsgs(t))

	open := setup(t, func(c *Config) { c.WebhookToken, c.WebhookSecret, c.AllowUnauthenticated = "", "", true })
	r = open.do(t, post(quay))
	require.Equal(t, http.StatusAccepted, r.status, "%v", r.body)
	require.EqualValues(t, 1, open.streamMsgs(t))
}

// With only a token configured, a signature from a registry that signs anyway does not get in the way.
func TestSignatureIgnoredWithoutSecret(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *Config) { c.WebhookSecret = "" })
	req := httptest.NewRequest(http.MethodPost, WebhookPath+"?token="+testToken, strings.NewReader(ghcrPush))
	req.Header.Set("X-GitHub-Event", "package")
	req.Header.Set(SignatureHeader, Sign("github-side secret", []byte(ghcrPush)))
	r := b.do(t, req)
	require.Equal(t, http.StatusAccepted, r.status, "%v", r.body)
}

// When JetStream does not acknowledge, the registry gets a 503 (and will retry), never a 202.
func TestUnavailableWithoutAck(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *Config) { c.PublishTimeout = 2 * time.Second })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, b.ns.JS.DeleteStream(ctx, b.ns.Subjects.PushesStream()))
	r := b.do(t, signedGHCR(ghcrPush, "delivery-503"))
	require.Equal(t, http.StatusServiceUnavailable, r.status, "%v", r.body)
	require.Equal(t, "jetstream_unavailable", r.body["error"].(map[string]any)["code"])
	require.Equal(t, 1.0, testutil.ToFloat64(b.svc.webhooks.WithLabelValues(registry.GitHub, OutcomeUnavailable)))
}

// A stream without a leader answers no responders until an election ends (a NATS node rejoining a cluster
// starts one): the webhook waits that out within its publish timeout instead of answering 503 at once.
func TestPushWaitsOutAStreamWithoutLeader(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *Config) { c.PublishTimeout = 10 * time.Second })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, b.ns.JS.DeleteStream(ctx, b.ns.Subjects.PushesStream()))
	back := make(chan error, 1)
	go func() {
		time.Sleep(1500 * time.Millisecond)
		back <- b.ns.Subjects.Ensure(ctx, b.ns.JS, streams.Options{})
	}()
	r := b.do(t, signedGHCR(ghcrPush, "delivery-election"))
	require.NoError(t, <-back)
	require.Equal(t, http.StatusAccepted, r.status, "%v", r.body)
	require.Len(t, b.storedPushes(t), 1)
}

func TestGitHubSignatureVector(t *testing.T) {
	t.Parallel()
	const want = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
	secret, body := "It's a Secret to Everybody", []byte("Hello, World!")
	require.Equal(t, want, Sign(secret, body))
	require.True(t, VerifySignature(secret, body, want))
	require.False(t, VerifySignature(secret, []byte("Hello, World?"), want))
	require.False(t, VerifySignature("another secret", body, want))
	require.False(t, VerifySignature(secret, body, strings.TrimPrefix(want, "sha256=")))
	require.False(t, VerifySignature(secret, body, want[:len(want)-2]))
	require.False(t, VerifySignature(secret, body, ""))
}

func TestEventIDIsStable(t *testing.T) {
	t.Parallel()
	require.Equal(t, EventID("github:abc"), EventID("github:abc"))
	require.NotEqual(t, EventID("github:abc"), EventID("github:abd"))
	require.Len(t, EventID("x"), 36)
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	_, err := New(Config{})
	require.Error(t, err)
	ns := natstest.New(t)
	_, err = New(Config{JS: ns.JS, MaxBody: -1})
	require.Error(t, err)
	svc, err := New(Config{JS: ns.JS, WebhookToken: "t"})
	require.NoError(t, err)
	require.Equal(t, DefaultMaxBody, svc.cfg.MaxBody)
	require.Equal(t, streams.DefaultPrefix, svc.cfg.Subjects.Prefix)
	require.Len(t, svc.Collectors(), 1)
}

// newListener serves app on a free local port until the test ends and returns its address.
func newListener(t *testing.T, app *fiber.App) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = app.Listener(ln)
	}()
	t.Cleanup(func() {
		_ = app.Shutdown()
		<-done
	})
	return ln.Addr().String()
}

// A pusher holding NUL (or invalid UTF-8) is cleaned, never queued as a push PostgreSQL cannot store;
// NUL in a field the rollout depends on refuses the delivery, naming the field.
func TestWebhookTextIsStorable(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	body := `{"push_data":{"tag":"1.1","pushed_at":1700000000,"pusher":"ci\u0000bot"},
		"repository":{"repo_name":"acme/app","name":"app","namespace":"acme"}}`
	r := b.do(t, post(body, "Authorization", "Bearer "+testToken))
	require.Equal(t, http.StatusAccepted, r.status, "%v", r.body)
	pushes := b.storedPushes(t)
	require.Len(t, pushes, 1)
	require.Equal(t, "cibot", pushes[0].Pusher)

	for _, body := range []string{
		`{"push_data":{"tag":"1.2\u0000","pushed_at":1700000000},"repository":{"repo_name":"acme/app","name":"app","namespace":"acme"}}`,
		`{"push_data":{"tag":"1.2","pushed_at":1700000000},"repository":{"repo_name":"acme/a\u0000pp","name":"app","namespace":"acme"}}`,
	} {
		r := b.do(t, post(body, "Authorization", "Bearer "+testToken))
		require.Equal(t, http.StatusBadRequest, r.status, "%s: %v", body, r.body)
		e := r.body["error"].(map[string]any)
		require.NotEqual(t, "internal", e["code"])
		require.NotEmpty(t, e["message"])
	}
	require.EqualValues(t, 1, b.streamMsgs(t), "refused deliveries queue nothing")
}

// One delivery cannot queue an unbounded number of pushes: a Quay delivery with 90,000 updated tags is
// refused whole with 413 too_many_pushes, and nothing is queued.
func TestWebhookPushesPerDeliveryBounded(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *Config) { c.MaxBody = 4 << 20 })
	tags := make([]string, 90000)
	for i := range tags {
		tags[i] = "v" + strconv.Itoa(i)
	}
	doc, err := json.Marshal(map[string]any{"name": "test", "repository": "acme/test", "namespace": "acme",
		"docker_url": "quay.io/acme/test", "updated_tags": tags})
	require.NoError(t, err)
	r := b.do(t, post(string(doc), "Authorization", "Bearer "+testToken))
	require.Equal(t, http.StatusRequestEntityTooLarge, r.status, "%v", r.body)
	e := r.body["error"].(map[string]any)
	require.Equal(t, "too_many_pushes", e["code"])
	require.Contains(t, e["message"], "90000")
	require.Contains(t, e["message"], strconv.Itoa(DefaultMaxPushes))
	require.Zero(t, b.streamMsgs(t))

	// At the limit it is accepted.
	doc, err = json.Marshal(map[string]any{"name": "test", "repository": "acme/test", "namespace": "acme",
		"docker_url": "quay.io/acme/test", "updated_tags": tags[:DefaultMaxPushes]})
	require.NoError(t, err)
	r = b.do(t, post(string(doc), "Authorization", "Bearer "+testToken))
	require.Equal(t, http.StatusAccepted, r.status, "%v", r.body)
	require.EqualValues(t, DefaultMaxPushes, b.streamMsgs(t))
}

// A payload of the wrong shape is refused naming the field and the JSON shape, never a Go type.
func TestWebhookShapeErrorNamesField(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	r := b.do(t, post(`{"push_data":{"tag":5,"pushed_at":1700000000},"repository":{"repo_name":"acme/app","name":"app","namespace":"acme"}}`,
		"Authorization", "Bearer "+testToken))
	require.Equal(t, http.StatusBadRequest, r.status, "%v", r.body)
	msg := r.body["error"].(map[string]any)["message"].(string)
	require.Contains(t, msg, "push_data.tag")
	require.Contains(t, msg, "expected string")
	require.NotContains(t, msg, "Go ")
	require.Zero(t, b.streamMsgs(t))
}
