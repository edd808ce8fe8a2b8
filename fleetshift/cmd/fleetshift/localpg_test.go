package main

import (
	"bytes"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestServeRunsItsOwnPostgres: with DATABASE_URL unset and nothing answering at the default address,
// serve starts a PostgreSQL cluster under the data dir, is ready, stops the cluster on SIGTERM, and the
// next start reuses it (a device created before is still there); a failed start stops it too.
func TestServeRunsItsOwnPostgres(t *testing.T) {
	if _, err := exec.LookPath("initdb"); err != nil {
		if m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb"); len(m) == 0 {
			t.Skip("PostgreSQL (initdb, pg_ctl) is not installed: apt-get install postgresql")
		}
	}
	// As root the cluster runs as user postgres, which must reach the data dir: the test's temporary
	// directories are 0700, so open them up for passing through.
	dataDir := filepath.Join(t.TempDir(), "data")
	for d := filepath.Dir(dataDir); d != "/" && strings.HasPrefix(d, os.TempDir()) && d != filepath.Clean(os.TempDir()); d = filepath.Dir(d) {
		require.NoError(t, os.Chmod(d, 0o711))
	}
	clusterDir := filepath.Join(dataDir, "postgres")
	t.Cleanup(func() { stopCluster(clusterDir) }) // whatever happens below, no postmaster outlives the test
	env := processEnv(t, map[string]string{
		"FLEETSHIFT_DATA_DIR":             dataDir,
		"FLEETSHIFT_DEFAULT_DATABASE_URL": "postgres://postgres@" + closedAddr(t) + "/fleetshift?sslmode=disable",
		"FLEETSHIFT_ADMIN_TOKEN":          "admin-tok",
	})

	p := start(t, env, "serve")
	require.Contains(t, p.banner, "own cluster in "+clusterDir)
	status, body := get(t, p.httpURL+"/readyz")
	require.Equal(t, 200, status, body)
	req, err := http.NewRequest("POST", p.httpURL+"/api/v1/devices",
		bytes.NewBufferString(`{"uuid":"kept-device","device_name":"kept","fleet_id":"f"}`))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer admin-tok")
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	res.Body.Close()
	require.Equal(t, 201, res.StatusCode)
	pid := postmasterPID(t, clusterDir)
	p.stop(t)
	requireGone(t, pid)
	_, err = os.Stat(filepath.Join(clusterDir, "postmaster.pid"))
	require.True(t, os.IsNotExist(err), "the cluster was not shut down cleanly")

	p = start(t, env, "serve")
	require.Contains(t, p.banner, "own cluster in "+clusterDir)
	status, body = get(t, p.httpURL+"/api/v1/devices/kept-device", "Authorization", "Bearer admin-tok")
	require.Equal(t, 200, status, "the device created before the restart: %s", body)
	pid = postmasterPID(t, clusterDir)
	p.stop(t)
	requireGone(t, pid)

	// A start-up failure after the cluster started (NATS does not answer) stops it again.
	failing := append(env[:len(env):len(env)], "NATS_URL=nats://"+closedAddr(t))
	requireOneLineFailure(t, run(t, failing, "serve"), "cannot reach NATS")
	_, err = os.Stat(filepath.Join(clusterDir, "postmaster.pid"))
	require.True(t, os.IsNotExist(err), "the cluster outlived a failed start")
}

// postmasterPID is the first line of the cluster's postmaster.pid.
func postmasterPID(t *testing.T, dir string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "postmaster.pid"))
	require.NoError(t, err)
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	require.NoError(t, err)
	return pid
}

func requireGone(t *testing.T, pid int) {
	t.Helper()
	eventually(t, 30*time.Second, func() bool {
		return syscall.Kill(pid, 0) == syscall.ESRCH
	}, "the postmaster outlived fleetshift")
}

// stopCluster stops a cluster left running by a failed test.
func stopCluster(dir string) {
	if _, err := os.Stat(filepath.Join(dir, "postmaster.pid")); err != nil {
		return
	}
	b, err := os.ReadFile(filepath.Join(dir, "postmaster.pid"))
	if err != nil {
		return
	}
	if pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0])); err == nil {
		_ = syscall.Kill(pid, syscall.SIGQUIT) // immediate shutdown
	}
}
