package main

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/require"
)

// envFile parses KEY=value lines, skipping comments.
func envFile(t *testing.T, text string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, l := range strings.Split(text, "\n") {
		if l = strings.TrimSpace(l); l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		require.True(t, ok, "not KEY=value: %q", l)
		m[k] = v
	}
	return m
}

// TestSecretsCommand: `fleetshift secrets` (and its old name nats-issuer) prints every secret separate
// services share, fresh each time, with the issuer public key matching its seed.
func TestSecretsCommand(t *testing.T) {
	var seen []map[string]string
	for _, verb := range []string{"secrets", "nats-issuer"} {
		r := run(t, processEnv(t, nil), verb)
		require.Zero(t, r.code, r.stderr)
		env := envFile(t, r.stdout)
		for _, k := range []string{"FLEETSHIFT_NATS_ISSUER_SEED", "FLEETSHIFT_NATS_ISSUER_PUBLIC", "FLEETSHIFT_NATS_SERVICE_PASSWORD",
			"FLEETSHIFT_ADMIN_TOKEN", "FLEETSHIFT_WEBHOOK_TOKEN"} {
			require.NotEmpty(t, env[k], "%s: %s", verb, k)
		}
		kp, err := nkeys.FromSeed([]byte(env["FLEETSHIFT_NATS_ISSUER_SEED"]))
		require.NoError(t, err)
		pub, err := kp.PublicKey()
		require.NoError(t, err)
		require.Equal(t, pub, env["FLEETSHIFT_NATS_ISSUER_PUBLIC"])
		require.NotEqual(t, env["FLEETSHIFT_ADMIN_TOKEN"], env["FLEETSHIFT_WEBHOOK_TOKEN"])
		seen = append(seen, env)
	}
	require.NotEqual(t, seen[0]["FLEETSHIFT_ADMIN_TOKEN"], seen[1]["FLEETSHIFT_ADMIN_TOKEN"], "fresh secrets each run")
}

// TestComposeGetsItsSecrets: every FLEETSHIFT_ variable compose.yaml and the NATS config interpolate
// without a default is one `fleetshift secrets` writes, and the services read that .env (tokens, issuer seed).
func TestComposeGetsItsSecrets(t *testing.T) {
	r := run(t, processEnv(t, nil), "secrets")
	require.Zero(t, r.code, r.stderr)
	env := envFile(t, r.stdout)
	compose, err := os.ReadFile("../../../compose.yaml")
	require.NoError(t, err)
	natsConf, err := os.ReadFile("../../../deploy/nats/nats.conf")
	require.NoError(t, err)
	ref := regexp.MustCompile(`\$\{?(FLEETSHIFT_[A-Z_]+)(\}|\s|$)`) // ${X:-default} is optional
	refs := ref.FindAllStringSubmatch(string(compose)+string(natsConf), -1)
	require.NotEmpty(t, refs)
	for _, m := range refs {
		require.Contains(t, env, m[1], "compose.yaml or nats.conf uses %s, which `fleetshift secrets` does not write", m[1])
	}
	require.Contains(t, string(compose), "env_file: .env", "services must read the secrets file")
	require.Contains(t, string(compose), "fleetshift secrets > .env", "compose.yaml says how to make .env")
}
