package apierr

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
)

// DecodeJSON decodes one JSON value from body into v, after CheckJSONText. strict refuses unknown
// fields, naming them. Every problem is a 400 naming the field when there is one; messages speak of
// JSON shapes (object, array, string, integer...), never of Go types.
func DecodeJSON(body []byte, v any, strict bool) error {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return New(ErrInvalid, "invalid_json", "a JSON body is required")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if strict {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(v); err != nil {
		return JSONError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return New(ErrInvalid, "invalid_json", "the body must hold one JSON value")
	}
	return CheckJSONText(body, "")
}

// JSONError translates an encoding/json decode error into a 400: "field apps.services.health: expected
// object, got string". It is the one translation every handler uses.
func JSONError(err error) error {
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &te):
		want := jsonShape(te.Type)
		got := te.Value
		if te.Field == "" {
			return New(ErrInvalid, "invalid_json", "the body must be a JSON %s, not %s", want, got)
		}
		if strings.HasPrefix(got, "number") && isInteger(te.Type) {
			if lo, hi, ok := intRange(te.Type); ok {
				return fieldError(te.Field, "expected an integer from %d to %d, got %s", lo, hi, got)
			}
		}
		return fieldError(te.Field, "expected %s, got %s", want, got)
	case errors.As(err, &se):
		return New(ErrInvalid, "invalid_json", "malformed JSON at byte %d: %s", se.Offset,
			strings.TrimPrefix(se.Error(), "json: "))
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name, _ := strconv.Unquote(strings.TrimPrefix(err.Error(), "json: unknown field "))
		return Invalid(name, "unknown field")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return New(ErrInvalid, "invalid_json", "malformed JSON: the body ends too early")
	}
	// Remaining decode errors come from UnmarshalJSON methods; their text is written for clients.
	return New(ErrInvalid, "invalid_json", "malformed JSON: %s", strings.TrimPrefix(err.Error(), "json: "))
}

// fieldError is Invalid for a dotted JSON path: the code names the top-level field, the message the
// whole path.
func fieldError(path, format string, args ...any) *Error {
	top, _, _ := strings.Cut(path, ".")
	top, _, _ = strings.Cut(top, "[")
	return &Error{Kind: ErrInvalid, Code: "invalid_" + top, Field: path,
		Message: "field " + path + ": " + fmt.Sprintf(format, args...)}
}

// jsonShape names the JSON value a Go type accepts.
func jsonShape(t reflect.Type) string {
	if t == nil {
		return "a value"
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Slice, reflect.Array:
		if t.Elem().Kind() == reflect.Uint8 {
			return "string"
		}
		return "array"
	case reflect.Map, reflect.Struct:
		if t.String() == "time.Time" {
			return "string (RFC 3339 time)"
		}
		return "object"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "integer"
	case reflect.Float32, reflect.Float64:
		return "number"
	case reflect.Bool:
		return "boolean"
	case reflect.String:
		return "string"
	}
	return "a value"
}

func isInteger(t reflect.Type) bool { return jsonShape(t) == "integer" }

func intRange(t reflect.Type) (lo, hi int64, ok bool) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Int8, reflect.Int16, reflect.Int32:
		bits := t.Bits()
		return -1 << (bits - 1), 1<<(bits-1) - 1, true
	case reflect.Uint8, reflect.Uint16, reflect.Uint32:
		return 0, 1<<t.Bits() - 1, true
	}
	return 0, 0, false
}
