package main

import (
	"github.com/spf13/cobra"

	"github.com/fleetshift/fleetshift/fleetshift/internal/demo"
)

func demoCmd() *cobra.Command {
	var devices int
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Self-contained demo: throwaway server and database, 200 simulated devices, a healthy and a failing rollout",
		Long: "Starts a server on free ports with a throwaway database on the PostgreSQL of $DATABASE_URL (or the local one),\n" +
			"200 simulated devices, a staged policy and a webhook, shows the rollout finishing, then a second push with\n" +
			"failures that auto-pauses and rolls back. Ends by itself in under a minute and cleans up.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return demo.Run(cmd.Context(), demo.Options{Devices: devices, Out: cmd.OutOrStdout()})
		},
	}
	cmd.Flags().IntVar(&devices, "devices", 200, "simulated devices")
	return cmd
}
