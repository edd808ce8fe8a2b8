package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fleetshift/fleetshift/fleetshift/internal/server"
	"github.com/fleetshift/fleetshift/shared/pgtest"
)

// TestStartupFailuresAreOneLine runs serve, every single service and migrate into each start-up
// failure: each ends with one line on stderr saying what failed and what to do, and a non-zero exit.
func TestStartupFailuresAreOneLine(t *testing.T) {
	db := pgtest.New(t) // a database that answers, for failures further along
	dbDown := "postgres://postgres@" + closedAddr(t) + "/fleetshift?sslmode=disable"
	natsDown := "nats://" + closedAddr(t)
	badURL := "postgres://fleet:s3cret@db.example:notaport/fleetshift"
	tokens := map[string]string{"FLEETSHIFT_ADMIN_TOKEN": "admin-tok", "FLEETSHIFT_WEBHOOK_TOKEN": "hook-tok"}
	notADir := filepath.Join(t.TempDir(), "file") // a data dir below a file cannot be created, even by root
	require.NoError(t, os.WriteFile(notADir, nil, 0o600))
	with := func(base map[string]string, kv ...string) map[string]string {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	type tc struct {
		name string
		args []string
		env  map[string]string
		want []string
	}
	cases := []tc{
		{"serve/port busy", []string{"serve"}, map[string]string{"DATABASE_URL": db.URL, "FLEETSHIFT_HTTP_ADDR": busyAddr(t)},
			[]string{"serve:", "already in use", "FLEETSHIFT_HTTP_ADDR"}},
		{"serve/database down", []string{"serve"}, map[string]string{"DATABASE_URL": dbDown},
			[]string{"cannot reach PostgreSQL", "connection refused", "DATABASE_URL"}},
		{"serve/nats down", []string{"serve"}, map[string]string{"DATABASE_URL": db.URL, "NATS_URL": natsDown},
			[]string{"cannot reach NATS", natsDown, "NATS_URL"}},
		{"serve/bad database url", []string{"serve"}, map[string]string{"DATABASE_URL": badURL},
			[]string{"DATABASE_URL is not a usable PostgreSQL URL", "postgres://user:password@host:5432/fleetshift"}},
		{"serve/no database and PostgreSQL not installed", []string{"serve"},
			map[string]string{"FLEETSHIFT_DEFAULT_DATABASE_URL": dbDown, "FLEETSHIFT_POSTGRES_BIN": t.TempDir()},
			[]string{"no PostgreSQL answers at", "apt-get install postgresql", "DATABASE_URL"}},
		{"serve/data dir not writable", []string{"serve"}, map[string]string{"DATABASE_URL": db.URL, "FLEETSHIFT_DATA_DIR": notADir + "/data"},
			[]string{"not a directory", "FLEETSHIFT_DATA_DIR"}},
		{"migrate/database down", []string{"migrate"}, map[string]string{"DATABASE_URL": dbDown},
			[]string{"migrate:", "cannot reach PostgreSQL", "DATABASE_URL"}},
		{"migrate/bad database url", []string{"migrate"}, map[string]string{"DATABASE_URL": badURL},
			[]string{"migrate:", "DATABASE_URL is not a usable PostgreSQL URL"}},
	}
	for _, role := range server.AllRoles {
		base := with(tokens, "DATABASE_URL", db.URL, "NATS_URL", natsDown)
		cases = append(cases,
			tc{role + "/port busy", []string{role}, with(base, "FLEETSHIFT_HTTP_ADDR", busyAddr(t)), []string{role + ":", "already in use"}},
			tc{role + "/database down", []string{role}, with(base, "DATABASE_URL", dbDown), []string{role + ":", "cannot reach PostgreSQL", "connection refused"}},
			tc{role + "/nats down", []string{role}, base, []string{role + ":", "cannot reach NATS", "NATS_URL"}},
			tc{role + "/bad database url", []string{role}, with(base, "DATABASE_URL", badURL), []string{role + ":", "DATABASE_URL is not a usable"}},
			tc{role + "/no NATS_URL", []string{role}, with(base, "NATS_URL", ""), []string{role + ":", "NATS_URL is not set"}},
			tc{role + "/no DATABASE_URL", []string{role}, with(base, "DATABASE_URL", ""), []string{role + ":", "DATABASE_URL is not set"}},
		)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			r := run(t, processEnv(t, c.env), c.args...)
			requireOneLineFailure(t, r, c.want...)
			require.NotContains(t, r.stderr, "s3cret", "the password must not be shown")
		})
	}
}

// TestSeparateServicesRequireOnlyTheirTokens: in separate-service mode a process needs exactly the
// tokens it checks, taken from the environment (never generated, never printed): ingest the webhook
// token, stateapi the admin token, the others none.
func TestSeparateServicesRequireOnlyTheirTokens(t *testing.T) {
	db := pgtest.New(t)
	natsDown := "nats://" + closedAddr(t)
	cases := []struct {
		role string
		env  map[string]string
		want []string // the one line; "cannot reach NATS" means the tokens passed
	}{
		{"ingest", map[string]string{}, []string{"FLEETSHIFT_WEBHOOK_TOKEN is not set", "fleetshift secrets"}},
		{"ingest", map[string]string{"FLEETSHIFT_WEBHOOK_TOKEN": "h"}, []string{"cannot reach NATS"}},
		{"ingest", map[string]string{"DOCKER_WEBHOOK_SECRET": "hmac"}, []string{"cannot reach NATS"}},
		{"stateapi", map[string]string{"FLEETSHIFT_WEBHOOK_TOKEN": "h"}, []string{"FLEETSHIFT_ADMIN_TOKEN is not set", "fleetshift secrets"}},
		{"stateapi", map[string]string{"FLEETSHIFT_ADMIN_TOKEN": "a"}, []string{"cannot reach NATS"}},
		{"planner", map[string]string{}, []string{"cannot reach NATS"}},
		{"dispatcher", map[string]string{}, []string{"cannot reach NATS"}},
		{"healthwatch", map[string]string{}, []string{"cannot reach NATS"}},
		{"notifier", map[string]string{}, []string{"cannot reach NATS"}},
	}
	for _, c := range cases {
		t.Run(c.role, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{"DATABASE_URL": db.URL, "NATS_URL": natsDown}
			for k, v := range c.env {
				env[k] = v
			}
			e := processEnv(t, env)
			r := run(t, e, c.role)
			requireOneLineFailure(t, r, append([]string{c.role + ":"}, c.want...)...)
			dataDir := envValue(e, "FLEETSHIFT_DATA_DIR")
			for _, f := range []string{"admin-token", "webhook-token"} {
				_, err := os.Stat(filepath.Join(dataDir, f))
				require.True(t, os.IsNotExist(err), "a separate service must not generate %s", f)
			}
		})
	}
}

func envValue(env []string, key string) string {
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && k == key {
			return v
		}
	}
	return ""
}
