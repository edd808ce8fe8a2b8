package stateapi

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/auth"
)

// decodeBody decodes the request's JSON body into v. strict refuses unknown fields (naming them).
// Every decoding problem is a 400 naming the field when there is one.
func decodeBody(c *fiber.Ctx, v any, strict bool) error {
	body := bytes.TrimSpace(c.Body())
	if len(body) == 0 {
		return apierr.New(apierr.ErrInvalid, "invalid_json", "a JSON body is required")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if strict {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return apierr.New(apierr.ErrInvalid, "invalid_json", "the body must hold one JSON value")
	}
	return nil
}

func jsonError(err error) error {
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &te):
		field := te.Field
		if field == "" {
			return apierr.New(apierr.ErrInvalid, "invalid_json", "the body must be a JSON %s", te.Type)
		}
		return apierr.Invalid(field, "must be a JSON %s, not %s", jsonKind(te.Type.String()), te.Value)
	case errors.As(err, &se):
		return apierr.New(apierr.ErrInvalid, "invalid_json", "malformed JSON at byte %d: %v", se.Offset, err)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name, _ := strconv.Unquote(strings.TrimPrefix(err.Error(), "json: unknown field "))
		return apierr.Invalid(name, "unknown field")
	}
	return apierr.New(apierr.ErrInvalid, "invalid_json", "malformed JSON: %v", err)
}

func jsonKind(goType string) string {
	switch {
	case strings.HasPrefix(goType, "[]"):
		return "array"
	case strings.HasPrefix(goType, "map"), strings.HasPrefix(goType, "struct"):
		return "object"
	case strings.Contains(goType, "int"), strings.Contains(goType, "float"):
		return "number"
	case strings.Contains(goType, "bool"):
		return "boolean"
	case strings.Contains(goType, "string"):
		return "string"
	}
	return goType
}

// validDeviceUUID reports whether s is a device uuid: 1-64 of [A-Za-z0-9_-] (subject-safe).
func validDeviceUUID(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		b := s[i]
		if !(b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '-' || b == '_') {
			return false
		}
	}
	return true
}

func deviceUUIDParam(c *fiber.Ctx) (string, error) {
	// Fiber's strings point into a reused buffer; this one may outlive the request (cache keys).
	id := strings.Clone(c.Params("uuid"))
	if !validDeviceUUID(id) {
		return "", apierr.Invalid("uuid", "not a device uuid: %q (1-64 of A-Z a-z 0-9 _ -)", id)
	}
	return id, nil
}

func uuidParam(c *fiber.Ctx, name string) (string, error) {
	id := c.Params(name)
	u, err := uuid.Parse(id)
	if err != nil {
		return "", apierr.Invalid(name, "not a uuid: %q", id)
	}
	return u.String(), nil
}

// deviceKey returns the key a device presented (X-Device-API-Key, else a bearer token).
func deviceKey(c *fiber.Ctx) string {
	if k := strings.TrimSpace(c.Get("X-Device-API-Key")); k != "" {
		return k
	}
	return auth.BearerToken(c.Get(fiber.HeaderAuthorization))
}

// pageLimit reads ?limit= (default def, 1..max).
func pageLimit(c *fiber.Ctx, def, max int) (int, error) {
	raw := c.Query("limit")
	if raw == "" {
		return def, nil
	}
	n, err := strconv.Atoi(raw)
	if err != nil || n < 1 || n > max {
		return 0, apierr.Invalid("limit", "want an integer from 1 to %d, got %q", max, raw)
	}
	return n, nil
}

// encodeCursor makes an opaque cursor from its parts.
func encodeCursor(parts ...string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strings.Join(parts, "\x00")))
}

// decodeCursor reads ?cursor= into n parts; absent: nil.
func decodeCursor(c *fiber.Ctx, n int) ([]string, error) {
	raw := c.Query("cursor")
	if raw == "" {
		return nil, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(raw)
	parts := strings.Split(string(b), "\x00")
	if err != nil || len(parts) != n {
		return nil, apierr.Invalid("cursor", "not a cursor this list returned")
	}
	return parts, nil
}

// parseTags accepts a JSON array of strings, or an object k -> v stored as "k=v".
func parseTags(raw json.RawMessage) ([]string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return []string{}, nil
	}
	var list []string
	if err := json.Unmarshal(raw, &list); err != nil {
		var obj map[string]any
		if err := json.Unmarshal(raw, &obj); err != nil {
			return nil, apierr.Invalid("tags", "want an array of strings or an object of key -> value")
		}
		for k, v := range obj {
			var s string
			switch x := v.(type) {
			case string:
				s = x
			case float64, bool:
				b, _ := json.Marshal(x)
				s = string(b)
			case nil:
				s = ""
			default:
				return nil, apierr.Invalid("tags", "value of %q must be a string, number or boolean", k)
			}
			list = append(list, k+"="+s)
		}
	}
	seen := map[string]bool{}
	out := make([]string, 0, len(list))
	for _, t := range list {
		t = strings.TrimSpace(t)
		if t == "" || len(t) > 200 {
			return nil, apierr.Invalid("tags", "each tag must be 1-200 characters")
		}
		if !seen[t] {
			seen[t] = true
			out = append(out, t)
		}
	}
	slices.Sort(out)
	return out, nil
}
