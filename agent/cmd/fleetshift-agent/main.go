// Command fleetshift-agent is the device side of fleetshift: `run` manages one real device with the
// Docker Compose runtime, `sim` simulates a fleet of devices against a server.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/fleetshift/fleetshift/agent/client"
	"github.com/fleetshift/fleetshift/agent/device"
	"github.com/fleetshift/fleetshift/agent/runtime/compose"
	"github.com/fleetshift/fleetshift/agent/sim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := rootCmd().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "fleetshift-agent:", err)
		os.Exit(1)
	}
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func newLogger(level string) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil {
		return zerolog.Logger{}, fmt.Errorf("log level %q: %w", level, err)
	}
	return zerolog.New(os.Stderr).Level(lvl).With().Timestamp().Str("component", "agent").Logger(), nil
}

func rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "fleetshift-agent",
		Short:         "fleetshift device agent: follows the device's target state on Docker Compose",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       buildVersion(version),
	}
	root.AddCommand(runCmd(), simCmd())
	return root
}

func runCmd() *cobra.Command {
	var (
		server, natsURL, provKey, name, stateDir, prefix, docker, logLevel, transport string
		composeCmd, projectPrefix                                                     string
		tags                                                                          []string
		poll, heartbeat, lockTimeout                                                  time.Duration
	)
	host, _ := os.Hostname()
	cmd := &cobra.Command{
		Use:   "run",
		Short: "manage this device: register once, then follow its target state",
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(logLevel)
			if err != nil {
				return err
			}
			if server == "" {
				return errors.New("--server is required")
			}
			api, err := client.New(server, nil)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			// Compose first: a device that cannot run containers must not register.
			composeArgv, err := composeCommand(ctx, composeCmd, docker)
			if err != nil {
				return err
			}
			id, err := device.Provision(ctx, stateDir, api, provKey, name, tags)
			if err != nil {
				return err
			}
			log = log.With().Str("device", id.UUID).Logger()
			rt, err := compose.New(compose.Config{StateDir: stateDir, Docker: docker, LockTimeout: lockTimeout, Log: log,
				Compose: composeArgv, ProjectPrefix: projectPrefix})
			if err != nil {
				return err
			}
			agent, err := device.New(device.Config{
				Identity: id, HTTP: api, NATSURL: natsURL, DisableNATS: transport == "http", Prefix: prefix,
				Runtime: rt, StateDir: stateDir, PollInterval: poll, Heartbeat: heartbeat, Log: log,
			})
			if err != nil {
				return err
			}
			log.Info().Msg("agent started")
			return agent.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&server, "server", env("FLEETSHIFT_URL", ""), "fleetshift server HTTP url (env FLEETSHIFT_URL)")
	f.StringVar(&natsURL, "nats", env("FLEETSHIFT_AGENT_NATS_URL", ""), "NATS url (default: the one handed out at registration)")
	f.StringVar(&provKey, "provisioning-key", env("FLEETSHIFT_PROVISIONING_KEY", ""), "fleet provisioning key, needed for the first start only")
	f.StringVar(&name, "name", host, "device name at registration")
	f.StringSliceVar(&tags, "tag", nil, "device tag at registration (repeatable)")
	f.StringVar(&stateDir, "state-dir", env("FLEETSHIFT_AGENT_STATE_DIR", "/var/lib/fleetshift-agent"), "where identity, compose files and locks live")
	f.StringVar(&prefix, "subject-prefix", "fleet", "NATS subject prefix")
	f.StringVar(&transport, "transport", "nats", "nats (HTTP as fallback) or http (poll only)")
	f.StringVar(&docker, "docker", "docker", "docker executable")
	f.StringVar(&composeCmd, "compose", env("FLEETSHIFT_AGENT_COMPOSE", "auto"),
		"compose command: auto (`docker compose` when the plugin answers, else docker-compose v1), or a command such as docker-compose")
	f.StringVar(&projectPrefix, "project-prefix", env("FLEETSHIFT_AGENT_PROJECT_PREFIX", "fs-"),
		"compose project name prefix (one per device sharing a Docker engine)")
	f.DurationVar(&poll, "poll-interval", 30*time.Second, "HTTP poll interval while NATS is unreachable (jittered, backs off on errors)")
	f.DurationVar(&heartbeat, "heartbeat", 30*time.Second, "report period (the server expects FLEETSHIFT_HEARTBEAT_SECONDS, default 30)")
	f.DurationVar(&lockTimeout, "lock-timeout", 10*time.Minute, "longest an update waits for a held update lock")
	f.StringVar(&logLevel, "log-level", "info", "log level")
	return cmd
}

func simCmd() *cobra.Command {
	var (
		cfg                                  sim.Config
		failRates, silentRates               []string
		pullTime, logLevel, transport, token string
		seed                                 uint64
	)
	cmd := &cobra.Command{
		Use:   "sim",
		Short: "simulate N devices against a server",
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(logLevel)
			if err != nil {
				return err
			}
			for _, r := range failRates {
				rate, err := sim.ParseRate(r)
				if err != nil {
					return fmt.Errorf("--fail-rate: %w", err)
				}
				cfg.FailRates = append(cfg.FailRates, rate)
			}
			for _, r := range silentRates {
				rate, err := sim.ParseRate(r)
				if err != nil {
					return fmt.Errorf("--silent-rate: %w", err)
				}
				cfg.SilentRates = append(cfg.SilentRates, rate)
			}
			if cfg.PullMin, cfg.PullMax, err = sim.ParsePullTime(pullTime); err != nil {
				return err
			}
			sim.SetGC()
			cfg.Transport = transport
			cfg.AdminToken = token
			cfg.Seed = seed
			cfg.Summary = os.Stdout
			cfg.Log = log
			if cfg.StateDir != "" {
				cfg.StateDir = filepath.Clean(cfg.StateDir)
			}
			return sim.Run(cmd.Context(), cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Server, "server", env("FLEETSHIFT_URL", ""), "fleetshift server HTTP url")
	f.StringVar(&cfg.NATSURL, "nats", "", "NATS url (default: the one handed out at registration)")
	f.StringVar(&cfg.ProvisioningKey, "provisioning-key", env("FLEETSHIFT_PROVISIONING_KEY", ""), "fleet provisioning key")
	f.IntVar(&cfg.Devices, "devices", 100, "number of simulated devices")
	f.StringVar(&transport, "transport", "nats", "nats (one connection per device) or http (shared HTTP pool, polling)")
	f.StringVar(&cfg.NATSClient, "nats-client", sim.NATSClientLight, "each device's NATS client: light (the simulator's own, a fraction of the memory) or nats.go (the agent's)")
	f.StringArrayVar(&cfg.Images, "image", nil, "image the devices start on (repeatable: one service each)")
	f.StringArrayVar(&failRates, "fail-rate", nil, "GLOB=P: a device updated to a matching image ends unhealthy with probability P (repeatable)")
	f.IntVar(&cfg.FailAttempts, "fail-attempts", 0, "with --fail-rate: a failing device fails only its first N starts of an image, and a retry beyond them runs healthy (0: always fails)")
	f.StringArrayVar(&silentRates, "silent-rate", nil, "GLOB=P: a device updated to a matching image never reports again with probability P")
	f.StringVar(&pullTime, "pull-time", "200ms-2s", "simulated pull time range")
	f.Uint64Var(&seed, "seed", 1, "seed for reproducible failures")
	f.StringVar(&cfg.StateDir, "state-dir", "", "keep device identities here to reuse them on the next run")
	f.StringVar(&token, "admin-token", env("FLEETSHIFT_TOKEN", ""), "admin token for setting targets (env FLEETSHIFT_TOKEN)")
	f.StringVar(&cfg.Fleet, "fleet", "", "fleet whose default target is set (default: the provisioning key's fleet)")
	f.StringVar(&cfg.Prefix, "subject-prefix", "fleet", "NATS subject prefix")
	f.DurationVar(&cfg.PollInterval, "poll-interval", 10*time.Second, "device HTTP poll interval")
	f.DurationVar(&cfg.Heartbeat, "heartbeat", 30*time.Second, "device report period")
	f.DurationVar(&cfg.SummaryEvery, "summary-every", 5*time.Second, "summary line period")
	f.IntVar(&cfg.RegisterConcurrency, "register-concurrency", 32, "concurrent registrations")
	f.StringVar(&logLevel, "log-level", "warn", "log level")
	return cmd
}

// composeCommand resolves --compose: "auto" is `docker compose` when the v2 plugin answers, else
// docker-compose (v1) when it is on PATH, else an error; anything else is split on spaces.
func composeCommand(ctx context.Context, flag, docker string) ([]string, error) {
	if flag != "auto" && flag != "" {
		return strings.Fields(flag), nil
	}
	return compose.DetectCommand(ctx, docker)
}
