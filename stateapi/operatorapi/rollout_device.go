package operatorapi

import (
	"errors"
	"fmt"

	"github.com/gofiber/fiber/v2"
	"github.com/jackc/pgx/v5"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/device"
)

// getRolloutDevice: GET /api/v1/rollouts/:id/devices/:uuid, one device's row of a rollout (as in the
// list: status, images, target version, failure_reason, failure_log, retry_count, ...) with its name.
func (s *Service) getRolloutDevice(c *fiber.Ctx) error {
	id, err := s.requireRollout(c)
	if err != nil {
		return err
	}
	uuid := c.Params("uuid")
	if !device.ValidUUID(uuid) {
		return apierr.Invalid("uuid", "expected a device uuid (1-64 of A-Z a-z 0-9 _ -), got %q", uuid)
	}
	var doc []byte
	err = s.cfg.Pool.QueryRow(c.UserContext(), `SELECT to_jsonb(s) || jsonb_build_object('device_name', d.device_name)
		FROM device_rollout_status s JOIN devices d ON d.uuid = s.device_uuid
		WHERE s.rollout_id = $1 AND s.device_uuid = $2`, id, uuid).Scan(&doc)
	if errors.Is(err, pgx.ErrNoRows) {
		return apierr.New(apierr.ErrNotFound, "device_not_in_rollout", "device %s is not in rollout %s", uuid, id)
	}
	if err != nil {
		return fmt.Errorf("read device %s of rollout %s: %w", uuid, id, err)
	}
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
	return c.Send(doc)
}
