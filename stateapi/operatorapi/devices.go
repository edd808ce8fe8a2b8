package operatorapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/jackc/pgx/v5"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/target"
	"github.com/fleetshift/fleetshift/stateapi/internal/devicestore"
	"github.com/fleetshift/fleetshift/stateapi/internal/httpio"
)

type createDeviceRequest struct {
	UUID       string          `json:"uuid"`
	DeviceName string          `json:"device_name"`
	FleetID    string          `json:"fleet_id"`
	Tags       json.RawMessage `json:"tags"`
}

// createDevice: POST /api/v1/devices -> 201 {"uuid", "api_key"}.
func (s *Service) createDevice(c *fiber.Ctx) error {
	var req createDeviceRequest
	if err := httpio.DecodeBody(c, &req, false, httpio.DefaultMaxBody); err != nil {
		return err
	}
	ctx := c.UserContext()
	var d devicestore.Created
	err := pgx.BeginFunc(ctx, s.cfg.Pool, func(tx pgx.Tx) error {
		var err error
		d, err = devicestore.Insert(ctx, tx, s.cfg.Subjects, devicestore.New{UUID: req.UUID, Name: req.DeviceName, FleetID: strings.TrimSpace(req.FleetID), Tags: req.Tags})
		return err
	})
	if err != nil {
		return err
	}
	devicestore.AnnounceWritten(s.cfg.Targets, d.Written)
	return c.Status(fiber.StatusCreated).JSON(fiber.Map{"uuid": d.UUID, "api_key": d.APIKey})
}

// Device is a device as operators see it.
type Device struct {
	UUID          string     `json:"uuid"`
	DeviceName    string     `json:"device_name"`
	FleetID       *string    `json:"fleet_id"`
	Tags          []string   `json:"tags"`
	IsOnline      bool       `json:"is_online"`
	LastSeenAt    *time.Time `json:"last_seen_at"`
	RevokedAt     *time.Time `json:"revoked_at,omitempty"`
	CreatedAt     time.Time  `json:"created_at"`
	TargetVersion *int64     `json:"target_version"`
}

const deviceColumns = `d.uuid, d.device_name, d.fleet_id, d.tags, d.is_online, d.last_seen_at, d.revoked_at,
	d.created_at, t.version`

func scanDevice(r pgx.Row) (Device, error) {
	var d Device
	err := r.Scan(&d.UUID, &d.DeviceName, &d.FleetID, &d.Tags, &d.IsOnline, &d.LastSeenAt, &d.RevokedAt,
		&d.CreatedAt, &d.TargetVersion)
	return d, err
}

// listDevices: GET /api/v1/devices?fleet_id=&tag=&tag=&include_revoked=&limit=&cursor=.
func (s *Service) listDevices(c *fiber.Ctx) error {
	limit, err := httpio.PageLimit(c, 100, s.cfg.MaxPageSize)
	if err != nil {
		return err
	}
	cur, err := httpio.DecodeCursor(c, 1)
	if err != nil {
		return err
	}
	var after, fleet any
	if cur != nil {
		after = cur[0]
	}
	f, err := httpio.Query(c, "fleet_id", devicestore.MaxFleetLen)
	if err != nil {
		return err
	}
	if f != "" {
		fleet = f
	}
	var tags []string
	for _, v := range c.Context().QueryArgs().PeekMulti("tag") {
		if t := strings.TrimSpace(string(v)); t != "" {
			if err := apierr.CheckText("tag", t); err != nil {
				return err
			}
			tags = append(tags, t)
		}
	}
	if len(tags) > devicestore.MaxTags {
		return apierr.Invalid("tag", "at most %d tags", devicestore.MaxTags)
	}
	rows, err := s.cfg.Pool.Query(c.UserContext(), `SELECT `+deviceColumns+`
		FROM devices d LEFT JOIN device_target_state t ON t.device_uuid = d.uuid
		WHERE ($1::text IS NULL OR d.fleet_id = $1) AND ($2::text[] IS NULL OR d.tags @> $2)
		  AND ($3::text IS NULL OR d.uuid > $3) AND ($4 OR d.revoked_at IS NULL)
		ORDER BY d.uuid LIMIT $5`, fleet, tags, after, c.QueryBool("include_revoked"), limit+1)
	if err != nil {
		return fmt.Errorf("list devices: %w", err)
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Device, error) { return scanDevice(r) })
	if err != nil {
		return fmt.Errorf("list devices: %w", err)
	}
	var next *string
	if len(list) > limit {
		list = list[:limit]
		n := httpio.EncodeCursor(list[limit-1].UUID)
		next = &n
	}
	return c.JSON(fiber.Map{"devices": list, "next_cursor": next})
}

// getDevice: GET /api/v1/devices/:uuid.
func (s *Service) getDevice(c *fiber.Ctx) error {
	id, err := httpio.DeviceUUIDParam(c)
	if err != nil {
		return err
	}
	d, err := scanDevice(s.cfg.Pool.QueryRow(c.UserContext(), `SELECT `+deviceColumns+`
		FROM devices d LEFT JOIN device_target_state t ON t.device_uuid = d.uuid WHERE d.uuid = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return apierr.New(apierr.ErrNotFound, "device_not_found", "device %s not found", id)
	}
	if err != nil {
		return fmt.Errorf("read device %s: %w", id, err)
	}
	return c.JSON(d)
}

// revokeDevice: DELETE /api/v1/devices/:uuid. The device's key stops working everywhere (this cache at
// once, other replicas and NATS through the revocation announcement). Its history stays.
func (s *Service) revokeDevice(c *fiber.Ctx) error {
	id, err := httpio.DeviceUUIDParam(c)
	if err != nil {
		return err
	}
	tag, err := s.cfg.Pool.Exec(c.UserContext(), `UPDATE devices SET revoked_at = coalesce(revoked_at, now()),
		is_online = false, updated_at = now() WHERE uuid = $1`, id)
	if err != nil {
		return fmt.Errorf("revoke device %s: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return apierr.New(apierr.ErrNotFound, "device_not_found", "device %s not found", id)
	}
	if s.cfg.Targets != nil {
		s.cfg.Targets.Evict(id)
	}
	if err := s.cfg.NC.Publish(s.cfg.Subjects.DeviceRevoked(), []byte(id)); err != nil {
		s.log.Warn().Err(err).Str("device", id).Msg("announce device revocation")
	}
	return c.SendStatus(fiber.StatusNoContent)
}

type targetRequest struct {
	Apps   json.RawMessage `json:"apps"`
	Config json.RawMessage `json:"config"`
}

// parse validates a target body: apps required (an apps object per target.ParseApps), config an object
// when present (nil: keep the current one).
func (r targetRequest) parse() (target.Apps, json.RawMessage, error) {
	if len(r.Apps) == 0 || string(r.Apps) == "null" {
		return nil, nil, apierr.Invalid("apps", "required: an object of app id -> app")
	}
	if t := bytes.TrimSpace(r.Apps); t[0] != '{' {
		return nil, nil, apierr.Invalid("apps", "expected an object of app id -> app")
	}
	apps, err := target.ParseApps(r.Apps)
	if err != nil {
		return nil, nil, apierr.Invalid("apps", "%v", err)
	}
	var cfg json.RawMessage
	if t := bytes.TrimSpace(r.Config); len(t) > 0 && string(t) != "null" {
		if t[0] != '{' {
			return nil, nil, apierr.Invalid("config", "must be an object")
		}
		cfg = t
	}
	return apps, cfg, nil
}

// putDeviceTarget: PUT /api/v1/devices/:uuid/target-state.
func (s *Service) putDeviceTarget(c *fiber.Ctx) error {
	id, err := httpio.DeviceUUIDParam(c)
	if err != nil {
		return err
	}
	var req targetRequest
	if err := httpio.DecodeBody(c, &req, false, httpio.DefaultMaxBody); err != nil {
		return err
	}
	apps, cfg, err := req.parse()
	if err != nil {
		return err
	}
	ctx := c.UserContext()
	var written []target.Written
	err = pgx.BeginFunc(ctx, s.cfg.Pool, func(tx pgx.Tx) error {
		var ok bool
		if err := tx.QueryRow(ctx, `SELECT true FROM devices WHERE uuid = $1 AND revoked_at IS NULL FOR SHARE`, id).Scan(&ok); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return apierr.New(apierr.ErrNotFound, "device_not_found", "device %s not found", id)
			}
			return fmt.Errorf("read device %s: %w", id, err)
		}
		written, err = devicestore.WriteTargets(ctx, tx, s.cfg.Subjects, []target.Write{{DeviceUUID: id, Apps: apps, Config: cfg}})
		return err
	})
	if err != nil {
		return err
	}
	devicestore.AnnounceWritten(s.cfg.Targets, written)
	w := written[0]
	return c.JSON(fiber.Map{"uuid": id, "version": w.Version, "etag": devicestore.QuoteETag(w.ETag)})
}

// getDeviceTarget: GET /api/v1/devices/:uuid/target-state (operator view of what the device polls).
func (s *Service) getDeviceTarget(c *fiber.Ctx) error {
	id, err := httpio.DeviceUUIDParam(c)
	if err != nil {
		return err
	}
	var out struct {
		UUID      string          `json:"uuid"`
		Apps      json.RawMessage `json:"apps"`
		Config    json.RawMessage `json:"config"`
		Prefetch  json.RawMessage `json:"prefetch"`
		Version   int64           `json:"version"`
		ETag      string          `json:"etag"`
		UpdatedAt time.Time       `json:"updated_at"`
	}
	var apps, cfg []byte
	err = s.cfg.Pool.QueryRow(c.UserContext(), `SELECT apps, config, prefetch, version, etag, updated_at
		FROM device_target_state WHERE device_uuid = $1`, id).Scan(&apps, &cfg, &out.Prefetch, &out.Version, &out.ETag, &out.UpdatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return apierr.New(apierr.ErrNotFound, "target_not_found", "device %s has no target state", id)
	}
	if err != nil {
		return fmt.Errorf("read target of %s: %w", id, err)
	}
	out.UUID, out.Apps, out.Config, out.ETag = id, apps, cfg, devicestore.QuoteETag(out.ETag)
	return c.JSON(out)
}

// getCurrentState: GET /api/v1/devices/:uuid/current-state.
func (s *Service) getCurrentState(c *fiber.Ctx) error {
	id, err := httpio.DeviceUUIDParam(c)
	if err != nil {
		return err
	}
	var out struct {
		UUID       string          `json:"uuid"`
		Apps       json.RawMessage `json:"apps"`
		Config     json.RawMessage `json:"config"`
		Report     json.RawMessage `json:"report"`
		ReportedAt *time.Time      `json:"reported_at"`
		IsOnline   bool            `json:"is_online"`
		LastSeenAt *time.Time      `json:"last_seen_at"`
	}
	var apps, cfg, rep []byte
	err = s.cfg.Pool.QueryRow(c.UserContext(), `SELECT coalesce(s.apps, '{}'), coalesce(s.config, '{}'),
			coalesce(s.report, '{}'), s.reported_at, d.is_online, d.last_seen_at
		FROM devices d LEFT JOIN device_current_state s ON s.device_uuid = d.uuid WHERE d.uuid = $1`, id).
		Scan(&apps, &cfg, &rep, &out.ReportedAt, &out.IsOnline, &out.LastSeenAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return apierr.New(apierr.ErrNotFound, "device_not_found", "device %s not found", id)
	}
	if err != nil {
		return fmt.Errorf("read current state of %s: %w", id, err)
	}
	out.UUID, out.Apps, out.Config, out.Report = id, apps, cfg, rep
	return c.JSON(out)
}

func fleetParam(c *fiber.Ctx) (string, error) {
	f := strings.Clone(strings.TrimSpace(c.Params("fleet_id")))
	if f == "" || len(f) > devicestore.MaxFleetLen || strings.ContainsAny(f, "\r\n") {
		return "", apierr.Invalid("fleet_id", "1-%d characters", devicestore.MaxFleetLen)
	}
	if err := apierr.CheckText("fleet_id", f); err != nil {
		return "", err
	}
	return f, nil
}

// putFleetTarget: PUT /api/v1/fleets/:fleet_id/target-state, the default target of devices registering
// into the fleet.
func (s *Service) putFleetTarget(c *fiber.Ctx) error {
	fleet, err := fleetParam(c)
	if err != nil {
		return err
	}
	var req targetRequest
	if err := httpio.DecodeBody(c, &req, false, httpio.DefaultMaxBody); err != nil {
		return err
	}
	apps, cfg, err := req.parse()
	if err != nil {
		return err
	}
	appsJSON, err := json.Marshal(apps)
	if err != nil {
		return fmt.Errorf("encode fleet target: %w", err)
	}
	var cfgArg any
	if cfg != nil {
		cfgArg = string(cfg)
	}
	return s.fleetTargetRow(c, s.cfg.Pool.QueryRow(c.UserContext(), `
		INSERT INTO fleet_target_state AS f (fleet_id, apps, config) VALUES ($1, $2::jsonb, coalesce($3::jsonb, '{}'::jsonb))
		ON CONFLICT (fleet_id) DO UPDATE SET apps = EXCLUDED.apps, config = coalesce($3::jsonb, f.config),
			version = f.version + 1, updated_at = now()
		RETURNING fleet_id, apps, config, version, updated_at`, fleet, string(appsJSON), cfgArg), fleet)
}

// getFleetTarget: GET /api/v1/fleets/:fleet_id/target-state.
func (s *Service) getFleetTarget(c *fiber.Ctx) error {
	fleet, err := fleetParam(c)
	if err != nil {
		return err
	}
	return s.fleetTargetRow(c, s.cfg.Pool.QueryRow(c.UserContext(), `SELECT fleet_id, apps, config, version, updated_at
		FROM fleet_target_state WHERE fleet_id = $1`, fleet), fleet)
}

func (s *Service) fleetTargetRow(c *fiber.Ctx, row pgx.Row, fleet string) error {
	var out struct {
		FleetID   string          `json:"fleet_id"`
		Apps      json.RawMessage `json:"apps"`
		Config    json.RawMessage `json:"config"`
		Version   int64           `json:"version"`
		UpdatedAt time.Time       `json:"updated_at"`
	}
	var apps, cfg []byte
	err := row.Scan(&out.FleetID, &apps, &cfg, &out.Version, &out.UpdatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return apierr.New(apierr.ErrNotFound, "fleet_not_found", "fleet %s has no default target state", fleet)
	}
	if err != nil {
		return fmt.Errorf("fleet %s target state: %w", fleet, err)
	}
	out.Apps, out.Config = apps, cfg
	return c.JSON(out)
}
