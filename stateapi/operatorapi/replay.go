package operatorapi

import (
	"errors"
	"strconv"

	"github.com/gofiber/fiber/v2"

	"github.com/fleetshift/fleetshift/planner"
	"github.com/fleetshift/fleetshift/shared/apierr"
	policies "github.com/fleetshift/fleetshift/shared/policy"
	"github.com/fleetshift/fleetshift/stateapi/internal/httpio"
)

// replayDays reads "days" (absent: planner.DefaultReplayDays).
func replayDays(days *int32) int {
	if days == nil {
		return planner.DefaultReplayDays
	}
	return int(*days)
}

// replayPolicy: POST /api/v1/image-policies/replay {"policy": {...}, "days"?} -> the rollouts the policy
// would have created for the pushes of the last days (a policy with an "id" of a stored policy replaces
// it; without one it is added). Writes nothing (planner.Replay).
func (s *Service) replayPolicy(c *fiber.Ctx) error {
	var req struct {
		Policy *policies.Input `json:"policy"`
		Days   *int32          `json:"days"`
	}
	if err := httpio.DecodeBody(c, &req, true, httpio.DefaultMaxBody); err != nil {
		return err
	}
	if req.Policy == nil {
		return apierr.Invalid("policy", "is required (a policy body as for POST /api/v1/image-policies)")
	}
	p, err := req.Policy.Validate()
	if err != nil {
		var ae *apierr.Error
		if errors.As(err, &ae) && ae.Field != "" {
			return &apierr.Error{Kind: ae.Kind, Code: ae.Code, Field: "policy." + ae.Field, Message: "policy." + ae.Message}
		}
		return err
	}
	if len(req.Policy.ID) > 0 && string(req.Policy.ID) != "null" {
		id, err := strconv.ParseInt(string(req.Policy.ID), 10, 64)
		if err != nil || id < 1 {
			return apierr.Invalid("policy.id", "must be the id of a stored policy (a positive integer) or absent")
		}
		if _, err := policies.Load(c.UserContext(), s.cfg.Pool, id); err != nil {
			if errors.Is(err, policies.ErrNotFound) {
				return apierr.New(apierr.ErrNotFound, "policy_not_found", "policy %d not found", id)
			}
			return err
		}
		p.ID = id
	}
	out, err := planner.Replay(c.UserContext(), s.cfg.Pool, p, replayDays(req.Days))
	if err != nil {
		return err
	}
	return c.JSON(out)
}

// replayStoredPolicy: POST /api/v1/image-policies/:id/replay {"days"?} -> the rollouts the stored policy
// would have created for the pushes of the last days, as it stands now. Writes nothing.
func (s *Service) replayStoredPolicy(c *fiber.Ctx) error {
	id, err := policyID(c)
	if err != nil {
		return err
	}
	var req struct {
		Days *int32 `json:"days"`
	}
	if len(c.Body()) > 0 {
		if err := httpio.DecodeBody(c, &req, true, httpio.DefaultMaxBody); err != nil {
			return err
		}
	}
	p, err := policies.Load(c.UserContext(), s.cfg.Pool, id)
	if errors.Is(err, policies.ErrNotFound) {
		return apierr.New(apierr.ErrNotFound, "policy_not_found", "policy %d not found", id)
	}
	if err != nil {
		return err
	}
	out, err := planner.Replay(c.UserContext(), s.cfg.Pool, *p, replayDays(req.Days))
	if err != nil {
		return err
	}
	return c.JSON(out)
}
