package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fleetshift/fleetshift/fleetshift/internal/localpg"
	"github.com/fleetshift/fleetshift/fleetshift/internal/secrets"
	"github.com/fleetshift/fleetshift/migrations"
	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/config"
	"github.com/fleetshift/fleetshift/shared/pg"
)

// tokens are the bootstrap secrets the process checks, and whether this start generated them.
type tokens struct {
	admin, webhook secrets.Value
}

// checksAdminToken reports whether one of roles authenticates operators (bootstrap admin token).
func checksAdminToken(roles []string) bool { return slices.Contains(roles, RoleStateAPI) }

// checksWebhookToken reports whether one of roles authenticates registry webhooks.
func checksWebhookToken(roles []string) bool { return slices.Contains(roles, RoleIngest) }

// bootstrapTokens returns the tokens roles check; a process checks no token it does not need.
// One process (serve) may generate them into the data dir. Separate services never generate: every
// replica would get a different token, so a missing one is an error pointing at `fleetshift secrets`.
func bootstrapTokens(cfg config.Config, roles []string, separate bool) (tokens, error) {
	var t tokens
	type need struct {
		check       bool
		name, env   string
		explicit    string
		optionalFor string // another setting that makes the token optional
		into        *secrets.Value
	}
	for _, n := range []need{
		{checksAdminToken(roles), "admin-token", "FLEETSHIFT_ADMIN_TOKEN", cfg.AdminToken, "", &t.admin},
		{checksWebhookToken(roles), "webhook-token", "FLEETSHIFT_WEBHOOK_TOKEN", cfg.WebhookToken, cfg.WebhookSecret, &t.webhook},
	} {
		switch {
		case !n.check:
		case n.explicit != "":
			*n.into = secrets.Value{Secret: n.explicit}
		case separate && n.optionalFor != "":
			// HMAC signatures alone authenticate webhooks.
		case separate:
			return tokens{}, fmt.Errorf("%s is not set: run `fleetshift secrets > .env` once and give every fleetshift process "+
				"that file's values (separate services never generate their own, replicas would disagree)", n.env)
		default:
			v, err := secrets.Ensure(cfg.DataDir, n.name, "")
			if err != nil {
				return tokens{}, err
			}
			*n.into = v
		}
	}
	return t, nil
}

// checkDatabaseURL says in one line what is wrong with an unusable DATABASE_URL (password hidden).
func checkDatabaseURL(url string) error {
	if _, err := pgx.ParseConfig(url); err != nil {
		return fmt.Errorf("DATABASE_URL is not a usable PostgreSQL URL (%s): write it as postgres://user:password@host:5432/fleetshift",
			innermost(err))
	}
	return nil
}

func listenError(addr string, err error) error {
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("HTTP address %s (FLEETSHIFT_HTTP_ADDR) is already in use: stop what listens there, or set FLEETSHIFT_HTTP_ADDR to a free address", addr)
	}
	return fmt.Errorf("cannot listen on %s (FLEETSHIFT_HTTP_ADDR): %s: set FLEETSHIFT_HTTP_ADDR to a host:port this machine can listen on",
		addr, innermost(err))
}

// databaseError turns a failure to reach or prepare the database into what to do about it.
func databaseError(url string, defaulted bool, err error) error {
	where := pg.Redact(url)
	if cfg, perr := pgx.ParseConfig(url); perr == nil {
		where = net.JoinHostPort(cfg.Host, fmt.Sprint(cfg.Port))
		if strings.HasPrefix(cfg.Host, "/") {
			where = cfg.Host
		}
	}
	fix := "check that it runs and that DATABASE_URL is right"
	if defaulted {
		fix = "start it (Debian: apt-get install postgresql), or set DATABASE_URL=postgres://user:password@host:5432/fleetshift"
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		fix = "check the user, password and database in DATABASE_URL"
		if defaulted {
			fix = "set DATABASE_URL=postgres://user:password@host:5432/fleetshift to a server and user fleetshift may use"
		}
		return fmt.Errorf("PostgreSQL at %s refused fleetshift: %s (SQLSTATE %s): %s", where, pgErr.Message, pgErr.Code, fix)
	}
	return fmt.Errorf("cannot reach PostgreSQL at %s (%s): %s", where, innermost(err), fix)
}

func natsError(url string, err error) error {
	msg := innermost(err)
	if strings.Contains(strings.ToLower(msg), "authorization") || strings.Contains(strings.ToLower(msg), "authentication") {
		return fmt.Errorf("NATS at %s refused fleetshift's service credentials (%s): check NATS_USER/NATS_PASSWORD, NATS_TOKEN or NATS_CREDS", url, msg)
	}
	return fmt.Errorf("cannot reach NATS at %s (%s): check that it runs and that NATS_URL is right", url, msg)
}

// defaultDatabase is serve's database when DATABASE_URL is unset: the server answering on the default
// address, else a cluster of its own under the data dir.
func (s *Server) defaultDatabase(ctx context.Context, cfg config.Config) (string, error) {
	url := cmp.Or(cfg.DefaultDatabaseURL, pg.DefaultLocalURL)
	if err := checkDatabaseURL(url); err != nil {
		return "", fmt.Errorf("FLEETSHIFT_DEFAULT_DATABASE_URL: %w", err)
	}
	c, _ := pgx.ParseConfig(url)
	if answers(ctx, c.Host, c.Port) {
		return url, nil
	}
	dir, err := filepath.Abs(filepath.Join(cfg.DataDir, "postgres"))
	if err != nil {
		return "", fmt.Errorf("data dir %s: %w", cfg.DataDir, err)
	}
	var bins []string
	if cfg.PostgresBin != "" {
		bins = []string{cfg.PostgresBin}
	}
	cluster, err := localpg.Start(ctx, localpg.Options{Dir: dir, Database: "fleetshift", BinDirs: bins})
	if errors.Is(err, localpg.ErrNotInstalled) {
		return "", fmt.Errorf("no PostgreSQL answers at %s and fleetshift cannot run its own: %w: install it (Debian/Ubuntu: "+
			"apt-get install postgresql), or set DATABASE_URL=postgres://user:password@host:5432/fleetshift",
			net.JoinHostPort(c.Host, fmt.Sprint(c.Port)), err)
	}
	if err != nil {
		return "", fmt.Errorf("%w; or set DATABASE_URL to a PostgreSQL server", err)
	}
	s.LocalPG = cluster // the banner says where it is (no log line: a later start-up failure stays one line)
	return cluster.URL, nil
}

// answers reports whether something accepts connections at host:port (a unix socket directory when
// host is a path).
func answers(ctx context.Context, host string, port uint16) bool {
	network, addr := "tcp", net.JoinHostPort(host, fmt.Sprint(port))
	if strings.HasPrefix(host, "/") {
		network, addr = "unix", filepath.Join(host, fmt.Sprintf(".s.PGSQL.%d", port))
	}
	d := net.Dialer{Timeout: 2 * time.Second}
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return false
	}
	_ = conn.Close()
	return true
}

// innermost is the deepest error of a chain, where the cause usually is ("connection refused"), on one line.
func innermost(err error) string {
	for {
		next := errors.Unwrap(err)
		if multi, ok := err.(interface{ Unwrap() []error }); ok && len(multi.Unwrap()) > 0 {
			next = multi.Unwrap()[0] // e.g. the same refusal for each TLS mode tried: the first says it
		}
		if next == nil {
			break
		}
		err = next
	}
	return strings.Join(strings.Fields(err.Error()), " ")
}

// Migrate applies the migrations to cfg's database (DATABASE_URL, else the default one), creating the
// database when missing, and returns the URL it used. Its errors are one line saying what to do.
func Migrate(ctx context.Context, cfg config.Config) (string, error) {
	url := cmp.Or(cfg.DatabaseURL, cfg.DefaultDatabaseURL, pg.DefaultLocalURL)
	if err := checkDatabaseURL(url); err != nil {
		return "", err
	}
	if err := pg.EnsureDatabase(ctx, url); err != nil {
		return "", databaseError(url, cfg.DatabaseURL == "", err)
	}
	if err := migrations.ApplyURL(ctx, url); err != nil {
		return "", fmt.Errorf("migrate %s: %s", pg.Redact(url), innermost(err))
	}
	return url, nil
}

// registerHealth mounts GET /healthz (the process is up) and GET /readyz (its database and NATS answer),
// so every process, whatever its roles, can be probed by an orchestrator.
func (s *Server) registerHealth(r fiber.Router) {
	r.Get("/healthz", func(c *fiber.Ctx) error { return c.JSON(fiber.Map{"ok": true}) })
	r.Get("/readyz", func(c *fiber.Ctx) error {
		ctx, cancel := context.WithTimeout(c.UserContext(), 2*time.Second)
		defer cancel()
		if err := s.Pool.Ping(ctx); err != nil {
			return apierr.New(apierr.ErrUnavailable, "database_unreachable", "database unreachable")
		}
		if !s.NC.IsConnected() {
			return apierr.New(apierr.ErrUnavailable, "nats_unreachable", "NATS unreachable")
		}
		return c.JSON(fiber.Map{"ok": true})
	})
}
