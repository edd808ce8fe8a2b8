package stateapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/auth"
	"github.com/fleetshift/fleetshift/shared/target"
	"github.com/fleetshift/fleetshift/streams"
)

var (
	errDeviceUnauthorized = apierr.New(apierr.ErrUnauthorized, "unauthorized", "missing, unknown or revoked device key")
	errOtherDevice        = apierr.New(apierr.ErrForbidden, "forbidden", "this device key opens only its own device")
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
	if err := decodeBody(c, &req, false); err != nil {
		return err
	}
	ctx := c.UserContext()
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
		d, err := s.insertDevice(ctx, tx, newDevice{UUID: req.UUID, Name: req.DeviceName, FleetID: fleetID,
			Tags: req.Tags, ProvisioningKeyID: keyID})
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
	s.announceWritten(written)
	resp.NATSURL = s.cfg.PublicNATSURL
	s.log.Info().Str("device", resp.UUID).Msg("device registered")
	return c.Status(fiber.StatusCreated).JSON(resp)
}

type newDevice struct {
	UUID, Name, FleetID string
	Tags                json.RawMessage
	ProvisioningKeyID   string
}

type createdDevice struct {
	UUID, APIKey string
	Written      []target.Written
}

// insertDevice validates and stores a device with a new key, starting on its fleet's default target.
func (s *Service) insertDevice(ctx context.Context, tx pgx.Tx, d newDevice) (createdDevice, error) {
	d.Name = strings.TrimSpace(d.Name)
	if d.Name == "" || len(d.Name) > 200 {
		return createdDevice{}, apierr.Invalid("device_name", "required, at most 200 characters")
	}
	if d.UUID == "" {
		d.UUID = uuid.NewString()
	} else if !validDeviceUUID(d.UUID) {
		return createdDevice{}, apierr.Invalid("uuid", "1-64 of A-Z a-z 0-9 _ - (it is used in NATS subjects)")
	}
	if len(d.FleetID) > 128 {
		return createdDevice{}, apierr.Invalid("fleet_id", "at most 128 characters")
	}
	tags, err := parseTags(d.Tags)
	if err != nil {
		return createdDevice{}, err
	}
	key, hash, err := auth.NewKey()
	if err != nil {
		return createdDevice{}, err
	}
	_, err = tx.Exec(ctx, `INSERT INTO devices (uuid, device_name, fleet_id, tags, api_key_hash, provisioning_key_id)
		VALUES ($1, $2, NULLIF($3, ''), $4, $5, NULLIF($6, '')::uuid)`, d.UUID, d.Name, d.FleetID, tags, hash, d.ProvisioningKeyID)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		return createdDevice{}, apierr.New(apierr.ErrConflict, "device_exists", "device %s already exists", d.UUID)
	}
	if err != nil {
		return createdDevice{}, fmt.Errorf("insert device %s: %w", d.UUID, err)
	}
	w := target.Write{DeviceUUID: d.UUID, Apps: target.Apps{}, Config: json.RawMessage("{}")}
	if d.FleetID != "" {
		var apps, cfg []byte
		err := tx.QueryRow(ctx, `SELECT apps, config FROM fleet_target_state WHERE fleet_id = $1`, d.FleetID).Scan(&apps, &cfg)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
		case err != nil:
			return createdDevice{}, fmt.Errorf("read default target of fleet %s: %w", d.FleetID, err)
		default:
			if w.Apps, err = target.ParseApps(apps); err != nil {
				return createdDevice{}, fmt.Errorf("default target of fleet %s: %w", d.FleetID, err)
			}
			w.Config = cfg
		}
	}
	written, err := s.writeTargets(ctx, tx, []target.Write{w})
	if err != nil {
		return createdDevice{}, fmt.Errorf("write first target of %s: %w", d.UUID, err)
	}
	return createdDevice{UUID: d.UUID, APIKey: key, Written: written}, nil
}

// deviceState: GET /api/v1/device/:uuid/state. An unchanged poll is answered from the cache.
//
// The unchanged poll allocates nothing of its own: the uuid is looked up in place (Fiber's buffer) and
// copied only when a database read may cache it.
func (s *Service) deviceState(c *fiber.Ctx) error {
	id := c.Params("uuid")
	if !validDeviceUUID(id) {
		return deviceUUIDParamErr(c)
	}
	key := deviceKey(c)
	if key == "" {
		return errDeviceUnauthorized
	}
	hash := sha256.Sum256([]byte(key))
	now := time.Now()
	inm := c.Get(fiber.HeaderIfNoneMatch)
	if snap, ok := s.cache.lookup(id, hash, now); ok {
		if noneMatch(inm, snap.etag) {
			return notModified(c, snap.etag)
		}
		if snap.body != nil {
			return sendState(c, snap.etag, snap.body)
		}
	}
	id = strings.Clone(id) // it may become a cache key
	ctx := c.UserContext()
	f := s.cache.begin(id)
	defer s.cache.end(f)
	var (
		stored         []byte
		revoked        bool
		apps, cfg      []byte
		version        int64
		etag           string
		deviceNotFound bool
	)
	err := s.cfg.Pool.QueryRow(ctx, `SELECT d.api_key_hash, d.revoked_at IS NOT NULL, t.apps, t.config,
			coalesce(t.version, 0), coalesce(t.etag, '0')
		FROM devices d LEFT JOIN device_target_state t ON t.device_uuid = d.uuid WHERE d.uuid = $1`, id).
		Scan(&stored, &revoked, &apps, &cfg, &version, &etag)
	if errors.Is(err, pgx.ErrNoRows) {
		deviceNotFound = true
	} else if err != nil {
		return fmt.Errorf("read target of %s: %w", id, err)
	}
	if deviceNotFound || revoked || !bytes.Equal(stored, hash[:]) {
		return s.refuseKey(ctx, hash)
	}
	body, err := targetBody(id, apps, cfg, version)
	if err != nil {
		return err
	}
	s.cache.store(f, hash, version, etag, body, now)
	if noneMatch(inm, etag) {
		return notModified(c, etag)
	}
	return sendState(c, etag, body)
}

// refuseKey decides between 401 (the key opens no device) and 403 (it opens another one).
func (s *Service) refuseKey(ctx context.Context, hash [32]byte) error {
	if _, err := s.deviceByKey(ctx, hash); err != nil {
		return err
	}
	return errOtherDevice
}

// deviceByKey returns the uuid of the live device whose key hashes to hash.
func (s *Service) deviceByKey(ctx context.Context, hash [32]byte) (string, error) {
	var id string
	err := s.cfg.Pool.QueryRow(ctx, `SELECT uuid FROM devices WHERE api_key_hash = $1 AND revoked_at IS NULL`, hash[:]).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", errDeviceUnauthorized
	}
	if err != nil {
		return "", fmt.Errorf("look up device key: %w", err)
	}
	return id, nil
}

// deviceUUIDParamErr is the error deviceUUIDParam gives for the request's invalid uuid.
func deviceUUIDParamErr(c *fiber.Ctx) error {
	_, err := deviceUUIDParam(c)
	return err
}

// setETag sets the ETag header to the quoted etag without allocating (fasthttp copies the value).
func setETag(c *fiber.Ctx, etag string) {
	var buf [96]byte
	b := append(buf[:0], '"')
	b = append(b, etag...)
	c.Response().Header.SetBytesV(fiber.HeaderETag, append(b, '"'))
}

func notModified(c *fiber.Ctx, etag string) error {
	setETag(c, etag)
	c.Set(fiber.HeaderCacheControl, "no-cache")
	return c.SendStatus(fiber.StatusNotModified)
}

func sendState(c *fiber.Ctx, etag string, body []byte) error {
	setETag(c, etag)
	c.Set(fiber.HeaderCacheControl, "no-cache")
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
	return c.Status(fiber.StatusOK).Send(body)
}

// reportState: PATCH /api/v1/device/state. Every key of the body must be the authenticated device.
func (s *Service) reportState(c *fiber.Ctx) error {
	key := deviceKey(c)
	if key == "" {
		return errDeviceUnauthorized
	}
	hash := sha256.Sum256([]byte(key))
	ctx := c.UserContext()
	var body map[string]json.RawMessage
	if err := decodeBody(c, &body, false); err != nil {
		return err
	}
	// Authenticate before judging the body, so an unauthenticated caller learns nothing from it.
	var id string
	for k := range body {
		if len(body) == 1 && validDeviceUUID(k) && s.cache.keyMatches(k, hash, time.Now()) {
			id = k
		}
	}
	if id == "" {
		var err error
		if id, err = s.deviceByKey(ctx, hash); err != nil {
			return err
		}
	}
	if len(body) == 0 {
		return apierr.Invalid("body", "want {\"<uuid>\": {\"apps\": ...}}")
	}
	for k := range body {
		if k != id {
			return errOtherDevice
		}
	}
	raw := body[id]
	var rep streams.DeviceReport
	if err := json.Unmarshal(raw, &rep); err != nil {
		return apierr.Invalid("apps", "not a device report: %v", err)
	}
	var parts struct {
		Apps   json.RawMessage `json:"apps"`
		Config json.RawMessage `json:"config"`
	}
	_ = json.Unmarshal(raw, &parts) // shape checked just above
	apps := parts.Apps
	if len(apps) == 0 || string(apps) == "null" {
		apps = json.RawMessage("{}")
	}
	var cfg any
	if len(parts.Config) > 0 && string(parts.Config) != "null" {
		cfg = string(parts.Config)
	}
	tag, err := s.cfg.Pool.Exec(ctx, `WITH cur AS (
			INSERT INTO device_current_state AS s (device_uuid, apps, config, report, reported_at)
			SELECT $1, $2::jsonb, coalesce($3::jsonb, '{}'::jsonb), $4::jsonb, now()
			FROM devices WHERE uuid = $1 AND revoked_at IS NULL
			ON CONFLICT (device_uuid) DO UPDATE SET apps = EXCLUDED.apps,
				config = coalesce($3::jsonb, s.config), report = EXCLUDED.report, reported_at = now())
		UPDATE devices SET is_online = true, last_seen_at = now() WHERE uuid = $1 AND revoked_at IS NULL`,
		id, string(apps), cfg, string(raw))
	if err != nil {
		return fmt.Errorf("store current state of %s: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return errDeviceUnauthorized // revoked meanwhile
	}
	payload, err := json.Marshal(map[string]json.RawMessage{id: raw})
	if err != nil {
		return fmt.Errorf("encode report of %s: %w", id, err)
	}
	pubCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := s.cfg.JS.Publish(pubCtx, s.cfg.Subjects.DeviceState(id), payload); err != nil {
		s.log.Warn().Err(err).Str("device", id).Msg("publish device report")
		return apierr.New(apierr.ErrUnavailable, "report_not_published",
			"the report was stored but could not be handed to the pipeline; send it again")
	}
	return c.JSON(fiber.Map{"ok": true})
}
