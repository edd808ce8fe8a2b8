package deviceapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/gofiber/fiber/v2"
	"github.com/jackc/pgx/v5"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/auth"
	"github.com/fleetshift/fleetshift/shared/target"
	"github.com/fleetshift/fleetshift/stateapi/internal/devicestore"
	"github.com/fleetshift/fleetshift/stateapi/internal/httpio"
)

type registerRequest struct {
	UUID       string          `json:"uuid"`
	DeviceName string          `json:"device_name"`
	Tags       json.RawMessage `json:"tags"`
}

// register: POST /api/v1/device/register with a fleet provisioning key.
func (s *Service) register(c *fiber.Ctx) error {
	key := auth.BearerToken(c.Get(fiber.HeaderAuthorization))
	if key == "" {
		return apierr.New(apierr.ErrUnauthorized, "unauthorized", "a provisioning key is required (Authorization: Bearer <key>)")
	}
	var req registerRequest
	if err := httpio.DecodeBody(c, &req, false, DefaultMaxRegisterBody); err != nil {
		return err
	}
	if err := s.registrations.acquire(); err != nil {
		return err
	}
	defer s.registrations.release()
	ctx, cancel := context.WithTimeout(c.UserContext(), s.cfg.RequestTimeout)
	defer cancel()
	hash := auth.HashKey(key)
	var resp struct {
		UUID    string `json:"uuid"`
		APIKey  string `json:"api_key"`
		NATSURL string `json:"nats_url"`
	}
	var written []target.Written
	err := pgx.BeginFunc(ctx, s.cfg.Pool, func(tx pgx.Tx) error {
		// Check the key without locking it, write the device, and only then count it against the key:
		// the key's row lock is held just until commit, so registrations into one fleet run in parallel.
		refused := apierr.New(apierr.ErrUnauthorized, "unauthorized", "provisioning key unknown, revoked, expired or used up")
		const usable = `key_hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
			AND (max_devices IS NULL OR devices_registered < max_devices)`
		var keyID, fleetID string
		err := tx.QueryRow(ctx, `SELECT id::text, fleet_id FROM provisioning_keys WHERE `+usable, hash).Scan(&keyID, &fleetID)
		if errors.Is(err, pgx.ErrNoRows) {
			return refused
		}
		if err != nil {
			return fmt.Errorf("check provisioning key: %w", err)
		}
		d, err := devicestore.Insert(ctx, tx, s.cfg.Subjects, devicestore.New{UUID: req.UUID, Name: req.DeviceName,
			FleetID: fleetID, Tags: req.Tags, ProvisioningKeyID: keyID})
		if err != nil {
			return err
		}
		// Conditional on the same checks: a concurrent registration may have used the last slot.
		tag, err := tx.Exec(ctx, `UPDATE provisioning_keys SET devices_registered = devices_registered + 1 WHERE `+usable, hash)
		if err != nil {
			return fmt.Errorf("count registration against provisioning key %s: %w", keyID, err)
		}
		if tag.RowsAffected() == 0 {
			return refused
		}
		resp.UUID, resp.APIKey, written = d.UUID, d.APIKey, d.Written
		return nil
	})
	if err != nil {
		return err
	}
	devicestore.AnnounceWritten(s, written)
	resp.NATSURL = s.cfg.PublicNATSURL
	s.log.Info().Str("device", resp.UUID).Msg("device registered")
	return c.Status(fiber.StatusCreated).JSON(resp)
}
