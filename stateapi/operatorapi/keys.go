package operatorapi

import (
	"fmt"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/jackc/pgx/v5"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/auth"
	"github.com/fleetshift/fleetshift/stateapi/internal/devicestore"
	"github.com/fleetshift/fleetshift/stateapi/internal/httpio"
)

// ProvisioningKey is a fleet provisioning key as listed (never the key itself).
type ProvisioningKey struct {
	ID                string     `json:"id"`
	FleetID           string     `json:"fleet_id"`
	Description       *string    `json:"description"`
	ExpiresAt         *time.Time `json:"expires_at"`
	MaxDevices        *int32     `json:"max_devices"`
	DevicesRegistered int32      `json:"devices_registered"`
	RevokedAt         *time.Time `json:"revoked_at"`
	CreatedAt         time.Time  `json:"created_at"`
}

const provisioningKeyColumns = `id::text, fleet_id, description, expires_at, max_devices, devices_registered, revoked_at, created_at`

func scanProvisioningKey(r pgx.Row) (ProvisioningKey, error) {
	var k ProvisioningKey
	err := r.Scan(&k.ID, &k.FleetID, &k.Description, &k.ExpiresAt, &k.MaxDevices, &k.DevicesRegistered, &k.RevokedAt, &k.CreatedAt)
	return k, err
}

// createProvisioningKey: POST /api/v1/provisioning-keys {"fleet_id", "expires_at"?, "max_devices"?,
// "description"?} -> 201 {"id", "key", ...}. The key is shown once; only its hash is kept.
func (s *Service) createProvisioningKey(c *fiber.Ctx) error {
	var req struct {
		FleetID     string  `json:"fleet_id"`
		ExpiresAt   *string `json:"expires_at"`
		MaxDevices  *int32  `json:"max_devices"`
		Description *string `json:"description"`
	}
	if err := httpio.DecodeBody(c, &req, true, httpio.DefaultMaxBody); err != nil {
		return err
	}
	req.FleetID = strings.TrimSpace(req.FleetID)
	var expiresAt *time.Time
	if req.ExpiresAt != nil {
		t, err := time.Parse(time.RFC3339Nano, *req.ExpiresAt)
		if err != nil {
			return apierr.Invalid("expires_at", "want an RFC 3339 time such as 2030-01-02T15:04:05Z, got %q", *req.ExpiresAt)
		}
		expiresAt = &t
	}
	switch {
	case req.FleetID == "" || len(req.FleetID) > devicestore.MaxFleetLen:
		return apierr.Invalid("fleet_id", "required, 1-%d characters", devicestore.MaxFleetLen)
	case expiresAt != nil && !expiresAt.After(time.Now()):
		return apierr.Invalid("expires_at", "must be in the future")
	case req.Description != nil && len(*req.Description) > maxDescriptionLen:
		return apierr.Invalid("description", "at most %d characters", maxDescriptionLen)
	case req.MaxDevices != nil && *req.MaxDevices < 1:
		return apierr.Invalid("max_devices", "must be at least 1")
	}
	key, hash, err := auth.NewKey()
	if err != nil {
		return err
	}
	k, err := scanProvisioningKey(s.cfg.Pool.QueryRow(c.UserContext(), `INSERT INTO provisioning_keys
		(fleet_id, key_hash, description, expires_at, max_devices) VALUES ($1, $2, $3, $4, $5)
		RETURNING `+provisioningKeyColumns, req.FleetID, hash, req.Description, expiresAt, req.MaxDevices))
	if err != nil {
		return fmt.Errorf("create provisioning key for fleet %s: %w", req.FleetID, err)
	}
	return c.Status(fiber.StatusCreated).JSON(struct {
		ProvisioningKey
		Key string `json:"key"`
	}{k, key})
}

// listProvisioningKeys: GET /api/v1/provisioning-keys[?fleet_id=].
func (s *Service) listProvisioningKeys(c *fiber.Ctx) error {
	var fleet any
	f, err := httpio.Query(c, "fleet_id", devicestore.MaxFleetLen)
	if err != nil {
		return err
	}
	if f != "" {
		fleet = f
	}
	rows, err := s.cfg.Pool.Query(c.UserContext(), `SELECT `+provisioningKeyColumns+` FROM provisioning_keys
		WHERE $1::text IS NULL OR fleet_id = $1 ORDER BY created_at DESC, id`, fleet)
	if err != nil {
		return fmt.Errorf("list provisioning keys: %w", err)
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ProvisioningKey, error) { return scanProvisioningKey(r) })
	if err != nil {
		return fmt.Errorf("list provisioning keys: %w", err)
	}
	return c.JSON(fiber.Map{"provisioning_keys": list})
}

// revokeProvisioningKey: DELETE /api/v1/provisioning-keys/:id. Devices already registered keep working.
func (s *Service) revokeProvisioningKey(c *fiber.Ctx) error {
	id, err := httpio.UUIDParam(c, "id")
	if err != nil {
		return err
	}
	tag, err := s.cfg.Pool.Exec(c.UserContext(), `UPDATE provisioning_keys SET revoked_at = coalesce(revoked_at, now())
		WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("revoke provisioning key %s: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return apierr.New(apierr.ErrNotFound, "provisioning_key_not_found", "provisioning key %s not found", id)
	}
	return c.SendStatus(fiber.StatusNoContent)
}

// createToken: POST /api/v1/tokens {"name", "scope"} -> 201 {"id", "token", ...}.
func (s *Service) createToken(c *fiber.Ctx) error {
	var req struct {
		Name  string `json:"name"`
		Scope string `json:"scope"`
	}
	if err := httpio.DecodeBody(c, &req, true, httpio.DefaultMaxBody); err != nil {
		return err
	}
	scope, err := auth.ParseScope(req.Scope)
	if err != nil {
		return apierr.Invalid("scope", "want read, operate or admin, got %q", req.Scope)
	}
	t, secret, err := s.ops.CreateToken(c.UserContext(), req.Name, scope)
	if err != nil {
		return err
	}
	if p, ok := auth.PrincipalFrom(c); ok {
		s.log.Info().Str("token", t.ID).Str("scope", scope.String()).Str("by", p.Actor()).Msg("token created")
	}
	return c.Status(fiber.StatusCreated).JSON(struct {
		auth.Token
		Secret string `json:"token"`
	}{t, secret})
}

// listTokens: GET /api/v1/tokens.
func (s *Service) listTokens(c *fiber.Ctx) error {
	list, err := s.ops.ListTokens(c.UserContext())
	if err != nil {
		return err
	}
	return c.JSON(fiber.Map{"tokens": list})
}

// revokeToken: DELETE /api/v1/tokens/:id.
func (s *Service) revokeToken(c *fiber.Ctx) error {
	if err := s.ops.RevokeToken(c.UserContext(), c.Params("id")); err != nil {
		return err
	}
	return c.SendStatus(fiber.StatusNoContent)
}
