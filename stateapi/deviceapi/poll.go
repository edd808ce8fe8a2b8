package deviceapi

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
	"github.com/jackc/pgx/v5"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/target"
	"github.com/fleetshift/fleetshift/stateapi/internal/devicestore"
	"github.com/fleetshift/fleetshift/stateapi/internal/httpio"
	"github.com/fleetshift/fleetshift/streams"
)

var (
	errDeviceUnauthorized = apierr.New(apierr.ErrUnauthorized, "unauthorized", "missing, unknown or revoked device key")
	errOtherDevice        = apierr.New(apierr.ErrForbidden, "forbidden", "this device key opens only its own device")
)

// deviceState: GET /api/v1/device/:uuid/state. An unchanged poll is answered from the cache.
//
// The unchanged poll allocates nothing of its own: the uuid is looked up in place (Fiber's buffer) and
// copied only when a database read may cache it.
func (s *Service) deviceState(c *fiber.Ctx) error {
	id := c.Params("uuid")
	if !devicestore.ValidUUID(id) {
		_, err := httpio.DeviceUUIDParam(c)
		return err
	}
	key := httpio.DeviceKey(c)
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
	// From here the poll reads the database: bounded.
	if err := s.coldPolls.acquire(); err != nil {
		return err
	}
	defer s.coldPolls.release()
	id = strings.Clone(id) // it may become a cache key
	ctx, cancel := context.WithTimeout(c.UserContext(), s.cfg.RequestTimeout)
	defer cancel()
	f := s.cache.begin(id)
	defer s.cache.end(f)
	var (
		stored         []byte
		revoked        bool
		apps, cfg      []byte
		prefetch       []byte
		version        int64
		etag           string
		deviceNotFound bool
	)
	err := s.cfg.Pool.QueryRow(ctx, `SELECT d.api_key_hash, d.revoked_at IS NOT NULL, t.apps, t.config, t.prefetch,
			coalesce(t.version, 0), coalesce(t.etag, '0')
		FROM devices d LEFT JOIN device_target_state t ON t.device_uuid = d.uuid WHERE d.uuid = $1`, id).
		Scan(&stored, &revoked, &apps, &cfg, &prefetch, &version, &etag)
	if errors.Is(err, pgx.ErrNoRows) {
		deviceNotFound = true
	} else if err != nil {
		return fmt.Errorf("read target of %s: %w", id, err)
	}
	if deviceNotFound || revoked || !bytes.Equal(stored, hash[:]) {
		return s.refuseKey(ctx, hash)
	}
	body, err := targetBody(id, apps, cfg, prefetch, version)
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

// targetBody renders the device state document: {"<uuid>": {"apps", "config", "prefetch"?, "version"}}
// ("prefetch" only when it holds an entry, as in the target messages).
func targetBody(uuid string, apps, cfg, prefetch []byte, version int64) ([]byte, error) {
	if len(apps) == 0 {
		apps = []byte("{}")
	}
	if len(cfg) == 0 {
		cfg = []byte("{}")
	}
	if !target.HasPrefetch(prefetch) {
		prefetch = nil
	}
	b, err := json.Marshal(streams.TargetV1{uuid: {Apps: apps, Config: cfg, Prefetch: prefetch, Version: version}})
	if err != nil {
		return nil, fmt.Errorf("encode target of %s: %w", uuid, err)
	}
	return b, nil
}
