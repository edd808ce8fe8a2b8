package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/fleetshift/fleetshift/fleetshift/internal/cli"
	"github.com/fleetshift/fleetshift/fleetshift/internal/server"
	"github.com/fleetshift/fleetshift/shared/config"
	"github.com/fleetshift/fleetshift/shared/logging"
	"github.com/fleetshift/fleetshift/shared/pg"
)

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "fleetshift",
		Short:         "Staged, health-gated container image rollouts for device fleets",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       buildVersion(version),
	}
	root.AddCommand(serveCmd("serve", "Run every service, an embedded NATS JetStream (unless NATS_URL is set) and the HTTP API", server.AllRoles, true))
	for _, role := range server.AllRoles {
		root.AddCommand(serveCmd(role, "Run the "+role+" service alone against NATS_URL and DATABASE_URL", []string{role}, false))
	}
	root.AddCommand(migrateCmd(), secretsCmd(), demoCmd())
	root.AddCommand(cli.Commands()...)
	return root
}

func serveCmd(name, short string, roles []string, all bool) *cobra.Command {
	return &cobra.Command{
		Use:   name,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.FromEnv()
			if err != nil {
				return err
			}
			log := logging.New(os.Stderr, cfg.LogLevel, cfg.LogFormat)
			srv, err := server.Start(cmd.Context(), server.Options{
				Config: cfg, Log: log, Out: os.Stdout, Roles: roles, EmbedNATS: all, DefaultDatabase: all,
			})
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			select {
			case <-cmd.Context().Done():
				log.Info().Msg("shutting down")
			case <-srv.Done():
			}
			srv.Shutdown()
			return srv.Err()
		},
	}
}

func migrateCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "migrate",
		Short: "Apply database migrations (DATABASE_URL) and exit",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.FromEnv()
			if err != nil {
				return err
			}
			url, err := server.Migrate(cmd.Context(), cfg)
			if err != nil {
				return fmt.Errorf("migrate: %w", err)
			}
			fmt.Println("migrations applied to", pg.Redact(url))
			return nil
		},
	}
}
