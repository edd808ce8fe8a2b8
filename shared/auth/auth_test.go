package auth_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"testing"

	"github.com/gofiber/fiber/v2"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/auth"
	"github.com/fleetshift/fleetshift/shared/logging"
	"github.com/fleetshift/fleetshift/shared/pgtest"
)

func TestScopes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.New(t)
	ops := auth.NewOperators(db.Pool, "boot-secret", logging.Nop())

	p, err := ops.Authenticate(ctx, "boot-secret")
	noErr(t, err)
	eq(t, auth.ScopeAdmin, p.Scope)

	_, err = ops.Authenticate(ctx, "boot-secreT")
	isTrue(t, errors.Is(err, apierr.ErrUnauthorized))
	_, err = ops.Authenticate(ctx, "")
	isTrue(t, errors.Is(err, apierr.ErrUnauthorized))

	readTok, readSecret, err := ops.CreateToken(ctx, "reader", auth.ScopeRead)
	noErr(t, err)
	_, opSecret, err := ops.CreateToken(ctx, "op", auth.ScopeOperate)
	noErr(t, err)

	app := fiber.New(fiber.Config{ErrorHandler: apierr.FiberErrorHandler})
	app.Get("/r", ops.Require(auth.ScopeRead), func(c *fiber.Ctx) error {
		p, ok := auth.PrincipalFrom(c)
		isTrue(t, ok)
		return c.SendString(p.Name)
	})
	app.Post("/w", ops.Require(auth.ScopeOperate), func(c *fiber.Ctx) error { return c.SendString("ok") })
	app.Post("/a", ops.Require(auth.ScopeAdmin), func(c *fiber.Ctx) error { return c.SendString("ok") })
	do := func(method, path, token string) int {
		req := httptest.NewRequest(method, path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		res, err := app.Test(req, -1)
		noErr(t, err)
		return res.StatusCode
	}
	eq(t, 401, do("GET", "/r", ""))
	eq(t, 401, do("GET", "/r", "nope"))
	eq(t, 200, do("GET", "/r", readSecret))
	eq(t, 403, do("POST", "/w", readSecret))
	eq(t, 200, do("POST", "/w", opSecret))
	eq(t, 403, do("POST", "/a", opSecret))
	eq(t, 200, do("POST", "/a", "boot-secret"))

	// Revocation takes effect at once in this process, even though the token was just cached.
	noErr(t, ops.RevokeToken(ctx, readTok.ID))
	eq(t, 401, do("GET", "/r", readSecret))

	// Another process (a second Operators) notices within its cache TTL; a fresh one at once.
	other := auth.NewOperators(db.Pool, "", logging.Nop())
	_, err = other.Authenticate(ctx, readSecret)
	isTrue(t, errors.Is(err, apierr.ErrUnauthorized))
	_, err = other.Authenticate(ctx, "boot-secret")
	isTrue(t, errors.Is(err, apierr.ErrUnauthorized))

	list, err := ops.ListTokens(ctx)
	noErr(t, err)
	eq(t, 2, len(list))
	isTrue(t, errors.Is(ops.RevokeToken(ctx, "00000000-0000-0000-0000-000000000000"), apierr.ErrNotFound))
	isTrue(t, errors.Is(ops.RevokeToken(ctx, "x"), apierr.ErrInvalid))
}

func TestKeys(t *testing.T) {
	t.Parallel()
	k1, h1, err := auth.NewKey()
	noErr(t, err)
	k2, _, err := auth.NewKey()
	noErr(t, err)
	if k1 == k2 {
		t.Fatal("two keys alike")
	}
	eq(t, 43, len(k1))
	eq(t, string(h1), string(auth.HashKey(k1)))
	eq(t, "tok", auth.BearerToken("bearer tok"))
	eq(t, "", auth.BearerToken("Basic tok"))
}

func noErr(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func eq[T comparable](t *testing.T, want, got T) {
	t.Helper()
	if want != got {
		t.Fatalf("want %v, got %v", want, got)
	}
}

func isTrue(t *testing.T, ok bool) {
	t.Helper()
	if !ok {
		t.Fatal("condition false")
	}
}
