// Package apierr holds fleetshift's domain errors and maps them to HTTP statuses in one place.
//
// Services return errors wrapping these sentinels (or an *Error carrying a code and message); the HTTP
// layer and NATS control replies turn them into {"error": {"code", "message"}} bodies.
package apierr

import (
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Sentinels. Wrap them with context: fmt.Errorf("device %s: %w", id, apierr.ErrNotFound).
var (
	ErrNotFound     = errors.New("not found")
	ErrConflict     = errors.New("conflict")
	ErrInvalid      = errors.New("invalid input")
	ErrUnauthorized = errors.New("unauthorized")
	ErrForbidden    = errors.New("forbidden")
	ErrTooLarge     = errors.New("payload too large")
	ErrUnavailable  = errors.New("unavailable")
	// ErrTooManyRequests is a client over its rate (429); the Error's RetryAfter says when to come back.
	ErrTooManyRequests = errors.New("too many requests")
)

// Error is an error with a stable machine-readable code and a human message. Kind is one of the
// sentinels above and decides the HTTP status.
type Error struct {
	Kind    error
	Code    string
	Message string
	// Field names the offending input field, when there is one.
	Field string
	// RetryAfter, when set, is sent as the Retry-After header (429 and 503).
	RetryAfter time.Duration
}

func (e *Error) Error() string { return e.Message }

// Unwrap lets errors.Is match the kind.
func (e *Error) Unwrap() error { return e.Kind }

// New returns an *Error of kind with code and a formatted message.
func New(kind error, code, format string, args ...any) *Error {
	return &Error{Kind: kind, Code: code, Message: fmt.Sprintf(format, args...)}
}

// Invalid returns a validation error naming field.
func Invalid(field, format string, args ...any) *Error {
	return &Error{Kind: ErrInvalid, Code: "invalid_" + field, Field: field, Message: field + ": " + fmt.Sprintf(format, args...)}
}

// Body is the JSON error document.
type Body struct {
	Error BodyError `json:"error"`
}

// BodyError is the inner error object.
type BodyError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
}

// Status returns the HTTP status for err: a 4xx for the sentinels, 500 otherwise.
func Status(err error) int {
	switch {
	case err == nil:
		return http.StatusOK
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrConflict):
		return http.StatusConflict
	case errors.Is(err, ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, ErrUnauthorized):
		return http.StatusUnauthorized
	case errors.Is(err, ErrForbidden):
		return http.StatusForbidden
	case errors.Is(err, ErrTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, ErrUnavailable), Unreachable(err):
		return http.StatusServiceUnavailable
	case errors.Is(err, ErrTooManyRequests):
		return http.StatusTooManyRequests
	default:
		return http.StatusInternalServerError
	}
}

// RetryAfter is how long a client should wait before retrying after err: the Error's own RetryAfter,
// DefaultRetryAfter for any other 503, zero otherwise.
func RetryAfter(err error) time.Duration {
	var e *Error
	if errors.As(err, &e) && e.RetryAfter > 0 {
		return e.RetryAfter
	}
	if Status(err) == http.StatusServiceUnavailable {
		return DefaultRetryAfter
	}
	return 0
}

// ToBody returns the status and JSON body for err. Internal errors never leak their text.
func ToBody(err error) (int, Body) {
	status := Status(err)
	var e *Error
	if errors.As(err, &e) {
		return status, Body{Error: BodyError{Code: e.Code, Message: e.Message, Field: e.Field}}
	}
	code := map[int]string{
		http.StatusNotFound: "not_found", http.StatusConflict: "conflict", http.StatusBadRequest: "invalid",
		http.StatusUnauthorized: "unauthorized", http.StatusForbidden: "forbidden",
		http.StatusRequestEntityTooLarge: "too_large", http.StatusServiceUnavailable: "unavailable",
		http.StatusTooManyRequests: "rate_limited",
	}[status]
	if status == http.StatusServiceUnavailable && !errors.Is(err, ErrUnavailable) {
		return status, Body{Error: unavailableBody()} // an unreachable database: never leak its text
	}
	if status == http.StatusInternalServerError {
		return status, Body{Error: BodyError{Code: "internal", Message: "internal error"}}
	}
	return status, Body{Error: BodyError{Code: code, Message: err.Error()}}
}
