// Package operatorapi is the operator-facing HTTP API: devices, target states, fleet defaults,
// provisioning keys, tokens, image policies, the read side of rollouts and the rollout preview. Every
// route needs an operator token (scopes read < operate < admin). The device API (the hot path) lives in
// package deviceapi.
//
// Input is checked at the edge: every string is valid UTF-8 without NUL, every number fits its column,
// bodies and lists are bounded (docs/reliability.md, "Limits"); a refusal is a 4xx naming the field.
package operatorapi

import (
	"cmp"
	"errors"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/fleetshift/fleetshift/shared/auth"
	"github.com/fleetshift/fleetshift/stateapi/internal/devicestore"
	"github.com/fleetshift/fleetshift/stateapi/internal/httpio"
	"github.com/fleetshift/fleetshift/streams"
)

// Config configures the operator API.
type Config struct {
	Pool     *pgxpool.Pool
	NC       *nats.Conn
	Subjects streams.Subjects
	Log      zerolog.Logger
	// Operators authenticates operator tokens. Required.
	Operators *auth.Operators
	// Targets learns of target writes and revocations at once (the device API's poll cache); nil: only
	// through the target messages and revocation announcements.
	Targets devicestore.Announcer
	// MaxPageSize caps list pages (default 500).
	MaxPageSize int
	// RequestTimeout bounds each request's database work, a wait for a pool connection included
	// (default httpio.DefaultRequestTimeout); past it: 503 unavailable + Retry-After.
	RequestTimeout time.Duration
}

// Service is the operator API.
type Service struct {
	cfg Config
	log zerolog.Logger
	ops *auth.Operators
}

// New validates cfg and returns the service.
func New(cfg Config) (*Service, error) {
	if cfg.Pool == nil {
		return nil, errors.New("operatorapi: Pool is required")
	}
	if cfg.NC == nil {
		return nil, errors.New("operatorapi: NC is required")
	}
	if cfg.Operators == nil {
		return nil, errors.New("operatorapi: Operators is required")
	}
	if cfg.Subjects.Prefix == "" {
		cfg.Subjects = streams.New("")
	}
	cfg.MaxPageSize = cmp.Or(cfg.MaxPageSize, 500)
	cfg.RequestTimeout = cmp.Or(cfg.RequestTimeout, httpio.DefaultRequestTimeout)
	return &Service{cfg: cfg, log: cfg.Log, ops: cfg.Operators}, nil
}

// Register adds the operator routes to r (full paths).
func (s *Service) Register(r fiber.Router) {
	read := s.ops.Require(auth.ScopeRead)
	operate := s.ops.Require(auth.ScopeOperate)
	admin := s.ops.Require(auth.ScopeAdmin)
	// Every route: a deadline first (token checks read the database too), then the scope.
	deadline := httpio.Deadline(s.cfg.RequestTimeout)

	r.Post("/api/v1/devices", deadline, operate, s.createDevice)
	r.Get("/api/v1/devices", deadline, read, s.listDevices)
	r.Get("/api/v1/devices/:uuid", deadline, read, s.getDevice)
	r.Delete("/api/v1/devices/:uuid", deadline, operate, s.revokeDevice)
	r.Put("/api/v1/devices/:uuid/target-state", deadline, operate, s.putDeviceTarget)
	r.Get("/api/v1/devices/:uuid/target-state", deadline, read, s.getDeviceTarget)
	r.Get("/api/v1/devices/:uuid/current-state", deadline, read, s.getCurrentState)
	r.Put("/api/v1/fleets/:fleet_id/target-state", deadline, operate, s.putFleetTarget)
	r.Get("/api/v1/fleets/:fleet_id/target-state", deadline, read, s.getFleetTarget)

	r.Post("/api/v1/provisioning-keys", deadline, admin, s.createProvisioningKey)
	r.Get("/api/v1/provisioning-keys", deadline, admin, s.listProvisioningKeys)
	r.Delete("/api/v1/provisioning-keys/:id", deadline, admin, s.revokeProvisioningKey)
	r.Post("/api/v1/tokens", deadline, admin, s.createToken)
	r.Get("/api/v1/tokens", deadline, admin, s.listTokens)
	r.Delete("/api/v1/tokens/:id", deadline, admin, s.revokeToken)

	r.Get("/api/v1/image-policies", deadline, read, s.listPolicies)
	r.Post("/api/v1/image-policies", deadline, operate, s.createPolicy)
	r.Post("/api/v1/image-policies/replay", deadline, read, s.replayPolicy)
	r.Post("/api/v1/image-policies/:id/replay", deadline, read, s.replayStoredPolicy)
	r.Get("/api/v1/image-policies/:id", deadline, read, s.getPolicy)
	r.Put("/api/v1/image-policies/:id", deadline, operate, s.replacePolicy)
	r.Delete("/api/v1/image-policies/:id", deadline, operate, s.deletePolicy)

	r.Post("/api/v1/rollouts/preview", deadline, read, s.preview)
	r.Get("/api/v1/rollouts", deadline, read, s.listRollouts)
	r.Get("/api/v1/rollouts/:id", deadline, read, s.getRollout)
	r.Get("/api/v1/rollouts/:id/devices", deadline, read, s.listRolloutDevices)
	r.Get("/api/v1/rollouts/:id/devices/:uuid", deadline, read, s.getRolloutDevice)
	r.Get("/api/v1/rollouts/:id/events", deadline, read, s.listRolloutEvents)
}
