package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/fleetshift/fleetshift/agent/sim"
	"github.com/fleetshift/fleetshift/shared/natsauth"
	"github.com/fleetshift/fleetshift/shared/wait"
)

// startClusterNode runs one node of the deployment's NATS configuration (deploy/nats/nats.conf, the
// file compose mounts) in process, with its variables filled in and its ports, routes and store made
// local to the test; it returns the client URL.
func startClusterNode(t *testing.T, servicePassword, issuerPublic string) string {
	t.Helper()
	raw, err := os.ReadFile("../../../deploy/nats/nats.conf")
	if err != nil {
		t.Fatal(err)
	}
	conf := strings.NewReplacer("$NODE", "nats-test", "$FLEETSHIFT_NATS_SERVICE_PASSWORD", servicePassword,
		"$FLEETSHIFT_NATS_ISSUER_PUBLIC", issuerPublic).Replace(string(raw))
	path := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("deploy/nats/nats.conf: %v", err)
	}
	opts.Host, opts.Port, opts.HTTPPort = "127.0.0.1", -1, 0
	opts.Cluster = server.ClusterOpts{}
	opts.Routes = nil
	opts.StoreDir = t.TempDir()
	opts.NoSigs = true
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("nats server from deploy/nats/nats.conf: %v", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	t.Cleanup(ns.Shutdown)
	return ns.ClientURL()
}

// TestExternalClusterDisconnectIsOfflineAtOnce: against an external NATS server running the
// deployment's configuration, healthwatch follows the system account's disconnect advisories as
// FLEETSHIFT_NATS_SYSTEM_USER, so devices whose connections close are offline at once (reason
// "disconnected", not missed heartbeats, which this test sets far beyond its deadline).
func TestExternalClusterDisconnectIsOfflineAtOnce(t *testing.T) {
	t.Parallel()
	seed, err := natsauth.NewIssuer()
	if err != nil {
		t.Fatal(err)
	}
	kp, err := nkeys.FromSeed([]byte(seed))
	if err != nil {
		t.Fatal(err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	const password = "service-password-for-this-test"
	url := startClusterNode(t, password, pub)

	e := newEnv(t)
	e.srv = e.startWith(map[string]string{
		"NATS_URL": url, "NATS_USER": "fleetshift-service", "NATS_PASSWORD": password,
		"FLEETSHIFT_NATS_ISSUER_SEED": seed, "FLEETSHIFT_NATS_SYSTEM_USER": "fleetshift-system",
		"FLEETSHIFT_HEARTBEAT_SECONDS": "600",
	})
	if e.srv.Embedded != nil || e.srv.SystemNC == nil {
		t.Fatal("want an external NATS and a system account connection")
	}
	state := t.TempDir()
	_, stop := e.runSimStoppable("extdisc", 2, []string{"acme/app:1.0"}, func(c *sim.Config) { c.StateDir = state })
	wait.For(t, 60*time.Second, func() error {
		if on, _, _, _ := e.presenceCounts("extdisc"); on != 2 {
			return fmt.Errorf("online %d", on)
		}
		return nil
	})
	stop()
	e.waitDisconnected("extdisc", 2)
}
