// Package deviceapi is the device-facing HTTP API, the hot path: registration with a fleet provisioning
// key, the ETag-polled target state, and current-state reports. It can be read on its own; the operator
// API lives in package operatorapi.
//
// An unchanged poll is answered from memory (no database query): a per-device cache holds the key hash,
// ETag and body, kept fresh by the target messages every target write publishes. Reports are not written
// here: they are published on the REPORTS stream exactly as devices publish them over NATS, and healthwatch
// alone stores them (device_current_state).
//
// Load is bounded at the edge (docs/reliability.md, "Limits"): registrations and database-reading polls
// in flight are capped (503 overloaded + Retry-After beyond), each device's reports are rate-limited (429 +
// Retry-After), and report bodies are size-capped (413).
package deviceapi

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

	"github.com/fleetshift/fleetshift/stateapi/internal/httpio"
	"github.com/fleetshift/fleetshift/streams"
)

// Routes.
const (
	RegisterPath = "/api/v1/device/register"
	StatePath    = "/api/v1/device/:uuid/state"
	ReportPath   = "/api/v1/device/state"
)

// Defaults of the limits (Config).
const (
	DefaultMaxReportBody      = 64 << 10
	DefaultMaxRegisterBody    = 16 << 10
	DefaultMaxRegistrations   = 64
	DefaultMaxColdPolls       = 256
	DefaultReportBurst        = 20
	DefaultReportInterval     = time.Second
	DefaultOverloadRetryAfter = 2 * time.Second
)

// Config configures the device API.
type Config struct {
	Pool     *pgxpool.Pool
	JS       jetstream.JetStream
	NC       *nats.Conn
	Subjects streams.Subjects
	Log      zerolog.Logger

	// PublicNATSURL is the NATS URL handed to devices at registration.
	PublicNATSURL string
	// CacheTTL bounds how long a cached device entry answers polls without a database check, as a
	// backstop to the target messages that keep it fresh (default 10 minutes).
	CacheTTL time.Duration
	// CacheMaxBody is the largest target body kept in memory per device (default 16 KiB); larger ones
	// are served from the database on a 200, and still answered from memory on a 304.
	CacheMaxBody int

	// MaxReportBody is the largest report body in bytes (default 64 KiB); larger: 413.
	MaxReportBody int
	// MaxRegistrations caps registrations in flight (default 64); beyond: 503 overloaded + Retry-After.
	MaxRegistrations int
	// MaxColdPolls caps polls in flight that read the database (cache misses; default 256); beyond:
	// 503 overloaded + Retry-After. Polls answered from memory are never refused.
	MaxColdPolls int
	// ReportBurst and ReportInterval rate-limit each device's reports: a burst of ReportBurst, then one
	// per ReportInterval (defaults 20 and 1s); beyond: 429 + Retry-After.
	ReportBurst    int
	ReportInterval time.Duration
	// OverloadRetryAfter is the Retry-After sent with 503 overloaded (default 2s).
	OverloadRetryAfter time.Duration
	// RequestTimeout bounds a request's database work, a wait for a pool connection included (default
	// httpio.DefaultRequestTimeout); past it: 503 unavailable + Retry-After.
	RequestTimeout time.Duration
}

// Service is the device API.
type Service struct {
	cfg           Config
	log           zerolog.Logger
	cache         *deviceCache
	registrations *limiter
	coldPolls     *limiter
	reports       *rateLimiter
}

// New validates cfg and returns the service. Register its routes; Run keeps the poll cache fresh (until
// Run is running, every poll is checked against the database).
func New(cfg Config) (*Service, error) {
	if cfg.Pool == nil {
		return nil, errors.New("deviceapi: Pool is required")
	}
	if cfg.JS == nil || cfg.NC == nil {
		return nil, errors.New("deviceapi: NATS (JS and NC) is required")
	}
	if cfg.Subjects.Prefix == "" {
		cfg.Subjects = streams.New("")
	}
	cfg.CacheTTL = cmp.Or(cfg.CacheTTL, 10*time.Minute)
	cfg.CacheMaxBody = cmp.Or(cfg.CacheMaxBody, 16<<10)
	cfg.MaxReportBody = cmp.Or(cfg.MaxReportBody, DefaultMaxReportBody)
	cfg.MaxRegistrations = cmp.Or(cfg.MaxRegistrations, DefaultMaxRegistrations)
	cfg.MaxColdPolls = cmp.Or(cfg.MaxColdPolls, DefaultMaxColdPolls)
	cfg.ReportBurst = cmp.Or(cfg.ReportBurst, DefaultReportBurst)
	cfg.ReportInterval = cmp.Or(cfg.ReportInterval, DefaultReportInterval)
	cfg.OverloadRetryAfter = cmp.Or(cfg.OverloadRetryAfter, DefaultOverloadRetryAfter)
	cfg.RequestTimeout = cmp.Or(cfg.RequestTimeout, httpio.DefaultRequestTimeout)
	return &Service{
		cfg:           cfg,
		log:           cfg.Log,
		cache:         newDeviceCache(cfg.CacheTTL, cfg.CacheMaxBody),
		registrations: newLimiter("registrations", cfg.MaxRegistrations, cfg.OverloadRetryAfter),
		coldPolls:     newLimiter("polls reading the database", cfg.MaxColdPolls, cfg.OverloadRetryAfter),
		reports:       newRateLimiter(cfg.ReportBurst, cfg.ReportInterval),
	}, nil
}

// Register adds the device routes to r (full paths).
func (s *Service) Register(r fiber.Router) {
	r.Post(RegisterPath, s.register)
	r.Get(StatePath, s.deviceState)
	r.Patch(ReportPath, s.reportState)
}

// Announce records that uuid's target reached version (this replica wrote it): its cached entry stops
// answering for older versions at once.
func (s *Service) Announce(uuid string, version int64) { s.cache.announce(uuid, version) }

// Evict forgets uuid's cached entry (revoked).
func (s *Service) Evict(uuid string) { s.cache.evict(uuid) }

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
		case now := <-tick.C:
			s.reports.prune(now)
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
