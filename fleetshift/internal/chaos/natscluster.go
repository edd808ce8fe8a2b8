package chaos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleetshift/fleetshift/fleetshift/internal/bench"
	"github.com/fleetshift/fleetshift/shared/broker"
)

// Cluster mode: three nats-server nodes (this binary re-executed as `nats -config FILE`, the server the
// shared module embeds) form a JetStream cluster, every stream has natsReplicas replicas, and fleetshift
// runs as separate services connected to all three URLs, as in compose.yaml. One node, the seeded
// cutNode, runs inside a network namespace of the run, reachable through a veth pair: nats-cut sets the
// namespace's end of the pair down, so packets to and from that node vanish (connections stay open, as
// behind a dead link). When no namespace can be made (not root, no `ip`), the cut is SIGSTOP of the
// node instead, and the fault's note says so.
const (
	natsClusterName = "fleetshift-chaos"
	natsReplicas    = 3
	natsNodes       = 3
)

// natsNode is one nats-server of a cluster-mode run.
type natsNode struct {
	name string
	// client, cluster, monitor are its listen addresses (host:port), the same across restarts.
	client, cluster, monitor string
	storeDir, confPath       string
	// netns is the network namespace it runs in ("": the host's).
	netns  string
	child  *bench.Child
	paused bool
}

func (n *natsNode) url() string { return "nats://" + n.client }

// natsHello is what a `nats` child prints once it accepts connections.
type natsHello struct {
	Name      string `json:"name"`
	ClientURL string `json:"client_url"`
}

func (n *natsNode) start(ctx context.Context) error {
	var wrap []string
	if n.netns != "" {
		wrap = []string{"ip", "netns", "exec", n.netns} // execs in place: the pid is the node's
	}
	c, err := bench.StartChildWrapped(ctx, n.name, wrap, []string{"nats", "-config", n.confPath}, nil, 2*time.Minute)
	if err != nil {
		return err
	}
	n.child, n.paused = c, false
	return nil
}

// kill ends the node with SIGKILL (no shutdown path runs: its store is left as a crash leaves it).
func (n *natsNode) kill() {
	if n.child != nil {
		n.child.Kill()
		n.child, n.paused = nil, false
	}
}

func (n *natsNode) stop() {
	if n.child == nil {
		return
	}
	if n.paused {
		_ = syscall.Kill(n.child.Pid(), syscall.SIGCONT)
	}
	_ = n.child.Stop(30 * time.Second)
	n.child, n.paused = nil, false
}

// healthy is the node's /healthz: 200 once it serves, knows the meta leader and every stream and
// consumer it holds a replica of is current.
func (n *natsNode) healthy(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+n.monitor+"/healthz", nil)
	if err != nil {
		return false
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	res.Body.Close()
	return res.StatusCode == 200
}

// natsCluster is a run's three nodes and the namespace one of them runs in.
type natsCluster struct {
	nodes []*natsNode
	// ns is nil when no network namespace could be made; nsErr says why.
	ns      *netns
	nsErr   string
	cutNode int
}

// urls is the comma-separated list of the nodes' client URLs, as NATS_URL takes it.
func (c *natsCluster) urls() string {
	var u []string
	for _, n := range c.nodes {
		u = append(u, n.url())
	}
	return strings.Join(u, ",")
}

// describe says how the cluster is laid out and how nats-cut cuts.
func (c *natsCluster) describe() string {
	if c.ns == nil {
		return fmt.Sprintf("%d nodes, R%d; no network namespace (%s): nats-cut is SIGSTOP", natsNodes, natsReplicas, c.nsErr)
	}
	return fmt.Sprintf("%d nodes, R%d; %s in network namespace %s (nats-cut: its link down)", natsNodes, natsReplicas,
		c.nodes[c.cutNode].name, c.ns.name)
}

func (c *natsCluster) node(name string) *natsNode {
	for _, n := range c.nodes {
		if n.name == name {
			return n
		}
	}
	return nil
}

// planNATSCluster lays out the nodes under dir: node cutNode in ns (when not nil) on the namespace's
// address, the others on the host (clients on 127.0.0.1, routes on the host's end of the veth pair so
// the namespaced node reaches them).
func planNATSCluster(dir string, ns *netns, cutNode int) (*natsCluster, error) {
	c := &natsCluster{ns: ns, cutNode: cutNode}
	routeHost := "127.0.0.1"
	if ns != nil {
		routeHost = ns.hostIP
	}
	for i := range natsNodes {
		n := &natsNode{name: fmt.Sprintf("nats-%d", i+1)}
		n.storeDir = filepath.Join(dir, n.name)
		n.confPath = filepath.Join(dir, n.name+".conf")
		if ns != nil && i == cutNode {
			// Its own namespace: fixed ports, nothing else listens there.
			n.netns = ns.name
			n.client, n.cluster, n.monitor = ns.nsIP+":4222", ns.nsIP+":6222", ns.nsIP+":8222"
		} else {
			var err error
			if n.client, err = freeAddrOn("127.0.0.1"); err != nil {
				return nil, err
			}
			if n.monitor, err = freeAddrOn("127.0.0.1"); err != nil {
				return nil, err
			}
			if n.cluster, err = freeAddrOn(routeHost); err != nil {
				return nil, err
			}
		}
		c.nodes = append(c.nodes, n)
	}
	return c, nil
}

// writeConfigs writes every node's configuration file.
func (c *natsCluster) writeConfigs(svcPass, issuerPub string) error {
	for _, n := range c.nodes {
		if err := os.MkdirAll(n.storeDir, 0o700); err != nil {
			return fmt.Errorf("nats store dir: %w", err)
		}
		if err := os.WriteFile(n.confPath, []byte(nodeConfig(n, c.nodes, svcPass, issuerPub)), 0o600); err != nil {
			return fmt.Errorf("nats config: %w", err)
		}
	}
	return nil
}

// nodeConfig renders node n's nats-server configuration: JetStream in its own store dir, a route to
// every node, the service user and fleetshift's auth callout as in deploy/nats/nats.conf, and the
// payload and connection limits of fleetshift's embedded server.
func nodeConfig(n *natsNode, all []*natsNode, svcPass, issuerPub string) string {
	var routes []string
	for _, o := range all {
		routes = append(routes, strconv.Quote("nats-route://"+o.cluster))
	}
	return fmt.Sprintf(`# %s of the chaos harness's JetStream cluster
server_name: %q
listen: %q
http: %q
max_payload: %d
max_connections: %d
jetstream { store_dir: %q, max_memory_store: %d }
cluster {
  name: %q
  listen: %q
  routes: [ %s ]
}
authorization {
  users: [ { user: %q, password: %q } ]
  auth_callout { issuer: %q, auth_users: [ %q ] }
}
`, n.name, n.name, n.client, n.monitor, 8<<20, 1<<20, n.storeDir, 1<<30, natsClusterName, n.cluster,
		strings.Join(routes, ", "), broker.ServiceUser, svcPass, issuerPub, broker.ServiceUser)
}

// startNATSCluster makes the run's namespace (when it can), writes the configurations, starts the three
// nodes and waits until the cluster has a meta leader.
func startNATSCluster(ctx context.Context, dir string, run, cutNode int, svcPass, issuerPub string) (*natsCluster, error) {
	ns, nsErr := newNetns(run)
	c, err := planNATSCluster(dir, ns, cutNode)
	if err != nil {
		if ns != nil {
			ns.remove()
		}
		return nil, err
	}
	if nsErr != nil {
		c.nsErr = nsErr.Error()
	}
	if err := c.writeConfigs(svcPass, issuerPub); err != nil {
		c.stop()
		return nil, err
	}
	for _, n := range c.nodes {
		if err := n.start(ctx); err != nil {
			c.stop()
			return nil, err
		}
	}
	nc, err := broker.Connect(c.urls(), "fleetshift-chaos-setup", broker.Credentials{User: broker.ServiceUser, Password: svcPass})
	if err != nil {
		c.stop()
		return nil, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		c.stop()
		return nil, err
	}
	err = poll(ctx, 2*time.Minute, 250*time.Millisecond, "nats cluster meta leader", func() (bool, error) {
		actx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		_, err := js.AccountInfo(actx)
		return err == nil, nil
	})
	if err != nil {
		c.stop()
		return nil, err
	}
	return c, nil
}

func (c *natsCluster) stop() {
	for _, n := range c.nodes {
		n.stop()
	}
	if c.ns != nil {
		c.ns.remove()
	}
}

// cut isolates node n from the other nodes and every client; it returns how.
func (c *natsCluster) cut(n *natsNode) (string, error) {
	if c.ns != nil && n.netns == c.ns.name {
		return "netns link down", c.ns.setLink(false)
	}
	if n.child == nil {
		return "", errors.New(n.name + " is not running")
	}
	n.paused = true
	return "SIGSTOP (no network namespace: " + c.nsErr + ")", syscall.Kill(n.child.Pid(), syscall.SIGSTOP)
}

func (c *natsCluster) restore(n *natsNode) error {
	if c.ns != nil && n.netns == c.ns.name {
		return c.ns.setLink(true)
	}
	if n.child == nil {
		return errors.New(n.name + " is not running")
	}
	n.paused = false
	return syscall.Kill(n.child.Pid(), syscall.SIGCONT)
}

// netns is a network namespace joined to the host by a veth pair (hostIP on the host's end, nsIP inside).
type netns struct {
	name, hostIf, nsIf, hostIP, nsIP string
}

// newNetns makes run's namespace; names and the /30 are derived from the harness's pid so concurrent
// harnesses do not collide.
func newNetns(run int) (*netns, error) {
	pid := os.Getpid()
	base := (run % 60) * 4
	ns := &netns{
		name:   fmt.Sprintf("fschaos-%d-%d", pid, run),
		hostIf: fmt.Sprintf("fc%dr%dh", pid%100000, run%100),
		nsIf:   fmt.Sprintf("fc%dr%dn", pid%100000, run%100),
		hostIP: fmt.Sprintf("10.231.%d.%d", 20+pid%200, base+1),
		nsIP:   fmt.Sprintf("10.231.%d.%d", 20+pid%200, base+2),
	}
	steps := [][]string{
		{"netns", "add", ns.name},
		{"link", "add", ns.hostIf, "type", "veth", "peer", "name", ns.nsIf},
		{"link", "set", ns.nsIf, "netns", ns.name},
		{"addr", "add", ns.hostIP + "/30", "dev", ns.hostIf},
		{"link", "set", ns.hostIf, "up"},
		{"-n", ns.name, "addr", "add", ns.nsIP + "/30", "dev", ns.nsIf},
		{"-n", ns.name, "link", "set", ns.nsIf, "up"},
		{"-n", ns.name, "link", "set", "lo", "up"},
	}
	for i, s := range steps {
		if err := ipCmd(s...); err != nil {
			if i > 0 {
				ns.remove()
			}
			return nil, err
		}
	}
	return ns, nil
}

func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func (ns *netns) remove() {
	_ = ipCmd("link", "del", ns.hostIf) // removes both ends
	_ = ipCmd("netns", "del", ns.name)
}

// setLink sets the namespace's end of the pair up or down. Down, the host still routes to nsIP through
// its end, where packets are dropped: neither side sees a reset, as with a cable pulled.
func (ns *netns) setLink(up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	return ipCmd("-n", ns.name, "link", "set", ns.nsIf, state)
}

// freeAddrOn returns host:port with a port free on host right now.
func freeAddrOn(host string) (string, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", fmt.Errorf("find a free port on %s: %w", host, err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// replicaProblems lists what keeps the streams (and, with consumers, their durable consumers) from full
// redundancy: a stream configured with fewer than want replicas, without a leader, with fewer than want
// peers, or a peer offline or not current. Empty means every one has its leader and want-1 current
// followers.
func replicaProblems(ctx context.Context, js jetstream.JetStream, want int, consumers bool) ([]string, error) {
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	names := js.StreamNames(lctx)
	var list []string
	for n := range names.Name() {
		list = append(list, n)
	}
	if err := names.Err(); err != nil && !errors.Is(err, jetstream.ErrEndOfData) {
		return nil, fmt.Errorf("list streams: %w", err)
	}
	if len(list) == 0 {
		return nil, errors.New("list streams: none")
	}
	slices.Sort(list)
	var out []string
	for _, name := range list {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, err := js.Stream(sctx, name)
		if err != nil {
			cancel()
			out = append(out, fmt.Sprintf("%s: %v", name, err))
			continue
		}
		info := st.CachedInfo()
		if info.Config.Replicas < want {
			out = append(out, fmt.Sprintf("%s: configured with %d replicas", name, info.Config.Replicas))
		}
		out = append(out, clusterProblems(name, info.Cluster, want)...)
		if consumers {
			cl := st.ListConsumers(sctx)
			for ci := range cl.Info() {
				if ci.Config.Durable != "" {
					out = append(out, clusterProblems(name+"/"+ci.Name, ci.Cluster, want)...)
				}
			}
			if err := cl.Err(); err != nil && !errors.Is(err, jetstream.ErrEndOfData) {
				out = append(out, fmt.Sprintf("%s: consumers: %v", name, err))
			}
		}
		cancel()
	}
	return out, nil
}

// clusterProblems judges one stream's or consumer's cluster info.
func clusterProblems(name string, ci *jetstream.ClusterInfo, want int) []string {
	if ci == nil {
		return []string{name + ": no cluster info"}
	}
	var out []string
	peers := 0
	if ci.Leader == "" {
		out = append(out, name+": no leader")
	} else {
		peers++
	}
	for _, p := range ci.Replicas {
		switch {
		case p.Pending:
			out = append(out, fmt.Sprintf("%s: %s pending", name, p.Name))
			continue
		case p.Offline:
			out = append(out, fmt.Sprintf("%s: %s offline", name, p.Name))
		case !p.Current:
			out = append(out, fmt.Sprintf("%s: %s not current (lag %d, last seen %s ago)", name, p.Name, p.Lag, p.Active.Round(time.Millisecond)))
		}
		peers++
	}
	if peers < want {
		out = append(out, fmt.Sprintf("%s: %d of %d peers", name, peers, want))
	}
	return out
}

// RunNATSNode is the `nats` subcommand: a nats-server from the configuration file at path until stdin
// closes (or SIGKILL, which is the point). It prints a natsHello line once it accepts connections.
func RunNATSNode(ctx context.Context, path string) error {
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		return fmt.Errorf("nats config: %w", err)
	}
	opts.NoSigs = true
	lvl := os.Getenv(EnvLogLevel)
	verbose := lvl == "debug" || lvl == "info" || lvl == "warn"
	opts.NoLog = !verbose
	s, err := server.NewServer(opts)
	if err != nil {
		return fmt.Errorf("nats %s: %w", opts.ServerName, err)
	}
	if verbose {
		s.ConfigureLogger()
	}
	go s.Start()
	if !s.ReadyForConnections(time.Minute) {
		s.Shutdown()
		return fmt.Errorf("nats %s: not ready within 1m", opts.ServerName)
	}
	if err := bench.PrintHello(natsHello{Name: opts.ServerName, ClientURL: s.ClientURL()}); err != nil {
		s.Shutdown()
		return err
	}
	stdin := make(chan struct{})
	go func() { bench.WaitStdinClosed(); close(stdin) }()
	select {
	case <-ctx.Done():
	case <-stdin:
	}
	s.Shutdown()
	s.WaitForShutdown()
	return nil
}
