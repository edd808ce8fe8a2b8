package operatorapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/gofiber/fiber/v2"
	"github.com/jackc/pgx/v5"

	"github.com/fleetshift/fleetshift/shared/apierr"
	policies "github.com/fleetshift/fleetshift/shared/policy"
	"github.com/fleetshift/fleetshift/stateapi/internal/httpio"
)

// maxDescriptionLen bounds free-text descriptions (a policy's, a provisioning key's).
const maxDescriptionLen = policies.MaxDescriptionLen

// decodePolicy reads a policy body and validates it (shared/policy: defaults, ranges, field-named 400s).
func decodePolicy(c *fiber.Ctx) (policies.Policy, error) {
	var in policies.Input
	if err := httpio.DecodeBody(c, &in, true, httpio.DefaultMaxBody); err != nil {
		return policies.Policy{}, err
	}
	return in.Validate()
}

func policyID(c *fiber.Ctx) (int64, error) {
	raw := c.Params("id")
	id, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || id < 1 {
		return 0, apierr.Invalid("id", "not a policy id: %q", raw)
	}
	return id, nil
}

// policyJSON selects a policy as JSON: every column, times as HH:MM.
const policyJSON = `to_jsonb(p) || jsonb_build_object(
	'maintenance_window_start', to_char(p.maintenance_window_start, 'HH24:MI'),
	'maintenance_window_end', to_char(p.maintenance_window_end, 'HH24:MI'))`

func (s *Service) listPolicies(c *fiber.Ctx) error {
	rows, err := s.cfg.Pool.Query(c.UserContext(), `SELECT `+policyJSON+` FROM image_update_policies p ORDER BY id`)
	if err != nil {
		return fmt.Errorf("list policies: %w", err)
	}
	list, err := pgx.CollectRows(rows, pgx.RowTo[json.RawMessage])
	if err != nil {
		return fmt.Errorf("list policies: %w", err)
	}
	if list == nil {
		list = []json.RawMessage{}
	}
	return c.JSON(fiber.Map{"policies": list})
}

func (s *Service) getPolicy(c *fiber.Ctx) error {
	id, err := policyID(c)
	if err != nil {
		return err
	}
	return s.sendPolicy(c, s.cfg.Pool.QueryRow(c.UserContext(), `SELECT `+policyJSON+` FROM image_update_policies p WHERE id = $1`, id), id, fiber.StatusOK)
}

func (s *Service) sendPolicy(c *fiber.Ctx, row pgx.Row, id int64, status int) error {
	var doc json.RawMessage
	err := row.Scan(&doc)
	if errors.Is(err, pgx.ErrNoRows) {
		return apierr.New(apierr.ErrNotFound, "policy_not_found", "policy %d not found", id)
	}
	if err != nil {
		return fmt.Errorf("policy %d: %w", id, err)
	}
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
	return c.Status(status).Send(doc)
}

func (s *Service) createPolicy(c *fiber.Ctx) error {
	p, err := decodePolicy(c)
	if err != nil {
		return err
	}
	return s.sendPolicy(c, s.cfg.Pool.QueryRow(c.UserContext(), `WITH p AS (INSERT INTO image_update_policies (`+policies.Columns+`)
		VALUES (`+policies.Placeholders+`) RETURNING *)
		SELECT `+policyJSON+` FROM p`, p.Args()...), 0, fiber.StatusCreated)
}

func (s *Service) replacePolicy(c *fiber.Ctx) error {
	id, err := policyID(c)
	if err != nil {
		return err
	}
	p, err := decodePolicy(c)
	if err != nil {
		return err
	}
	args := append(p.Args(), id)
	return s.sendPolicy(c, s.cfg.Pool.QueryRow(c.UserContext(), `WITH p AS (UPDATE image_update_policies SET
		(`+policies.Columns+`, updated_at) = (`+policies.Placeholders+`, now())
		WHERE id = $`+strconv.Itoa(len(args))+` RETURNING *)
		SELECT `+policyJSON+` FROM p`, args...), id, fiber.StatusOK)
}

func (s *Service) deletePolicy(c *fiber.Ctx) error {
	id, err := policyID(c)
	if err != nil {
		return err
	}
	tag, err := s.cfg.Pool.Exec(c.UserContext(), `DELETE FROM image_update_policies WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("delete policy %d: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return apierr.New(apierr.ErrNotFound, "policy_not_found", "policy %d not found", id)
	}
	return c.SendStatus(fiber.StatusNoContent)
}
