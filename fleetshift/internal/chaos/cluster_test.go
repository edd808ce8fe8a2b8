package chaos

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/require"

	"github.com/fleetshift/fleetshift/shared/broker"
	"github.com/fleetshift/fleetshift/shared/natsauth"
)

func kinds(p plan) []string {
	var out []string
	for _, f := range p.faults {
		out = append(out, f.Kind)
	}
	return out
}

// Seeds that stay in mode serve or services keep the plans they had before cluster mode (the results in
// docs/reliability.md were made with them): seeds 2 and 3 of those results, drawn with their mode.
func TestPlansBeforeClusterModeAreKept(t *testing.T) {
	p := choose(2, ModeServe)
	require.Equal(t, 0.0, p.failP)
	require.Equal(t, []Fault{
		{Kind: FaultKill, Target: "serve", At: 7 * time.Second, Down: 0},
		{Kind: FaultCutoff, Target: p.faults[1].Target, At: 9 * time.Second, Down: 14 * time.Second},
		{Kind: FaultPoison, Target: p.faults[2].Target, At: 11 * time.Second},
		{Kind: FaultPG, Target: "postgres", At: 19 * time.Second, Down: 21 * time.Second},
	}, p.faults)
	p = choose(3, ModeServices)
	require.Equal(t, 0.05, p.failP)
	require.False(t, p.rollback)
	require.Equal(t, []string{FaultKill, FaultPG, FaultPoison}, kinds(p))
	require.Equal(t, "dispatcher-0", p.faults[0].Target)
	require.Equal(t, []time.Duration{2 * time.Second, 12 * time.Second, 19 * time.Second},
		[]time.Duration{p.faults[0].At, p.faults[1].At, p.faults[2].At})
}

func TestFaultsPerMode(t *testing.T) {
	modes := map[string]int{}
	for seed := uint64(1); seed <= 300; seed++ {
		p := choose(seed, "")
		modes[p.mode]++
		require.Equal(t, p, choose(seed, ""), "seeded: the same plan twice")
		nats := 0
		for _, f := range p.faults {
			switch f.Kind {
			case FaultNATSKill:
				nats++
				require.Contains(t, []string{"nats-1", "nats-2", "nats-3"}, f.Target)
				require.LessOrEqual(t, f.Down, 3*time.Second)
			case FaultNATSCut:
				nats++
				require.Equal(t, fmt.Sprintf("nats-%d", p.cutNode+1), f.Target, "the cut node is the one in the namespace")
				require.True(t, f.Down >= 5*time.Second && f.Down <= 20*time.Second, f.Down)
			case FaultKill:
				if p.mode == ModeServe {
					require.Equal(t, "serve", f.Target)
				} else {
					require.NotEqual(t, "serve", f.Target)
				}
			}
			require.True(t, f.At >= time.Second && f.At <= 20*time.Second)
		}
		if p.mode == ModeCluster {
			require.GreaterOrEqual(t, nats, 1, "seed %d: a cluster run has a NATS fault", seed)
		} else {
			require.Zero(t, nats, "seed %d: NATS faults only in cluster mode", seed)
		}
		require.Contains(t, kinds(p), FaultPoison)
	}
	for _, m := range Modes {
		require.Greater(t, modes[m], 60, "mode %s drawn %d times in 300 seeds", m, modes[m])
	}
	for _, m := range Modes {
		require.Equal(t, m, choose(5, m).mode)
	}
}

func TestClusterProblems(t *testing.T) {
	ok := &jetstream.ClusterInfo{Leader: "nats-1", Replicas: []*jetstream.PeerInfo{
		{Name: "nats-2", Current: true}, {Name: "nats-3", Current: true}}}
	require.Empty(t, clusterProblems("S", ok, 3))
	require.Equal(t, []string{"S: no cluster info"}, clusterProblems("S", nil, 3))
	require.Equal(t, []string{"S: no leader", "S: 2 of 3 peers"}, clusterProblems("S", &jetstream.ClusterInfo{Replicas: []*jetstream.PeerInfo{
		{Name: "nats-2", Current: true}, {Name: "nats-3", Current: true}}}, 3))
	require.Equal(t, []string{"S: nats-3 offline"}, clusterProblems("S", &jetstream.ClusterInfo{Leader: "nats-1", Replicas: []*jetstream.PeerInfo{
		{Name: "nats-2", Current: true}, {Name: "nats-3", Offline: true}}}, 3))
	require.Equal(t, []string{"S: nats-2 not current (lag 7, last seen 12s ago)"}, clusterProblems("S", &jetstream.ClusterInfo{Leader: "nats-1",
		Replicas: []*jetstream.PeerInfo{{Name: "nats-2", Lag: 7, Active: 12 * time.Second}, {Name: "nats-3", Current: true}}}, 3))
	require.Equal(t, []string{"S: nats-3 pending", "S: 2 of 3 peers"}, clusterProblems("S", &jetstream.ClusterInfo{Leader: "nats-1",
		Replicas: []*jetstream.PeerInfo{{Name: "nats-2", Current: true}, {Name: "nats-3", Pending: true}}}, 3))
}

func issuer(t *testing.T) string {
	seed, err := natsauth.NewIssuer()
	require.NoError(t, err)
	kp, err := nkeys.FromSeed([]byte(seed))
	require.NoError(t, err)
	pub, err := kp.PublicKey()
	require.NoError(t, err)
	return pub
}

// The generated configurations are what nats-server reads: three nodes of one JetStream cluster with
// routes to each other, their own store dirs and ports, the service user and the auth callout.
func TestNodeConfig(t *testing.T) {
	c, err := planNATSCluster(t.TempDir(), nil, 1)
	require.NoError(t, err)
	pub := issuer(t)
	require.NoError(t, c.writeConfigs("svc-pass", pub))
	require.Len(t, strings.Split(c.urls(), ","), 3)
	stores, ports := map[string]bool{}, map[string]bool{}
	for _, n := range c.nodes {
		o, err := server.ProcessConfigFile(n.confPath)
		require.NoError(t, err)
		require.Equal(t, n.name, o.ServerName)
		require.Equal(t, n.client, fmt.Sprintf("%s:%d", o.Host, o.Port))
		require.Equal(t, n.monitor, fmt.Sprintf("%s:%d", o.HTTPHost, o.HTTPPort))
		require.True(t, o.JetStream)
		require.Equal(t, n.storeDir, o.StoreDir)
		require.Equal(t, natsClusterName, o.Cluster.Name)
		require.Equal(t, n.cluster, fmt.Sprintf("%s:%d", o.Cluster.Host, o.Cluster.Port))
		var routes []string
		for _, r := range o.Routes {
			routes = append(routes, r.Host)
		}
		want := []string{c.nodes[0].cluster, c.nodes[1].cluster, c.nodes[2].cluster}
		require.Equal(t, want, routes)
		require.Equal(t, int32(8<<20), o.MaxPayload)
		require.Len(t, o.Users, 1)
		require.Equal(t, broker.ServiceUser, o.Users[0].Username)
		require.Equal(t, "svc-pass", o.Users[0].Password)
		require.NotNil(t, o.AuthCallout)
		require.Equal(t, pub, o.AuthCallout.Issuer)
		require.Equal(t, []string{broker.ServiceUser}, o.AuthCallout.AuthUsers)
		stores[o.StoreDir], ports[n.client], ports[n.cluster], ports[n.monitor] = true, true, true, true
	}
	require.Len(t, stores, 3)
	require.Len(t, ports, 9)
}

// The replica check against a real 3-node cluster started from the generated configurations: clean
// with every node up, naming the node once one is down, and healthz following the node.
func TestReplicaProblemsOnARealCluster(t *testing.T) {
	c, err := planNATSCluster(t.TempDir(), nil, 0)
	require.NoError(t, err)
	require.NoError(t, c.writeConfigs("svc-pass", issuer(t)))
	var servers []*server.Server
	for _, n := range c.nodes {
		o, err := server.ProcessConfigFile(n.confPath)
		require.NoError(t, err)
		o.NoSigs, o.NoLog = true, true
		s, err := server.NewServer(o)
		require.NoError(t, err)
		go s.Start()
		require.True(t, s.ReadyForConnections(30*time.Second))
		servers = append(servers, s)
		t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	}
	nc, err := broker.Connect(c.urls(), "test", broker.Credentials{User: broker.ServiceUser, Password: "svc-pass"})
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx := context.Background()
	require.Eventually(t, func() bool {
		_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "R3", Subjects: []string{"r3.>"}, Replicas: 3})
		return err == nil
	}, 60*time.Second, 250*time.Millisecond, "an R3 stream once the cluster has a meta leader")
	_, err = js.CreateOrUpdateConsumer(ctx, "R3", jetstream.ConsumerConfig{Durable: "d", AckPolicy: jetstream.AckExplicitPolicy})
	require.NoError(t, err)
	for i := range 20 {
		_, err := js.Publish(ctx, fmt.Sprintf("r3.%d", i), []byte("x"))
		require.NoError(t, err)
	}
	var probs []string
	require.Eventually(t, func() bool {
		probs, err = replicaProblems(ctx, js, 3, true)
		return err == nil && len(probs) == 0
	}, 60*time.Second, 250*time.Millisecond, "all current: %v %v", probs, err)
	for _, n := range c.nodes {
		require.Eventually(t, func() bool { return n.healthy(ctx) }, 30*time.Second, 250*time.Millisecond, n.name)
	}

	// A stream with one replica is a problem of its own.
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: "R1", Subjects: []string{"r1.>"}, Replicas: 1})
	require.NoError(t, err)
	probs, err = replicaProblems(ctx, js, 3, false)
	require.NoError(t, err)
	require.Contains(t, probs, "R1: configured with 1 replicas")
	require.NoError(t, js.DeleteStream(ctx, "R1"))

	// Stop a node that is not the stream's leader (the check must see the follower go away).
	st, err := js.Stream(ctx, "R3")
	require.NoError(t, err)
	leader := st.CachedInfo().Cluster.Leader
	victim := 0
	for i, n := range c.nodes {
		if n.name != leader {
			victim = i
		}
	}
	servers[victim].Shutdown()
	servers[victim].WaitForShutdown()
	require.False(t, c.nodes[victim].healthy(ctx))
	name := c.nodes[victim].name
	require.Eventually(t, func() bool {
		probs, err = replicaProblems(ctx, js, 3, false)
		return err == nil && slices.ContainsFunc(probs, func(p string) bool {
			return strings.HasPrefix(p, "R3: "+name+" ") && (strings.Contains(p, "offline") || strings.Contains(p, "not current"))
		})
	}, 60*time.Second, 250*time.Millisecond, "the stopped node named: %v %v", probs, err)
}

// A cluster run's table names the NATS faults with their recovery, and the summary has a row per fault.
func TestReportNamesNATSFaults(t *testing.T) {
	r := Result{Run: 1, Seed: 3, Mode: ModeCluster, NATS: "3 nodes, R3; nats-1 in network namespace x (nats-cut: its link down)",
		Status: "completed", Faults: []Fault{
			{Kind: FaultNATSCut, Target: "nats-1", At: 14 * time.Second, Down: 16 * time.Second, Recovery: 1234 * time.Millisecond, Note: "netns link down"},
			{Kind: FaultNATSKill, Target: "nats-2", At: 18 * time.Second, Recovery: 2500 * time.Millisecond},
			{Kind: FaultPoison, At: 19 * time.Second},
		}}
	var b strings.Builder
	printRun(&b, r)
	out := b.String()
	require.Contains(t, out, "mode cluster")
	require.Contains(t, out, "  nats: 3 nodes, R3; nats-1 in network namespace x")
	require.Contains(t, out, "| nats-cut | nats-1 | 14s | 16s | 1.23s | netns link down |")
	require.Contains(t, out, "| nats-kill-9 | nats-2 | 18s | 0s | 2.5s |  |")
	b.Reset()
	r2 := r
	r2.Faults = []Fault{{Kind: FaultNATSKill, Target: "nats-3", Recovery: 4 * time.Second}}
	r2.Violation = []string{"x"}
	printSummary(&b, []Result{r, r2})
	require.Contains(t, b.String(), "| nats-kill-9 | 2 | 1 | 4s | 4s |")
	require.Contains(t, b.String(), "| nats-cut | 1 | 0 | 1.23s | 1.23s |")
}
