// Package server assembles fleetshift: configuration, database, NATS (embedded or external), streams,
// the services, the outbox relay and one HTTP listener. `serve` runs every role; the single-service
// commands run one. End-to-end tests start the same assembly in-process.
package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/jackc/pgx/v5/pgxpool"
	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/fleetshift/fleetshift/fleetshift/internal/localpg"
	"github.com/fleetshift/fleetshift/fleetshift/internal/metrics"
	"github.com/fleetshift/fleetshift/fleetshift/internal/secrets"
	"github.com/fleetshift/fleetshift/migrations"
	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/auth"
	"github.com/fleetshift/fleetshift/shared/broker"
	"github.com/fleetshift/fleetshift/shared/config"
	"github.com/fleetshift/fleetshift/shared/logging"
	"github.com/fleetshift/fleetshift/shared/natsauth"
	"github.com/fleetshift/fleetshift/shared/outbox"
	"github.com/fleetshift/fleetshift/shared/pg"
	"github.com/fleetshift/fleetshift/streams"
)

// Roles a process can run.
const (
	RoleIngest      = "ingest"
	RolePlanner     = "planner"
	RoleDispatcher  = "dispatcher"
	RoleHealthwatch = "healthwatch"
	RoleStateAPI    = "stateapi"
	RoleNotifier    = "notifier"
)

// AllRoles is what `serve` runs.
var AllRoles = []string{RoleIngest, RolePlanner, RoleDispatcher, RoleHealthwatch, RoleStateAPI, RoleNotifier}

// Options configure a server.
type Options struct {
	Config config.Config
	Log    zerolog.Logger
	// Out receives the start-up banner (where to send webhooks, tokens generated on first start).
	Out io.Writer
	// Roles to run; empty means all (serve).
	Roles []string
	// EmbedNATS runs an embedded NATS server when Config.NATSURL is empty (serve). Single services
	// require NATS_URL.
	EmbedNATS bool
	// DefaultDatabase lets serve fall back to the local PostgreSQL when DATABASE_URL is unset.
	DefaultDatabase bool
	// Tune adjusts service timing (tests).
	Tune Tuning
}

// Tuning holds intervals that tests shorten.
type Tuning struct {
	// TickInterval is how often durable timers (batch delays, health timeouts) are checked.
	TickInterval time.Duration
	// Now is the clock healthwatch and the dispatcher judge maintenance windows by (nil: time.Now).
	Now func() time.Time
	// WindowChunk caps the devices one dispatch command schedules for a scheduled rollout (0: default).
	WindowChunk int
}

// Server is a running fleetshift process.
type Server struct {
	// HTTPURL is the base URL of the HTTP listener, e.g. http://127.0.0.1:3001.
	HTTPURL string
	// NATSURL is the URL services use; PublicNATSURL is handed to devices.
	NATSURL, PublicNATSURL string
	// AdminToken and WebhookToken are the bootstrap secrets in force.
	AdminToken, WebhookToken string
	DatabaseURL              string

	Pool *pgxpool.Pool
	NC   *nats.Conn
	// SystemNC is the connection to the NATS system account: the embedded server's, or an external
	// cluster's with FLEETSHIFT_NATS_SYSTEM_USER (nil otherwise).
	SystemNC *nats.Conn
	JS       jetstream.JetStream
	Subjects streams.Subjects
	Embedded *broker.Embedded
	Metrics  *metrics.Registry
	// LocalPG is the PostgreSQL cluster serve started under the data dir (nil when it uses another).
	LocalPG *localpg.Cluster

	log      zerolog.Logger
	app      *fiber.App
	listener net.Listener
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	errMu    sync.Mutex
	err      error
	stopOnce sync.Once
	timeout  time.Duration
	done     chan struct{}

	natsIssuerSeed string
}

// Start brings the server up and returns once it serves HTTP. Stop it with Shutdown. A start-up error is
// one line saying what failed and what to do; whatever was started before it is stopped again.
func Start(ctx context.Context, o Options) (_ *Server, err error) {
	cfg := o.Config
	log := o.Log
	out := cmp.Or[io.Writer](o.Out, io.Discard)
	roles := o.Roles
	if len(roles) == 0 {
		roles = AllRoles
	}
	s := &Server{log: log, timeout: cmp.Or(cfg.ShutdownTimeout, 15*time.Second), done: make(chan struct{})}
	defer func() {
		if err != nil {
			s.Shutdown()
		}
	}()

	// Settings first, so a bad environment fails before anything starts.
	if cfg.DatabaseURL == "" && !o.DefaultDatabase {
		return nil, errors.New("DATABASE_URL is not set: single services need the PostgreSQL that `fleetshift serve` or `fleetshift migrate` uses")
	}
	if cfg.DatabaseURL != "" {
		if err := checkDatabaseURL(cfg.DatabaseURL); err != nil {
			return nil, err
		}
	}
	if cfg.NATSURL == "" && !o.EmbedNATS {
		return nil, errors.New("NATS_URL is not set: single services need an external NATS (only `fleetshift serve` embeds one)")
	}
	toks, err := bootstrapTokens(cfg, roles, !o.EmbedNATS)
	if err != nil {
		return nil, err
	}
	s.AdminToken, s.WebhookToken = toks.admin.Secret, toks.webhook.Secret

	// The HTTP port next: a busy port is the commonest start-up failure, and cheap to find out.
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return nil, listenError(cfg.HTTPAddr, err)
	}
	s.listener = newRetryListener(ln, log)

	// Database.
	dbURL := cfg.DatabaseURL
	if dbURL == "" {
		if dbURL, err = s.defaultDatabase(ctx, cfg); err != nil {
			return nil, err
		}
	}
	if err := pg.EnsureDatabase(ctx, dbURL); err != nil {
		return nil, databaseError(dbURL, cfg.DatabaseURL == "", err)
	}
	if err := migrations.ApplyURL(ctx, dbURL); err != nil {
		return nil, fmt.Errorf("migrate %s: %w", pg.Redact(dbURL), err)
	}
	s.DatabaseURL = dbURL
	if s.Pool, err = pg.Connect(ctx, dbURL); err != nil {
		return nil, databaseError(dbURL, cfg.DatabaseURL == "", err)
	}

	// NATS.
	creds := broker.Credentials{User: cfg.NATSUser, Password: cfg.NATSPassword, Token: cfg.NATSToken, CredsFile: cfg.NATSCreds}
	s.NATSURL = cfg.NATSURL
	if s.NATSURL == "" {
		svcPass, err := secrets.Ensure(cfg.DataDir, "nats-service-password", "")
		if err != nil {
			return nil, err
		}
		issuer, err := secrets.EnsureWith(cfg.DataDir, "nats-issuer.seed", cfg.NATSIssuerSeed, natsauth.NewIssuer)
		if err != nil {
			return nil, err
		}
		s.natsIssuerSeed = issuer.Secret
		hook, err := natsauth.Configure(issuer.Secret, broker.ServiceUser, broker.SystemUser)
		if err != nil {
			return nil, err
		}
		s.Embedded, err = broker.StartEmbedded(broker.EmbeddedConfig{
			Addr:            cfg.NATSAddr,
			FallbackOnBusy:  true,
			StoreDir:        filepath.Join(cfg.DataDir, "jetstream"),
			ServicePassword: svcPass.Secret,
			Configure:       hook,
		})
		if err != nil {
			return nil, err
		}
		s.NATSURL = s.Embedded.ClientURL()
		creds = broker.Credentials{User: broker.ServiceUser, Password: svcPass.Secret}
		if s.Embedded.FellBack {
			log.Warn().Str("configured", cfg.NATSAddr).Str("using", s.NATSURL).
				Msg("embedded NATS: configured port is busy (another NATS server?); using a free port instead")
		}
	}
	s.PublicNATSURL = cmp.Or(cfg.PublicNATSURL, s.NATSURL)
	if s.natsIssuerSeed == "" {
		s.natsIssuerSeed = cfg.NATSIssuerSeed // an external server configured for our auth callout
	}
	if s.NC, err = broker.Connect(s.NATSURL, "fleetshift", creds); err != nil {
		return nil, natsError(s.NATSURL, err)
	}
	// Device presence: connect and disconnect advisories live in the system account, reached through
	// the embedded server's own system user or, on an external cluster, the one configured.
	switch {
	case s.Embedded != nil:
		if s.SystemNC, err = broker.Connect(s.NATSURL, "fleetshift-presence",
			broker.Credentials{User: broker.SystemUser, Password: creds.Password}); err != nil {
			return nil, natsError(s.NATSURL, err)
		}
	case cfg.NATSSystemUser != "" && slices.Contains(roles, RoleHealthwatch):
		if s.SystemNC, err = broker.Connect(s.NATSURL, "fleetshift-presence",
			broker.Credentials{User: cfg.NATSSystemUser, Password: cfg.NATSSystemPassword}); err != nil {
			return nil, fmt.Errorf("system account user %s (FLEETSHIFT_NATS_SYSTEM_USER): %w", cfg.NATSSystemUser, natsError(s.NATSURL, err))
		}
	}
	if s.JS, err = jetstream.New(s.NC); err != nil {
		return nil, fmt.Errorf("open jetstream: %w", err)
	}
	s.Subjects = streams.New(cfg.SubjectPrefix)
	if err := s.Subjects.Ensure(ctx, s.JS, streams.Options{Replicas: cfg.StreamReplicas}); err != nil {
		return nil, err
	}

	// HTTP app and services.
	s.app = fiber.New(fiber.Config{
		ErrorHandler: func(c *fiber.Ctx, err error) error {
			// Internal errors are hidden from the client; log them so a 500 always leaves a trace.
			if status := apierr.Status(err); status >= 500 && !isFiberClientError(err) {
				log.Error().Err(err).Str("method", c.Method()).Str("path", c.Path()).Int("status", status).Msg("request failed")
			}
			return apierr.FiberErrorHandler(c, err)
		},
		DisableStartupMessage: true,
		BodyLimit:             8 << 20,
		ReadTimeout:           30 * time.Second,
		WriteTimeout:          30 * time.Second,
		IdleTimeout:           120 * time.Second,
	})
	s.Metrics = metrics.New(s.Pool, s.JS, s.Subjects, logging.Component(log, "metrics"))
	s.app.Use(s.Metrics.Middleware())
	s.app.Get("/metrics", s.Metrics.Handler())
	s.registerHealth(s.app) // before the services' routes: every process answers them the same way
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel
	deps := Deps{Metrics: s.Metrics, Pool: s.Pool, NC: s.NC, SystemNC: s.SystemNC, JS: s.JS, Subjects: s.Subjects, Log: log, Config: cfg,
		WebhookToken: s.WebhookToken, PublicNATSURL: s.PublicNATSURL, Tune: o.Tune,
		Operators: auth.NewOperators(s.Pool, s.AdminToken, logging.Component(log, "auth"))}
	runners, err := buildServices(deps, s.app, roles)
	if err != nil {
		return nil, err
	}
	if err := mountConsole(s.app, deps, roles); err != nil {
		return nil, err
	}
	var calloutReady <-chan struct{}
	if s.natsIssuerSeed != "" && slices.Contains(roles, RoleStateAPI) {
		var embedded *natsserver.Server
		if s.Embedded != nil {
			embedded = s.Embedded.Server
		}
		callout, err := natsauth.New(natsauth.Config{NC: s.NC, Pool: s.Pool, Subjects: s.Subjects, IssuerSeed: s.natsIssuerSeed,
			Log: logging.Component(log, "natsauth"), Server: embedded, Operators: deps.operatorScope})
		if err != nil {
			return nil, err
		}
		runners = append(runners, namedRunner{"natsauth", callout})
		calloutReady = callout.Ready()
	} else if slices.Contains(roles, RoleStateAPI) {
		log.Warn().Msg("FLEETSHIFT_NATS_ISSUER_SEED is not set: devices and operator tokens cannot sign in to NATS " +
			"through the auth callout; `fleetshift secrets` makes one")
	}
	runners = append(runners, namedRunner{"outbox", outbox.NewRelay(s.Pool, s.JS, logging.Component(log, "outbox"), nil)})
	for _, r := range runners {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := r.Run(runCtx); err != nil && runCtx.Err() == nil {
				log.Error().Err(err).Str("service", r.name).Msg("service stopped with an error")
				s.setErr(fmt.Errorf("%s: %w", r.name, err))
				cancel()
			}
		}()
	}
	registerOpenAPI(s.app)
	s.app.Get("/api/v1/info", func(c *fiber.Ctx) error {
		return c.JSON(fiber.Map{"name": "fleetshift", "nats_url": s.PublicNATSURL, "subject_prefix": s.Subjects.Prefix})
	})
	s.app.Use(func(c *fiber.Ctx) error { return apierr.FiberErrorHandler(c, fiber.ErrNotFound) })

	if calloutReady != nil { // devices may connect as soon as Start returns
		select {
		case <-calloutReady:
		case <-time.After(15 * time.Second):
			return nil, errors.New("nats auth callout did not start within 15s")
		}
	}
	ln = s.listener
	s.HTTPURL = "http://" + httpHost(ln.Addr())
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.app.Listener(ln); err != nil && !errors.Is(err, http.ErrServerClosed) && runCtx.Err() == nil {
			s.setErr(fmt.Errorf("http: %w", err))
			cancel()
		}
	}()
	go func() { <-runCtx.Done(); close(s.done) }()

	printBanner(out, s, toks, slices.Equal(roles, AllRoles))
	return s, nil
}

// Done is closed when the server stops running (Shutdown, or a service failed).
func (s *Server) Done() <-chan struct{} { return s.done }

// Err returns the error that stopped the server, if one did.
func (s *Server) Err() error {
	s.errMu.Lock()
	defer s.errMu.Unlock()
	return s.err
}

func (s *Server) setErr(err error) {
	s.errMu.Lock()
	defer s.errMu.Unlock()
	if s.err == nil {
		s.err = err
	}
}

// Shutdown stops in order: HTTP, consumers and timers, the NATS connection (drained), the embedded
// server, the database pool. Calling it twice is harmless.
func (s *Server) Shutdown() {
	s.stopOnce.Do(func() {
		if s.app != nil {
			_ = s.app.ShutdownWithTimeout(s.timeout)
		}
		if s.cancel != nil {
			s.cancel()
		}
		waited := make(chan struct{})
		go func() { s.wg.Wait(); close(waited) }()
		select {
		case <-waited:
		case <-time.After(s.timeout):
			s.log.Warn().Msg("shutdown: services did not stop in time")
		}
		s.closeResources()
	})
}

func (s *Server) closeResources() {
	if s.SystemNC != nil {
		s.SystemNC.Close()
	}
	if s.NC != nil {
		_ = s.NC.Drain()
		for i := 0; i < 100 && !s.NC.IsClosed(); i++ {
			time.Sleep(20 * time.Millisecond)
		}
		s.NC.Close()
	}
	if s.Embedded != nil {
		s.Embedded.Shutdown()
	}
	if s.Pool != nil {
		s.Pool.Close()
	}
	if s.listener != nil {
		_ = s.listener.Close() // never served when start-up failed; harmless after the app closed it
	}
	if s.LocalPG != nil {
		if err := s.LocalPG.Stop(); err != nil {
			s.log.Warn().Err(err).Msg("stop local PostgreSQL")
		}
	}
}

func isFiberClientError(err error) bool {
	var fe *fiber.Error
	return errors.As(err, &fe) && fe.Code < 500
}

func httpHost(a net.Addr) string {
	tcp, ok := a.(*net.TCPAddr)
	if !ok {
		return a.String()
	}
	if tcp.IP == nil || tcp.IP.IsUnspecified() {
		return fmt.Sprintf("127.0.0.1:%d", tcp.Port)
	}
	return tcp.String()
}

type namedRunner struct {
	name string
	r    interface{ Run(context.Context) error }
}

func (n namedRunner) Run(ctx context.Context) error { return n.r.Run(ctx) }

func printBanner(w io.Writer, s *Server, toks tokens, all bool) {
	fmt.Fprintf(w, "\nfleetshift is up\n")
	fmt.Fprintf(w, "  HTTP API        %s\n", s.HTTPURL)
	fmt.Fprintf(w, "  NATS            %s\n", s.NATSURL)
	if s.LocalPG != nil {
		fmt.Fprintf(w, "  PostgreSQL      own cluster in %s (log %s), stopped with fleetshift\n", s.LocalPG.Dir, s.LocalPG.LogFile)
	}
	fmt.Fprintf(w, "  database        %s\n", pg.Redact(s.DatabaseURL))
	if toks.admin.Generated {
		fmt.Fprintf(w, "  admin token     %s   (generated; saved in the data dir, shown only now)\n", s.AdminToken)
	}
	if toks.webhook.Generated {
		fmt.Fprintf(w, "  webhook token   %s   (generated; saved in the data dir, shown only now)\n", s.WebhookToken)
	}
	if !all {
		return
	}
	fmt.Fprintf(w, "\nSend registry webhooks to:\n  %s/api/v1/webhooks/docker-registry?token=<webhook token>\n", s.HTTPURL)
	fmt.Fprintf(w, "Watch rollouts:\n  FLEETSHIFT_URL=%s FLEETSHIFT_TOKEN=<admin token> bin/fleetshift rollouts list\n", s.HTTPURL)
	fmt.Fprintf(w, "  curl -H 'Authorization: Bearer <admin token>' %s/api/v1/rollouts\n", s.HTTPURL)
	fmt.Fprintf(w, "  NATS events: subjects %s (stream %s)\n\n", s.Subjects.EventsAll(), s.Subjects.EventsStream())
}
