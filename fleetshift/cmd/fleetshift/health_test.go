package main

import (
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fleetshift/fleetshift/fleetshift/internal/server"
	"github.com/fleetshift/fleetshift/shared/broker"
	"github.com/fleetshift/fleetshift/shared/natstest"
	"github.com/fleetshift/fleetshift/shared/pgtest"
)

// TestSingleServicesServeHealth: every single-service process answers /healthz, and /readyz while its
// database and NATS answer (503 once NATS is gone); it prints no token, and stops cleanly on SIGTERM.
func TestSingleServicesServeHealth(t *testing.T) {
	db := pgtest.New(t)
	ns := natstest.New(t)
	env := map[string]string{
		"DATABASE_URL": db.URL, "NATS_URL": ns.URL, "NATS_USER": broker.ServiceUser, "NATS_PASSWORD": natstest.Password,
		"FLEETSHIFT_ADMIN_TOKEN": "admin-tok", "FLEETSHIFT_WEBHOOK_TOKEN": "hook-tok",
	}
	procs := map[string]*started{}
	for _, role := range server.AllRoles {
		e := processEnv(t, env)
		p := start(t, e, role)
		procs[role] = p
		require.NotContains(t, p.banner, "token", "%s must not print tokens", role)
		entries, err := os.ReadDir(envValue(e, "FLEETSHIFT_DATA_DIR"))
		require.NoError(t, err)
		require.Empty(t, entries, "%s must not write secrets", role)
		status, body := get(t, p.httpURL+"/healthz")
		require.Equal(t, 200, status, "%s /healthz: %s", role, body)
		status, body = get(t, p.httpURL+"/readyz")
		require.Equal(t, 200, status, "%s /readyz: %s", role, body)
	}

	ns.Stop()
	for role, p := range procs {
		eventually(t, 30*time.Second, func() bool {
			status, _ := get(t, p.httpURL+"/readyz")
			return status == 503
		}, role+": /readyz should answer 503 without NATS")
		status, _ := get(t, p.httpURL+"/healthz")
		require.Equal(t, 200, status, "%s /healthz stays 200", role)
	}
	for _, p := range procs {
		p.stop(t)
	}
}
