package apierr

import (
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
)

// FiberErrorHandler writes err as the JSON error document. It is the one place where errors become
// HTTP responses; Fiber's own errors (unknown route, body too large) get the same shape.
func FiberErrorHandler(c *fiber.Ctx, err error) error {
	var fe *fiber.Error
	if errors.As(err, &fe) {
		kind := map[int]error{
			fiber.StatusNotFound: ErrNotFound, fiber.StatusRequestEntityTooLarge: ErrTooLarge,
			fiber.StatusMethodNotAllowed: ErrNotFound, fiber.StatusUnauthorized: ErrUnauthorized,
			fiber.StatusForbidden: ErrForbidden, fiber.StatusConflict: ErrConflict,
		}[fe.Code]
		if kind == nil && fe.Code >= 400 && fe.Code < 500 {
			kind = ErrInvalid
		}
		if kind != nil {
			code := map[int]string{fiber.StatusNotFound: "not_found", fiber.StatusMethodNotAllowed: "method_not_allowed",
				fiber.StatusRequestEntityTooLarge: "too_large", fiber.StatusRequestTimeout: "timeout"}[fe.Code]
			if code == "" {
				code = "invalid"
			}
			return c.Status(fe.Code).JSON(Body{Error: BodyError{Code: code, Message: fiberMessage(fe)}})
		}
	}
	status, body := ToBody(err)
	if d := RetryAfter(err); d > 0 {
		c.Set(fiber.HeaderRetryAfter, strconv.Itoa(int((d+time.Second-1)/time.Second)))
	}
	return c.Status(status).JSON(body)
}

// fiberMessage is the client-facing message of one of Fiber's (or fasthttp's) own errors. A request that
// fasthttp could not parse is described, never echoed: its error text quotes the raw request, credentials
// included.
func fiberMessage(fe *fiber.Error) string {
	switch {
	case fe.Code == fiber.StatusRequestTimeout:
		return "the request did not arrive in time"
	case fe.Code == fiber.StatusBadRequest && (strings.Contains(fe.Message, "error when") || strings.Contains(fe.Message, "Buffer size")):
		return "malformed HTTP request: its request line or headers cannot be read"
	}
	return fe.Message
}
