package operatorapi

import (
	"github.com/gofiber/fiber/v2"

	"github.com/fleetshift/fleetshift/planner"
	"github.com/fleetshift/fleetshift/stateapi/internal/httpio"
)

// preview: POST /api/v1/rollouts/preview {"image": "repo:tag", "digest"?} -> the matching policy and each
// affected device with its batch, writing nothing (planner.Preview: the same plan the real push makes).
func (s *Service) preview(c *fiber.Ctx) error {
	var req struct {
		Image  string `json:"image"`
		Digest string `json:"digest"`
	}
	if err := httpio.DecodeBody(c, &req, true, httpio.DefaultMaxBody); err != nil {
		return err
	}
	out, err := planner.Preview(c.UserContext(), s.cfg.Pool, req.Image, req.Digest)
	if err != nil {
		return err
	}
	return c.JSON(out)
}
