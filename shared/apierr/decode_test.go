package apierr_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/fleetshift/fleetshift/shared/apierr"
)

type health struct {
	Status string `json:"status"`
}

type report struct {
	Apps map[string]struct {
		Services []struct {
			Health *health `json:"health"`
		} `json:"services"`
	} `json:"apps"`
	Priority *int32 `json:"priority"`
	Count    int    `json:"count"`
}

// Decode errors name the field and a JSON shape, never a Go type.
func TestDecodeJSONNamesFieldsNotGoTypes(t *testing.T) {
	t.Parallel()
	cases := []struct {
		body, code, field, want string
	}{
		{`{"apps":{"a":{"services":[{"health":"ok"}]}}}`, "invalid_apps", "apps.services.health", "field apps.services.health: expected object, got string"},
		{`{"priority":3000000000}`, "invalid_priority", "priority", "expected an integer from -2147483648 to 2147483647"},
		{`{"priority":"high"}`, "invalid_priority", "priority", "expected integer, got string"},
		{`{"count":1.5}`, "invalid_count", "count", "expected integer"},
		{`{"apps":[]}`, "invalid_apps", "apps", "expected object, got array"},
		{`[1]`, "invalid_json", "", "the body must be a JSON object"},
		{`{"apps":`, "invalid_json", "", "malformed JSON"},
		{`{"apps":{}} {}`, "invalid_json", "", "one JSON value"},
		{`{"nope":1}`, "invalid_nope", "nope", "unknown field"},
		{`{"apps":{"a\u0000":{}}}`, "invalid_apps", `apps.a\u0000`, "NUL"},
		{`{"apps":{"a":{"services":[{"health":{"status":"\ud800"}}]}}}`, "invalid_apps", "apps.a.services[0].health.status", "lone UTF-16 surrogate"},
		{"{\"apps\":{\"a\":{\"services\":[{\"health\":{\"status\":\"\xff\"}}]}}}", "invalid_apps", "apps.a.services[0].health.status", "not valid UTF-8"},
	}
	for _, tc := range cases {
		var r report
		err := apierr.DecodeJSON([]byte(tc.body), &r, true)
		require.Error(t, err, tc.body)
		var e *apierr.Error
		require.True(t, errors.As(err, &e), tc.body)
		require.Equal(t, http.StatusBadRequest, apierr.Status(err), tc.body)
		require.Equal(t, tc.code, e.Code, tc.body)
		require.Equal(t, tc.field, e.Field, tc.body)
		require.Contains(t, e.Message, tc.want, tc.body)
		require.NotContains(t, e.Message, "Go ", tc.body)
		require.NotContains(t, e.Message, "int32", tc.body)
		require.NotContains(t, e.Message, "apierr_test", tc.body)
	}
	// A surrogate pair is a valid character.
	var r report
	require.NoError(t, apierr.DecodeJSON([]byte(`{"apps":{"\ud83d\ude00":{}}}`), &r, true))
}

func TestCheckText(t *testing.T) {
	t.Parallel()
	require.NoError(t, apierr.CheckText("name", "héllo"))
	require.Equal(t, "invalid_name", apierr.CheckText("name", "a\x00b").(*apierr.Error).Code)
	require.Equal(t, "invalid_name", apierr.CheckText("name", "a\xffb").(*apierr.Error).Code)
}

// An unreachable database is a 503 with Retry-After and code "unavailable", whatever the wrapping.
func TestUnreachableDatabaseIs503(t *testing.T) {
	t.Parallel()
	pool, err := pgxpool.New(context.Background(), "postgres://postgres@127.0.0.1:1/none?sslmode=disable&connect_timeout=2")
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	var one int
	qerr := pool.QueryRow(context.Background(), `SELECT 1`).Scan(&one)
	require.Error(t, qerr)
	for _, err := range []error{
		fmt.Errorf("list devices: %w", qerr),
		fmt.Errorf("x: %w", &pgconn.PgError{Code: "57P01", Message: "terminating connection due to administrator command"}),
		fmt.Errorf("x: %w", &pgconn.PgError{Code: "3D000", Message: "database does not exist"}),
	} {
		app := fiber.New(fiber.Config{ErrorHandler: apierr.FiberErrorHandler})
		app.Get("/", func(c *fiber.Ctx) error { return err })
		res, rerr := app.Test(httptest.NewRequest("GET", "/", nil), -1)
		require.NoError(t, rerr)
		require.Equal(t, 503, res.StatusCode, err.Error())
		require.Equal(t, "5", res.Header.Get("Retry-After"))
		_, body := apierr.ToBody(err)
		require.Equal(t, "unavailable", body.Error.Code)
		require.NotContains(t, body.Error.Message, "127.0.0.1")
	}
	// A constraint violation is not an outage.
	require.Equal(t, 500, apierr.Status(&pgconn.PgError{Code: "23505"}))
	// A rate limit says when to come back.
	rl := &apierr.Error{Kind: apierr.ErrTooManyRequests, Code: "rate_limited", Message: "slow down", RetryAfter: 1500 * time.Millisecond}
	app := fiber.New(fiber.Config{ErrorHandler: apierr.FiberErrorHandler})
	app.Get("/", func(c *fiber.Ctx) error { return rl })
	res, err := app.Test(httptest.NewRequest("GET", "/", nil), -1)
	require.NoError(t, err)
	require.Equal(t, 429, res.StatusCode)
	require.Equal(t, "2", res.Header.Get("Retry-After"))
}

// The walk ends on any input, malformed ones included (it is run on valid documents, but must never hang).
func TestCheckJSONTextEndsOnMalformedInput(t *testing.T) {
	t.Parallel()
	for _, doc := range []string{`[}`, `{"a":[}`, `{"":{"":{"":["imageName":"x"}}:`, `]`, `}`, `{`, `[`, `"`, `"\`, `{"a`, `[1,}`, `{:}`} {
		_ = apierr.CheckJSONText([]byte(doc), "")
	}
}
