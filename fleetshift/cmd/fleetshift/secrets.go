package main

import (
	"fmt"

	"github.com/nats-io/nkeys"
	"github.com/spf13/cobra"

	"github.com/fleetshift/fleetshift/fleetshift/internal/secrets"
	"github.com/fleetshift/fleetshift/shared/natsauth"
)

// secretsCmd prints every secret a deployment of separate services needs, as an env file: all
// replicas must share them, so they are made once here rather than by each process.
func secretsCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "secrets",
		Aliases: []string{"nats-issuer"},
		Short:   "Print new secrets for separate services (compose.yaml, a cluster) as an env file: fleetshift secrets > .env",
		Long: "Prints, as KEY=value lines, the secrets every process of a deployment of separate services shares:\n" +
			"the NATS auth-callout issuer seed and its public key (for the NATS servers' auth_callout), the NATS\n" +
			"service password, the bootstrap admin token and the registries' webhook token. Separate services never\n" +
			"generate these themselves (each replica would get its own); `serve` keeps its own in the data dir.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			seed, err := natsauth.NewIssuer()
			if err != nil {
				return fmt.Errorf("generate NATS issuer: %w", err)
			}
			kp, err := nkeys.FromSeed([]byte(seed))
			if err != nil {
				return fmt.Errorf("read NATS issuer seed: %w", err)
			}
			pub, err := kp.PublicKey()
			if err != nil {
				return fmt.Errorf("read NATS issuer public key: %w", err)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintln(w, "# fleetshift secrets: keep this file secret; give every fleetshift process and NATS server the same values")
			fmt.Fprintf(w, "FLEETSHIFT_NATS_ISSUER_SEED=%s\nFLEETSHIFT_NATS_ISSUER_PUBLIC=%s\nFLEETSHIFT_NATS_SERVICE_PASSWORD=%s\n",
				seed, pub, secrets.New())
			fmt.Fprintf(w, "FLEETSHIFT_ADMIN_TOKEN=%s\nFLEETSHIFT_WEBHOOK_TOKEN=%s\n", secrets.New(), secrets.New())
			return nil
		},
	}
}
