// Package stateapi serves fleetshift's device API and operator API, per docs/contract.md "HTTP". The two
// are separate packages so the hot path can be read alone:
//
//   - deviceapi: registration, the ETag-polled target state (answered from memory when unchanged),
//     current-state reports (published on the REPORTS stream; healthwatch stores them);
//   - operatorapi: devices, target states, fleets, policies, provisioning keys, tokens, the read side of
//     rollouts and the preview.
//
// This package wires them together (one poll cache learns of the operator API's target writes at once)
// and serves /healthz and /readyz.
package stateapi

import (
	"context"
	"errors"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/auth"
	"github.com/fleetshift/fleetshift/stateapi/deviceapi"
	"github.com/fleetshift/fleetshift/stateapi/operatorapi"
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
	// MaxPageSize caps list pages (default 500).
	MaxPageSize int
	// RequestTimeout bounds each request's database work, a wait for a pool connection included
	// (default 10s); past it the answer is 503 unavailable + Retry-After.
	RequestTimeout time.Duration
	// Device tunes the device API (cache, limits); its Pool, NATS, Subjects, Log and PublicNATSURL are
	// taken from the fields above.
	Device deviceapi.Config
}

// Service is the state and admin API.
type Service struct {
	cfg      Config
	ops      *auth.Operators
	devices  *deviceapi.Service
	operator *operatorapi.Service
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
	ops := cfg.Operators
	if ops == nil {
		ops = auth.NewOperators(cfg.Pool, cfg.AdminToken, cfg.Log)
	}
	dc := cfg.Device
	dc.Pool, dc.JS, dc.NC, dc.Subjects, dc.Log, dc.PublicNATSURL = cfg.Pool, cfg.JS, cfg.NC, cfg.Subjects, cfg.Log, cfg.PublicNATSURL
	if dc.RequestTimeout == 0 {
		dc.RequestTimeout = cfg.RequestTimeout
	}
	devices, err := deviceapi.New(dc)
	if err != nil {
		return nil, err
	}
	operator, err := operatorapi.New(operatorapi.Config{Pool: cfg.Pool, NC: cfg.NC, Subjects: cfg.Subjects, Log: cfg.Log,
		Operators: ops, Targets: devices, MaxPageSize: cfg.MaxPageSize, RequestTimeout: cfg.RequestTimeout})
	if err != nil {
		return nil, err
	}
	return &Service{cfg: cfg, ops: ops, devices: devices, operator: operator}, nil
}

// Operators returns the operator authenticator the service checks tokens with.
func (s *Service) Operators() *auth.Operators { return s.ops }

// Devices returns the device API.
func (s *Service) Devices() *deviceapi.Service { return s.devices }

// Run keeps the device API's poll cache fresh until ctx ends (deviceapi.Service.Run).
func (s *Service) Run(ctx context.Context) error { return s.devices.Run(ctx) }

// Register adds every route to r (full paths, /api/v1/...).
func (s *Service) Register(r fiber.Router) {
	r.Get("/healthz", func(c *fiber.Ctx) error { return c.JSON(fiber.Map{"ok": true}) })
	r.Get("/readyz", s.readyz)
	s.devices.Register(r)
	s.operator.Register(r)
}

func (s *Service) readyz(c *fiber.Ctx) error {
	ctx, cancel := context.WithTimeout(c.UserContext(), 2*time.Second)
	defer cancel()
	if err := s.cfg.Pool.Ping(ctx); err != nil {
		return &apierr.Error{Kind: apierr.ErrUnavailable, Code: "database_unreachable", Message: "database unreachable",
			RetryAfter: apierr.DefaultRetryAfter}
	}
	if !s.cfg.NC.IsConnected() {
		return apierr.New(apierr.ErrUnavailable, "nats_unreachable", "NATS unreachable")
	}
	return c.JSON(fiber.Map{"ok": true})
}
