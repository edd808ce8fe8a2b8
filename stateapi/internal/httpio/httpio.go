// Package httpio holds the request-reading helpers both HTTP surfaces share: body decoding (through
// apierr.DecodeJSON, the one translation of JSON errors), size limits, path and query parameters,
// pagination cursors.
package httpio

import (
	"context"
	"encoding/base64"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/auth"
	"github.com/fleetshift/fleetshift/stateapi/internal/devicestore"
)

// DefaultMaxBody is the largest JSON body an operator route reads (a target state, a policy).
const DefaultMaxBody = 512 << 10

// DefaultRequestTimeout bounds the database work of one request, waiting for a pool connection included:
// past it the request fails with a timeout, which apierr answers 503 unavailable + Retry-After.
const DefaultRequestTimeout = 10 * time.Second

// Deadline returns a handler giving the rest of the chain a request context that ends after d.
func Deadline(d time.Duration) fiber.Handler {
	return func(c *fiber.Ctx) error {
		ctx, cancel := context.WithTimeout(c.UserContext(), d)
		defer cancel()
		c.SetUserContext(ctx)
		return c.Next()
	}
}

// DecodeBody decodes the request's JSON body into v, refusing a body over max bytes (413, code
// body_too_large) and any string that is not valid UTF-8 or holds NUL or a lone surrogate (400 naming
// the field). strict refuses unknown fields.
func DecodeBody(c *fiber.Ctx, v any, strict bool, max int) error {
	if err := CheckSize(c, max); err != nil {
		return err
	}
	return apierr.DecodeJSON(c.Body(), v, strict)
}

// CheckSize refuses a body larger than max bytes with a 413 saying the limit.
func CheckSize(c *fiber.Ctx, max int) error {
	if n := len(c.Body()); n > max {
		return apierr.New(apierr.ErrTooLarge, "body_too_large", "the body is %d bytes; at most %d are accepted on %s",
			n, max, c.Route().Path)
	}
	return nil
}

// DeviceUUIDParam reads the :uuid path parameter (a copy: it may outlive the request).
func DeviceUUIDParam(c *fiber.Ctx) (string, error) {
	id := strings.Clone(c.Params("uuid"))
	if !devicestore.ValidUUID(id) {
		return "", apierr.Invalid("uuid", "not a device uuid: %q (1-64 of A-Z a-z 0-9 _ -)", strings.ToValidUTF8(id, "?"))
	}
	return id, nil
}

// UUIDParam reads a path parameter that must be a uuid.
func UUIDParam(c *fiber.Ctx, name string) (string, error) {
	id := c.Params(name)
	u, err := uuid.Parse(id)
	if err != nil {
		return "", apierr.Invalid(name, "not a uuid: %q", strings.ToValidUTF8(id, "?"))
	}
	return u.String(), nil
}

// Query returns query parameter name trimmed, refusing invalid UTF-8, NUL and more than max bytes.
func Query(c *fiber.Ctx, name string, max int) (string, error) {
	v := strings.TrimSpace(c.Query(name))
	if len(v) > max {
		return "", apierr.Invalid(name, "at most %d characters", max)
	}
	if err := apierr.CheckText(name, v); err != nil {
		return "", err
	}
	return v, nil
}

// DeviceKey returns the key a device presented (X-Device-API-Key, else a bearer token).
func DeviceKey(c *fiber.Ctx) string {
	if k := strings.TrimSpace(c.Get("X-Device-API-Key")); k != "" {
		return k
	}
	return auth.BearerToken(c.Get(fiber.HeaderAuthorization))
}

// PageLimit reads ?limit= (default def, 1..max).
func PageLimit(c *fiber.Ctx, def, max int) (int, error) {
	raw := c.Query("limit")
	if raw == "" {
		return def, nil
	}
	n, err := strconv.Atoi(raw)
	if err != nil || n < 1 || n > max {
		return 0, apierr.Invalid("limit", "want an integer from 1 to %d, got %q", max, strings.ToValidUTF8(raw, "?"))
	}
	return n, nil
}

// EncodeCursor makes an opaque cursor from its parts.
func EncodeCursor(parts ...string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strings.Join(parts, "\x00")))
}

// DecodeCursor reads ?cursor= into n parts; absent: nil. Parts are valid UTF-8 without NUL.
func DecodeCursor(c *fiber.Ctx, n int) ([]string, error) {
	raw := c.Query("cursor")
	if raw == "" {
		return nil, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(raw)
	parts := strings.Split(string(b), "\x00")
	if err != nil || len(parts) != n {
		return nil, apierr.Invalid("cursor", "not a cursor this list returned")
	}
	for _, p := range parts {
		if apierr.CheckText("cursor", p) != nil {
			return nil, apierr.Invalid("cursor", "not a cursor this list returned")
		}
	}
	return parts, nil
}
