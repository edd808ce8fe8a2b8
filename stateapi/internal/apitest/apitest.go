// Package apitest starts the whole state API (device and operator API wired together) on a fresh
// database and embedded JetStream for the tests of both packages.
package apitest

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

	"github.com/fleetshift/fleetshift/healthwatch"
	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/logging"
	"github.com/fleetshift/fleetshift/shared/natstest"
	"github.com/fleetshift/fleetshift/shared/outbox"
	"github.com/fleetshift/fleetshift/shared/pgtest"
	"github.com/fleetshift/fleetshift/shared/wait"
	"github.com/fleetshift/fleetshift/stateapi"
	"github.com/fleetshift/fleetshift/stateapi/deviceapi"
)

const AdminToken = "test-admin-token"

type Env struct {
	t    *testing.T
	DB   *pgtest.DB
	NATS *natstest.Server
	Svc  *stateapi.Service
	App  *fiber.App
	Ctx  context.Context
}

type Options struct {
	Pool  *pgxpool.Pool // default: the test database's pool
	DB    *pgtest.DB
	NATS  *natstest.Server
	Relay bool
	// Healthwatch runs healthwatch, the one writer of device_current_state (reports reach it through
	// the REPORTS stream).
	Healthwatch bool
	// SkipReady does not wait for /readyz (a test of an unreachable database).
	SkipReady bool
	// RequestTimeout bounds each request's database work (default: the service's).
	RequestTimeout time.Duration
	// Device tunes the device API (limits).
	Device deviceapi.Config
}

func Setup(t *testing.T, o Options) *Env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if o.DB == nil {
		o.DB = pgtest.New(t)
	}
	if o.NATS == nil {
		o.NATS = natstest.New(t)
	}
	pool := o.Pool
	if pool == nil {
		pool = o.DB.Pool
	}
	svc, err := stateapi.New(stateapi.Config{Pool: pool, JS: o.NATS.JS, NC: o.NATS.NC, Subjects: o.NATS.Subjects,
		Log: logging.Nop(), AdminToken: AdminToken, PublicNATSURL: "nats://devices.example:4222", Device: o.Device,
		RequestTimeout: o.RequestTimeout})
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
	if o.Relay {
		r := outbox.NewRelay(o.DB.Pool, o.NATS.JS, logging.Nop(), &outbox.RelayConfig{PollInterval: 50 * time.Millisecond})
		go func() { _ = r.Run(ctx) }()
	}
	if o.Healthwatch {
		hw, err := healthwatch.New(healthwatch.Config{Pool: o.DB.Pool, JS: o.NATS.JS, NC: o.NATS.NC, Subjects: o.NATS.Subjects,
			Log: logging.Nop(), FetchWait: 20 * time.Millisecond})
		require.NoError(t, err)
		go func() { _ = hw.Run(ctx) }()
	}
	app := fiber.New(fiber.Config{ErrorHandler: apierr.FiberErrorHandler})
	svc.Register(app)
	e := &Env{t: t, DB: o.DB, NATS: o.NATS, Svc: svc, App: app, Ctx: ctx}
	if o.SkipReady {
		return e
	}
	// Run is live once its subscriptions exist; readyz needs the database and NATS.
	wait.For(t, 10*time.Second, func() error {
		if res := e.Do("GET", "/readyz", nil, nil); res.Status != 200 {
			return errors.New("not ready")
		}
		return nil
	})
	return e
}

type Response struct {
	Status int
	Body   []byte
	Header http.Header
}

func (r Response) JSON(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(r.Body, &m), string(r.Body))
	return m
}

func (r Response) ErrorCode(t *testing.T) string {
	t.Helper()
	m := r.JSON(t)
	e, ok := m["error"].(map[string]any)
	require.True(t, ok, "no error body: %s", r.Body)
	return e["code"].(string)
}

// do sends a request; body is JSON-encoded unless it is a string or []byte; headers are name, value pairs.
func (e *Env) Do(method, path string, body any, headers map[string]string) Response {
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
	res, err := e.App.Test(req, -1)
	require.NoError(e.t, err)
	b, err := io.ReadAll(res.Body)
	require.NoError(e.t, err)
	return Response{Status: res.StatusCode, Body: b, Header: res.Header}
}

func Bearer(token string) map[string]string {
	return map[string]string{"Authorization": "Bearer " + token}
}

func Admin() map[string]string { return Bearer(AdminToken) }

// createDevice registers a device through the operator API and returns its uuid and key.
func (e *Env) CreateDevice(body map[string]any) (string, string) {
	e.t.Helper()
	res := e.Do("POST", "/api/v1/devices", body, Admin())
	require.Equal(e.t, 201, res.Status, string(res.Body))
	m := res.JSON(e.t)
	return m["uuid"].(string), m["api_key"].(string)
}

func AppsWith(image string) map[string]any {
	return map[string]any{"app1": map[string]any{"appId": "app1", "appName": "app", "services": []any{
		map[string]any{"serviceId": "1", "serviceName": "web", "imageName": image, "config": map[string]any{"image": image}},
	}}}
}

// countingTracer counts the queries a pool sends.
type CountingTracer struct{ N atomic.Int64 }

func (c *CountingTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	c.N.Add(1)
	return ctx
}

func (c *CountingTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
