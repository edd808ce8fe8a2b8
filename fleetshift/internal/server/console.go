package server

import (
	"fmt"
	"slices"

	"github.com/gofiber/fiber/v2"

	"github.com/fleetshift/fleetshift/fleetshift/internal/console"
	"github.com/fleetshift/fleetshift/shared/logging"
)

// mountConsole serves the web console (/ui) and its routes where the operator API is served.
func mountConsole(app *fiber.App, d Deps, roles []string) error {
	if !slices.Contains(roles, RoleStateAPI) {
		return nil
	}
	c, err := console.New(console.Config{Pool: d.Pool, JS: d.JS, Subjects: d.Subjects, Operators: d.Operators,
		Log: logging.Component(d.Log, "console")})
	if err != nil {
		return fmt.Errorf("start console: %w", err)
	}
	c.Register(app)
	return nil
}
