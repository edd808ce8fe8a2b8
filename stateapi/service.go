// Package stateapi serves fleetshift's device API (registration, ETag-polled target state, current-state
// reports) and the operator API (devices, target state, fleets, policies, provisioning keys, tokens and the
// read side of rollouts), per docs/contract.md "HTTP".
//
// The device poll path answers an unchanged poll from memory (invariant 7): a per-device cache holds the
// key hash, ETag and body, kept fresh by the target messages every target write publishes.
package stateapi

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/auth"
	"github.com/fleetshift/fleetshift/streams"
)

// Config configures the service.
type Config struct {
	Pool     *pgxpool.Pool
	JS       jetstream.JetStream
	NC       *nats.Conn
	Subjects streams.Subjects
	Log      zerolog.Logger

	// AdminToken is the bootstrap admin token (ignored when Operators is set).
	AdminToken string
	// Operators authenticates operator tokens; nil builds one from Pool and AdminToken. Share one with
	// NATS control so a revocation there applies here at once.
	Operators *auth.Operators
	// PublicNATSURL is the NATS URL handed to devices at registration.
	PublicNATSURL string
	// CacheTTL bounds how long a cached device entry answers polls without a database check, as a
	// backstop to the target messages that keep it fresh (default 10 minutes).
	CacheTTL time.Duration
	// CacheMaxBody is the largest target body kept in memory per device (default 16 KiB); larger ones
	// are served from the database on a 200, and still answered from memory on a 304.
	CacheMaxBody int
	// MaxPageSize caps list pages (default 500).
	MaxPageSize int
}

// Service is the state and admin API.
type Service struct {
	cfg   Config
	log   zerolog.Logger
	ops   *auth.Operators
	cache *deviceCache
}

// New validates cfg and returns the service. Register its routes; Run keeps the device cache fresh (until
// Run is running, every poll is checked against the database).
func New(cfg Config) (*Service, error) {
	if cfg.Pool == nil {
		return nil, errors.New("stateapi: Pool is required")
	}
	if cfg.JS == nil || cfg.NC == nil {
		return nil, errors.New("stateapi: NATS (JS and NC) is required")
	}
	if cfg.Subjects.Prefix == "" {
		cfg.Subjects = streams.New("")
	}
	cfg.CacheTTL = cmp.Or(cfg.CacheTTL, 10*time.Minute)
	cfg.CacheMaxBody = cmp.Or(cfg.CacheMaxBody, 16<<10)
	cfg.MaxPageSize = cmp.Or(cfg.MaxPageSize, 500)
	ops := cfg.Operators
	if ops == nil {
		ops = auth.NewOperators(cfg.Pool, cfg.AdminToken, cfg.Log)
	}
	return &Service{cfg: cfg, log: cfg.Log, ops: ops, cache: newDeviceCache(cfg.CacheTTL, cfg.CacheMaxBody)}, nil
}

// Operators returns the operator authenticator the service checks tokens with.
func (s *Service) Operators() *auth.Operators { return s.ops }

// Run subscribes to every device's target subject and to device revocations, keeping the poll cache
// fresh, until ctx ends. It returns nil on a clean stop.
func (s *Service) Run(ctx context.Context) error {
	targets, err := s.cfg.NC.Subscribe(s.cfg.Subjects.DeviceTargetAll(), s.onTarget)
	if err != nil {
		return fmt.Errorf("subscribe to device targets: %w", err)
	}
	// A target write fans out to every device of a batch at once; never drop one for a slow handler.
	_ = targets.SetPendingLimits(-1, -1)
	revoked, err := s.cfg.NC.Subscribe(s.cfg.Subjects.DeviceRevoked(), func(m *nats.Msg) {
		s.cache.evict(string(m.Data))
	})
	if err != nil {
		_ = targets.Unsubscribe()
		return fmt.Errorf("subscribe to device revocations: %w", err)
	}
	if err := s.cfg.NC.FlushTimeout(5 * time.Second); err != nil {
		s.log.Warn().Err(err).Msg("flush subscriptions")
	}
	s.cache.setLive(true)
	s.log.Info().Msg("device poll cache live")

	// Messages missed while disconnected, or dropped, would leave entries stale: start over then.
	reconnects := s.cfg.NC.Stats().Reconnects
	dropped, _ := targets.Dropped()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			s.cache.setLive(false)
			_ = targets.Unsubscribe()
			_ = revoked.Unsubscribe()
			return nil
		case <-tick.C:
			if !s.cfg.NC.IsConnected() {
				// Target messages cannot arrive: answer from the database until they can.
				if s.cache.live.Load() {
					s.log.Warn().Msg("device poll cache off: NATS disconnected")
					s.cache.setLive(false)
				}
				continue
			}
			r := s.cfg.NC.Stats().Reconnects
			d, _ := targets.Dropped()
			if r != reconnects || d != dropped {
				s.log.Warn().Uint64("reconnects", r).Int("dropped", d).Msg("device poll cache flushed: target messages may have been missed")
				s.cache.flush()
				reconnects, dropped = r, d
			}
			if !s.cache.live.Load() {
				s.log.Info().Msg("device poll cache live again")
				s.cache.setLive(true)
			}
		}
	}
}

// Register adds every route to r (full paths, /api/v1/...).
func (s *Service) Register(r fiber.Router) {
	read := s.ops.Require(auth.ScopeRead)
	operate := s.ops.Require(auth.ScopeOperate)
	admin := s.ops.Require(auth.ScopeAdmin)

	r.Get("/healthz", func(c *fiber.Ctx) error { return c.JSON(fiber.Map{"ok": true}) })
	r.Get("/readyz", s.readyz)

	// Devices (their own keys).
	r.Post("/api/v1/device/register", s.register)
	r.Get("/api/v1/device/:uuid/state", s.deviceState)
	r.Patch("/api/v1/device/state", s.reportState)

	// Operators.
	r.Post("/api/v1/devices", operate, s.createDevice)
	r.Get("/api/v1/devices", read, s.listDevices)
	r.Get("/api/v1/devices/:uuid", read, s.getDevice)
	r.Delete("/api/v1/devices/:uuid", operate, s.revokeDevice)
	r.Put("/api/v1/devices/:uuid/target-state", operate, s.putDeviceTarget)
	r.Get("/api/v1/devices/:uuid/target-state", read, s.getDeviceTarget)
	r.Get("/api/v1/devices/:uuid/current-state", read, s.getCurrentState)
	r.Put("/api/v1/fleets/:fleet_id/target-state", operate, s.putFleetTarget)
	r.Get("/api/v1/fleets/:fleet_id/target-state", read, s.getFleetTarget)

	r.Post("/api/v1/provisioning-keys", admin, s.createProvisioningKey)
	r.Get("/api/v1/provisioning-keys", admin, s.listProvisioningKeys)
	r.Delete("/api/v1/provisioning-keys/:id", admin, s.revokeProvisioningKey)
	r.Post("/api/v1/tokens", admin, s.createToken)
	r.Get("/api/v1/tokens", admin, s.listTokens)
	r.Delete("/api/v1/tokens/:id", admin, s.revokeToken)

	r.Get("/api/v1/image-policies", read, s.listPolicies)
	r.Post("/api/v1/image-policies", operate, s.createPolicy)
	r.Get("/api/v1/image-policies/:id", read, s.getPolicy)
	r.Put("/api/v1/image-policies/:id", operate, s.replacePolicy)
	r.Delete("/api/v1/image-policies/:id", operate, s.deletePolicy)

	r.Post("/api/v1/rollouts/preview", read, s.preview)
	r.Get("/api/v1/rollouts", read, s.listRollouts)
	r.Get("/api/v1/rollouts/:id", read, s.getRollout)
	r.Get("/api/v1/rollouts/:id/devices", read, s.listRolloutDevices)
	r.Get("/api/v1/rollouts/:id/events", read, s.listRolloutEvents)
}

func (s *Service) readyz(c *fiber.Ctx) error {
	ctx, cancel := context.WithTimeout(c.UserContext(), 2*time.Second)
	defer cancel()
	if err := s.cfg.Pool.Ping(ctx); err != nil {
		return apierr.New(apierr.ErrUnavailable, "database_unreachable", "database unreachable")
	}
	if !s.cfg.NC.IsConnected() {
		return apierr.New(apierr.ErrUnavailable, "nats_unreachable", "NATS unreachable")
	}
	return c.JSON(fiber.Map{"ok": true})
}

// onTarget handles a target message: its device's cached entry becomes stale when the version is newer.
func (s *Service) onTarget(m *nats.Msg) {
	if uuid, ok := s.cfg.Subjects.DeviceFromSubject(m.Subject); ok && !s.cache.has(uuid) {
		return // not polled here: nothing to keep fresh, and no need to decode
	}
	var t streams.TargetV1
	if err := json.Unmarshal(m.Data, &t); err != nil {
		// Unreadable: drop the entry rather than risk answering 304 for a changed target.
		if uuid, ok := s.cfg.Subjects.DeviceFromSubject(m.Subject); ok {
			s.cache.evict(uuid)
		}
		return
	}
	for uuid, dt := range t {
		s.cache.announce(uuid, dt.Version)
	}
}
