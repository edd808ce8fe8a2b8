package chaos

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetshift/fleetshift/fleetshift/internal/bench"
	"github.com/fleetshift/fleetshift/fleetshift/internal/localpg"
	"github.com/fleetshift/fleetshift/shared/broker"
)

// Env variables the `server` child reads besides fleetshift's own configuration.
const (
	// EnvRoles is the comma-separated roles the server child runs (empty: all, as serve).
	EnvRoles = "FLEETSHIFT_CHAOS_ROLES"
	// EnvLogLevel is the log level of the fleetshift processes (default error; their stderr is the
	// harness's, each line prefixed with the process name).
	EnvLogLevel = "FLEETSHIFT_CHAOS_LOG_LEVEL"
)

// Hello is what a server child prints once it serves.
type Hello struct {
	HTTPURL string `json:"http_url"`
	NATSURL string `json:"nats_url"`
}

// proc is one fleetshift process of a run: its name, how to start it again, and the running child.
type proc struct {
	name  string
	env   []string
	child *bench.Child
	hello Hello
}

func (p *proc) start(ctx context.Context) error {
	c, err := bench.StartChild(ctx, p.name, []string{"server"}, p.env, 2*time.Minute)
	if err != nil {
		return err
	}
	var h Hello
	if err := json.Unmarshal(c.Hello, &h); err != nil {
		c.Kill()
		return fmt.Errorf("start %s: hello %q: %w", p.name, c.Hello, err)
	}
	p.child, p.hello = c, h
	return nil
}

// kill ends the process with SIGKILL (no shutdown path runs).
func (p *proc) kill() {
	if p.child != nil {
		p.child.Kill()
		p.child = nil
	}
}

func (p *proc) stop() {
	if p.child != nil {
		_ = p.child.Stop(30 * time.Second)
		p.child = nil
	}
}

// freeAddr returns a 127.0.0.1 address with a port free right now, so a restarted process binds the
// same URLs its clients hold.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// deployment is the fleetshift processes of a run: one `serve` (mode serve), or a core process (embedded
// NATS, ingest, stateapi, notifier) plus two replicas each of planner, dispatcher and healthwatch as
// separate processes (mode services). In mode cluster the processes are those of mode services, and the
// core embeds no NATS: every process connects to the three nodes of the run's cluster.
type deployment struct {
	mode    string
	core    *proc
	workers []*proc
	dataDir string
	svcPass string
	admin   string
	webhook string
}

func (d *deployment) all() []*proc { return append([]*proc{d.core}, d.workers...) }

// externalNATS is the cluster a cluster-mode deployment connects to.
type externalNATS struct {
	// urls is NATS_URL (every node) and what devices are handed; issuerSeed signs the auth callout's
	// answers (the nodes trust its public key).
	urls, issuerSeed string
}

func startDeployment(ctx context.Context, mode, dbURL, dataDir, adminToken, webhookToken, svcPass string, ext *externalNATS) (*deployment, error) {
	httpAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	natsAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	d := &deployment{mode: mode, dataDir: dataDir, svcPass: svcPass, admin: adminToken, webhook: webhookToken}
	common := []string{
		"DATABASE_URL=" + dbURL,
		"FLEETSHIFT_ADMIN_TOKEN=" + adminToken,
		"FLEETSHIFT_WEBHOOK_TOKEN=" + webhookToken,
		"FLEETSHIFT_LOG_LEVEL=" + cmp.Or(os.Getenv(EnvLogLevel), "error"),
		"FLEETSHIFT_LOG_FORMAT=console",
	}
	separate := mode == ModeServices || mode == ModeCluster
	coreRoles := ""
	if separate {
		coreRoles = "ingest,stateapi,notifier"
	}
	coreNATS := []string{"NATS_URL=", "FLEETSHIFT_NATS_ADDR=" + natsAddr}
	if ext != nil {
		common = append(common, "NATS_USER="+broker.ServiceUser, "NATS_PASSWORD="+svcPass,
			"FLEETSHIFT_NATS_ISSUER_SEED="+ext.issuerSeed, fmt.Sprintf("FLEETSHIFT_STREAM_REPLICAS=%d", natsReplicas),
			"FLEETSHIFT_PUBLIC_NATS_URL="+ext.urls)
		coreNATS = []string{"NATS_URL=" + ext.urls}
	}
	d.core = &proc{name: "serve", env: append(append(slices.Clone(common),
		"FLEETSHIFT_HTTP_ADDR="+httpAddr, "FLEETSHIFT_DATA_DIR="+dataDir, EnvRoles+"="+coreRoles), coreNATS...)}
	if separate {
		d.core.name = "core"
	}
	if err := d.core.start(ctx); err != nil {
		return nil, err
	}
	if separate {
		for _, role := range []string{"planner", "dispatcher", "healthwatch"} {
			for i := range 2 {
				dir := filepath.Join(dataDir, fmt.Sprintf("%s-%d", role, i))
				if err := os.MkdirAll(dir, 0o700); err != nil {
					d.stop()
					return nil, fmt.Errorf("worker data dir: %w", err)
				}
				w := &proc{name: fmt.Sprintf("%s-%d", role, i), env: append(slices.Clone(common),
					"FLEETSHIFT_HTTP_ADDR=127.0.0.1:0", "FLEETSHIFT_DATA_DIR="+dir,
					"NATS_URL="+d.core.hello.NATSURL, "NATS_USER="+broker.ServiceUser, "NATS_PASSWORD="+svcPass,
					EnvRoles+"="+role)}
				if err := w.start(ctx); err != nil {
					d.stop()
					return nil, err
				}
				d.workers = append(d.workers, w)
			}
		}
	}
	return d, nil
}

func (d *deployment) stop() {
	for _, p := range d.workers {
		p.stop()
	}
	if d.core != nil {
		d.core.stop()
	}
}

// ready polls the core's /readyz until it answers 200 (database and NATS reachable).
func (d *deployment) ready(ctx context.Context, timeout time.Duration) error {
	return poll(ctx, timeout, 100*time.Millisecond, "readyz", func() (bool, error) {
		req, err := http.NewRequestWithContext(ctx, "GET", d.core.hello.HTTPURL+"/readyz", nil)
		if err != nil {
			return false, err
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			return false, nil
		}
		res.Body.Close()
		return res.StatusCode == 200, nil
	})
}

// simProc is one simulator child: devices named <prefix>-<index> whose failures are drawn with seed.
type simProc struct {
	prefix  string
	seed    uint64
	devices int
	child   *bench.Child
	stopped bool
}

// SimArgs are the arguments of the `sim` subcommand.
type SimArgs struct {
	Server, Key, Admin, Fleet, Image, FailRate, Prefix string
	Devices                                            int
	Seed                                               uint64
}

// Args renders the subcommand line.
func (a SimArgs) Args() []string {
	return []string{"sim", "-server", a.Server, "-key", a.Key, "-admin", a.Admin, "-fleet", a.Fleet, "-image", a.Image,
		"-fail-rate", a.FailRate, "-prefix", a.Prefix, "-devices", fmt.Sprint(a.Devices), "-seed", fmt.Sprint(a.Seed)}
}

func startSim(ctx context.Context, a SimArgs) (*simProc, error) {
	c, err := bench.StartChild(ctx, "sim-"+a.Prefix, a.Args(), nil, time.Minute)
	if err != nil {
		return nil, err
	}
	return &simProc{prefix: a.Prefix, seed: a.Seed, devices: a.Devices, child: c}, nil
}

// cut stops the simulator process (SIGSTOP): its devices neither report nor read, their connections
// stay open, as a device behind a dead link.
func (s *simProc) cut() error {
	s.stopped = true
	return syscall.Kill(s.child.Pid(), syscall.SIGSTOP)
}

func (s *simProc) restore() error {
	s.stopped = false
	return syscall.Kill(s.child.Pid(), syscall.SIGCONT)
}

func (s *simProc) stop() {
	if s.child == nil {
		return
	}
	if s.stopped {
		_ = s.restore()
	}
	_ = s.child.Stop(time.Minute)
	s.child = nil
}

// pgCluster is the PostgreSQL cluster the harness owns (stopped and started as a fault).
type pgCluster struct {
	opts    localpg.Options
	cluster *localpg.Cluster
}

func startPG(ctx context.Context, dir string) (*pgCluster, error) {
	o := localpg.Options{Dir: dir, Database: "postgres"}
	c, err := localpg.Start(ctx, o)
	if err != nil {
		return nil, err
	}
	p := &pgCluster{opts: o, cluster: c}
	// Seven processes with a pool of 16 each, plus the harness: more than the default 100.
	if err := execSQL(ctx, c.URL, `ALTER SYSTEM SET max_connections = 400`); err != nil {
		_ = c.Stop()
		return nil, err
	}
	if err := execSQL(ctx, c.URL, `ALTER SYSTEM SET fsync = off`); err != nil {
		_ = c.Stop()
		return nil, err
	}
	if err := p.down(); err != nil {
		return nil, err
	}
	if err := p.up(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// down is `pg_ctl stop -m fast`: sessions are ended, new connections refused.
func (p *pgCluster) down() error { return p.cluster.Stop() }

func (p *pgCluster) up(ctx context.Context) error {
	c, err := localpg.Start(ctx, p.opts)
	if err != nil {
		return err
	}
	p.cluster = c
	return nil
}

func (p *pgCluster) url() string { return p.cluster.URL }

func execSQL(ctx context.Context, url, sql string) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return fmt.Errorf("connect to the harness's PostgreSQL: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("%s: %w", sql, err)
	}
	return nil
}
