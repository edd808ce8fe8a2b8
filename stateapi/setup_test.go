package stateapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/logging"
	"github.com/fleetshift/fleetshift/shared/natstest"
	"github.com/fleetshift/fleetshift/shared/outbox"
	"github.com/fleetshift/fleetshift/shared/pgtest"
	"github.com/fleetshift/fleetshift/shared/wait"
	"github.com/fleetshift/fleetshift/stateapi"
)

const adminToken = "test-admin-token"

type env struct {
	t    *testing.T
	db   *pgtest.DB
	nats *natstest.Server
	svc  *stateapi.Service
	app  *fiber.App
	ctx  context.Context
}

type options struct {
	pool  *pgxpool.Pool // default: the test database's pool
	db    *pgtest.DB
	nats  *natstest.Server
	relay bool
}

func setup(t *testing.T, o options) *env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if o.db == nil {
		o.db = pgtest.New(t)
	}
	if o.nats == nil {
		o.nats = natstest.New(t)
	}
	pool := o.pool
	if pool == nil {
		pool = o.db.Pool
	}
	svc, err := stateapi.New(stateapi.Config{Pool: pool, JS: o.nats.JS, NC: o.nats.NC, Subjects: o.nats.Subjects,
		Log: logging.Nop(), AdminToken: adminToken, PublicNATSURL: "nats://devices.example:4222"})
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Error("Run did not stop")
		}
	})
	if o.relay {
		r := outbox.NewRelay(o.db.Pool, o.nats.JS, logging.Nop(), &outbox.RelayConfig{PollInterval: 50 * time.Millisecond})
		go func() { _ = r.Run(ctx) }()
	}
	app := fiber.New(fiber.Config{ErrorHandler: apierr.FiberErrorHandler})
	svc.Register(app)
	e := &env{t: t, db: o.db, nats: o.nats, svc: svc, app: app, ctx: ctx}
	// Run is live once its subscriptions exist; readyz needs the database and NATS.
	wait.For(t, 10*time.Second, func() error {
		if res := e.do("GET", "/readyz", nil, nil); res.status != 200 {
			return errors.New("not ready")
		}
		return nil
	})
	return e
}

type response struct {
	status int
	body   []byte
	header http.Header
}

func (r response) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(r.body, &m), string(r.body))
	return m
}

func (r response) errorCode(t *testing.T) string {
	t.Helper()
	m := r.json(t)
	e, ok := m["error"].(map[string]any)
	require.True(t, ok, "no error body: %s", r.body)
	return e["code"].(string)
}

// do sends a request; body is JSON-encoded unless it is a string or []byte; headers are name, value pairs.
func (e *env) do(method, path string, body any, headers map[string]string) response {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = bytes.NewReader([]byte(b))
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		require.NoError(e.t, err)
		rd = bytes.NewReader(j)
	}
	req := httptest.NewRequest(method, path, rd)
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	res, err := e.app.Test(req, -1)
	require.NoError(e.t, err)
	b, err := io.ReadAll(res.Body)
	require.NoError(e.t, err)
	return response{status: res.StatusCode, body: b, header: res.Header}
}

func bearer(token string) map[string]string {
	return map[string]string{"Authorization": "Bearer " + token}
}

func admin() map[string]string { return bearer(adminToken) }

// createDevice registers a device through the operator API and returns its uuid and key.
func (e *env) createDevice(body map[string]any) (string, string) {
	e.t.Helper()
	res := e.do("POST", "/api/v1/devices", body, admin())
	require.Equal(e.t, 201, res.status, string(res.body))
	m := res.json(e.t)
	return m["uuid"].(string), m["api_key"].(string)
}

func appsWith(image string) map[string]any {
	return map[string]any{"app1": map[string]any{"appId": "app1", "appName": "app", "services": []any{
		map[string]any{"serviceId": "1", "serviceName": "web", "imageName": image, "config": map[string]any{"image": image}},
	}}}
}

// countingTracer counts the queries a pool sends.
type countingTracer struct{ n atomic.Int64 }

func (c *countingTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	c.n.Add(1)
	return ctx
}

func (c *countingTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
