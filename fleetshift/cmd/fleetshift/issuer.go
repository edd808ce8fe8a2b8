package main

import (
	"fmt"

	"github.com/nats-io/nkeys"
	"github.com/spf13/cobra"

	"github.com/fleetshift/fleetshift/fleetshift/internal/secrets"
	"github.com/fleetshift/fleetshift/shared/natsauth"
)

// issuerCmd prints the secrets an external NATS deployment needs, as an env file.
func issuerCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "nats-issuer",
		Short: "Print a new auth-callout issuer key pair and service password as an env file (for compose.yaml or a cluster)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			seed, err := natsauth.NewIssuer()
			if err != nil {
				return err
			}
			kp, err := nkeys.FromSeed([]byte(seed))
			if err != nil {
				return err
			}
			pub, err := kp.PublicKey()
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "# fleetshift NATS auth callout: keep this file secret\n")
			fmt.Fprintf(cmd.OutOrStdout(), "FLEETSHIFT_NATS_ISSUER_SEED=%s\nFLEETSHIFT_NATS_ISSUER_PUBLIC=%s\nFLEETSHIFT_NATS_SERVICE_PASSWORD=%s\n",
				seed, pub, secrets.New())
			return nil
		},
	}
}
