package auth

import (
	"strings"

	"github.com/gofiber/fiber/v2"

	"github.com/fleetshift/fleetshift/shared/apierr"
)

const localsKey = "fleetshift.auth.principal"

// Require returns a Fiber handler admitting requests whose `Authorization: Bearer` token has at least
// scope need: 401 when the token is missing or unknown, 403 when its scope is too low. The principal is
// available to later handlers through PrincipalFrom.
func (o *Operators) Require(need Scope) fiber.Handler {
	return func(c *fiber.Ctx) error {
		p, err := o.Authenticate(c.UserContext(), BearerToken(c.Get(fiber.HeaderAuthorization)))
		if err != nil {
			return err
		}
		if !p.Scope.Allows(need) {
			return apierr.New(apierr.ErrForbidden, "insufficient_scope",
				"this needs a %s token; the presented token has scope %s", need, p.Scope)
		}
		c.Locals(localsKey, p)
		return c.Next()
	}
}

// PrincipalFrom returns the principal Require stored on c.
func PrincipalFrom(c *fiber.Ctx) (Principal, bool) {
	p, ok := c.Locals(localsKey).(Principal)
	return p, ok
}

// BearerToken returns the token of an "Authorization: Bearer <token>" header value (scheme
// case-insensitive), or "" when there is none.
func BearerToken(header string) string {
	scheme, token, ok := strings.Cut(strings.TrimSpace(header), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(token)
}
