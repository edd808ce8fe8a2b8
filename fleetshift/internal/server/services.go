package server

import (
	"context"
	"fmt"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/fleetshift/fleetshift/dispatcher"
	"github.com/fleetshift/fleetshift/fleetshift/internal/metrics"
	"github.com/fleetshift/fleetshift/fleetshift/internal/notify"
	"github.com/fleetshift/fleetshift/healthwatch"
	"github.com/fleetshift/fleetshift/healthwatch/control"
	"github.com/fleetshift/fleetshift/ingest"
	"github.com/fleetshift/fleetshift/planner"
	"github.com/fleetshift/fleetshift/shared/auth"
	"github.com/fleetshift/fleetshift/shared/config"
	"github.com/fleetshift/fleetshift/shared/logging"
	"github.com/fleetshift/fleetshift/stateapi"
	"github.com/fleetshift/fleetshift/streams"
)

// Deps are what every service is built from.
type Deps struct {
	Metrics       *metrics.Registry
	Pool          *pgxpool.Pool
	NC            *nats.Conn
	SystemNC      *nats.Conn // the system account, for connect/disconnect advisories; nil when not available
	JS            jetstream.JetStream
	Subjects      streams.Subjects
	Log           zerolog.Logger
	Config        config.Config
	WebhookToken  string
	PublicNATSURL string
	Tune          Tuning
	// Operators authenticates operator tokens, shared by HTTP and NATS so a revocation applies to both.
	Operators *auth.Operators
}

// operatorScope adapts Operators to the NATS auth callout.
func (d Deps) operatorScope(ctx context.Context, token string) (string, error) {
	p, err := d.Operators.Authenticate(ctx, token)
	if err != nil {
		return "", err
	}
	return p.Scope.String(), nil
}

// buildServices constructs the services of roles, registers their HTTP routes on app, and returns
// what must run.
func buildServices(d Deps, app *fiber.App, roles []string) ([]namedRunner, error) {
	var runners []namedRunner
	has := func(r string) bool {
		for _, x := range roles {
			if x == r {
				return true
			}
		}
		return false
	}
	if has(RoleStateAPI) {
		svc, err := stateapi.New(stateapi.Config{Pool: d.Pool, NC: d.NC, JS: d.JS, Subjects: d.Subjects,
			Log: logging.Component(d.Log, RoleStateAPI), Operators: d.Operators, PublicNATSURL: d.PublicNATSURL})
		if err != nil {
			return nil, fmt.Errorf("start stateapi: %w", err)
		}
		svc.Register(app)
		runners = append(runners, namedRunner{RoleStateAPI, svc})
		ctl, err := control.New(control.Config{Pool: d.Pool, NC: d.NC, Subjects: d.Subjects,
			Log: logging.Component(d.Log, "control"), Operators: d.Operators})
		if err != nil {
			return nil, fmt.Errorf("start rollout control: %w", err)
		}
		ctl.Register(app, d.Operators)
		runners = append(runners, namedRunner{"control", ctl})
		// Subscriptions are part of the operator API; the notifier role delivers them.
		(&notify.API{Pool: d.Pool, Operators: d.Operators}).Register(app)
	}
	if has(RoleNotifier) {
		svc, err := notify.New(notify.Config{Pool: d.Pool, JS: d.JS, Subjects: d.Subjects, Log: logging.Component(d.Log, RoleNotifier)})
		if err != nil {
			return nil, fmt.Errorf("start notifier: %w", err)
		}
		d.Metrics.Register(svc.Collectors()...)
		runners = append(runners, namedRunner{RoleNotifier, svc})
	}
	if has(RoleIngest) {
		svc, err := ingest.New(ingest.Config{JS: d.JS, Subjects: d.Subjects, Log: logging.Component(d.Log, RoleIngest),
			WebhookToken: d.WebhookToken, WebhookSecret: d.Config.WebhookSecret})
		if err != nil {
			return nil, fmt.Errorf("start ingest: %w", err)
		}
		svc.Register(app)
		d.Metrics.Register(svc.Collectors()...)
	}
	if has(RolePlanner) {
		svc, err := planner.New(planner.Config{Pool: d.Pool, JS: d.JS, Subjects: d.Subjects, Log: logging.Component(d.Log, RolePlanner),
			DeadLetterCount: d.Metrics.DeadLetter})
		if err != nil {
			return nil, fmt.Errorf("start planner: %w", err)
		}
		runners = append(runners, namedRunner{RolePlanner, svc})
	}
	if has(RoleDispatcher) {
		svc, err := dispatcher.New(dispatcher.Config{Pool: d.Pool, JS: d.JS, Subjects: d.Subjects, Log: logging.Component(d.Log, RoleDispatcher),
			Now: d.Tune.Now, WindowChunk: d.Tune.WindowChunk, DeadLetterCount: d.Metrics.DeadLetter})
		if err != nil {
			return nil, fmt.Errorf("start dispatcher: %w", err)
		}
		runners = append(runners, namedRunner{RoleDispatcher, svc})
	}
	if has(RoleHealthwatch) {
		svc, err := healthwatch.New(healthwatch.Config{Pool: d.Pool, JS: d.JS, Subjects: d.Subjects,
			Log: logging.Component(d.Log, RoleHealthwatch), TickInterval: d.Tune.TickInterval, Now: d.Tune.Now,
			DeadLetterCount: d.Metrics.DeadLetter,
			Heartbeat:       time.Duration(d.Config.HeartbeatSeconds) * time.Second, OfflineAfterMissed: d.Config.OfflineAfterMissed,
			SystemNC: d.SystemNC})
		if err != nil {
			return nil, fmt.Errorf("start healthwatch: %w", err)
		}
		runners = append(runners, namedRunner{RoleHealthwatch, svc})
	}
	return runners, nil
}
