// Package broker runs the embedded NATS JetStream server and opens fleetshift's connections to NATS.
package broker

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// ServiceUser is the NATS user fleetshift's own services authenticate as on the embedded server.
const ServiceUser = "fleetshift-service"

// SystemUser is the embedded server's user in the system account ($SYS), with ServiceUser's password:
// healthwatch reads connect and disconnect advisories through it (device presence).
const SystemUser = "fleetshift-system"

// EmbeddedConfig configures the embedded server.
type EmbeddedConfig struct {
	// Addr is host:port to listen on; port 0 picks a free port. When the port is taken and
	// FallbackOnBusy is set, the next free port of the following 77 is used (stable across restarts),
	// else a random one; the caller logs the resulting URL.
	Addr           string
	FallbackOnBusy bool
	// StoreDir is where JetStream keeps its files. Required: left empty, nats-server would use a shared
	// "jetstream" folder in the system temp dir that outlives the server.
	StoreDir string
	// ServicePassword is the password of ServiceUser. Required: the server accepts no anonymous clients.
	ServicePassword string
	// Configure, when set, may adjust the server options before start (auth callout, accounts).
	Configure func(*server.Options) error
}

// Embedded is a running embedded NATS server.
type Embedded struct {
	Server *server.Server
	// FellBack is true when the configured port was busy and another was picked.
	FellBack bool
}

// StartEmbedded starts a JetStream-enabled NATS server and waits until it accepts connections.
func StartEmbedded(cfg EmbeddedConfig) (*Embedded, error) {
	if cfg.ServicePassword == "" {
		return nil, errors.New("start embedded nats: a service password is required")
	}
	if cfg.StoreDir == "" {
		return nil, errors.New("start embedded nats: a JetStream store directory is required")
	}
	host, portStr, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("start embedded nats: FLEETSHIFT_NATS_ADDR %q: %w", cfg.Addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return nil, fmt.Errorf("start embedded nats: FLEETSHIFT_NATS_ADDR %q: bad port", cfg.Addr)
	}
	fellBack := false
	if port != 0 && !portFree(host, port) {
		if !cfg.FallbackOnBusy {
			return nil, fmt.Errorf("start embedded nats: %s is in use (another NATS server?); set FLEETSHIFT_NATS_ADDR to a free address, or port 0 to pick one", cfg.Addr)
		}
		// Prefer the next free port in a small fixed range, so the URL stays the same across restarts
		// (devices keep the NATS URL handed out at registration); a random port only as a last resort.
		fellBack = true
		next := -1
		for p := port + 1; p <= port+77 && p <= 65535; p++ {
			if portFree(host, p) {
				next = p
				break
			}
		}
		port = next
	}
	if port == 0 {
		port = -1 // nats-server picks a random free port for -1
	}
	opts := &server.Options{
		ServerName:         "fleetshift",
		Host:               host,
		Port:               port,
		JetStream:          true,
		StoreDir:           cfg.StoreDir,
		NoSigs:             true,
		NoLog:              true,
		MaxPayload:         8 << 20,
		JetStreamMaxMemory: 1 << 30,
		MaxConn:            1 << 20, // one connection per device; nats-server's default 65,536 is below a large fleet
		Users:              []*server.User{{Username: ServiceUser, Password: cfg.ServicePassword}},
	}
	sys := server.NewAccount("$SYS")
	opts.Accounts = []*server.Account{sys}
	opts.SystemAccount = "$SYS"
	opts.Users = append(opts.Users, &server.User{Username: SystemUser, Password: cfg.ServicePassword, Account: sys})
	if cfg.Configure != nil {
		if err := cfg.Configure(opts); err != nil {
			return nil, fmt.Errorf("configure embedded nats: %w", err)
		}
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("start embedded nats: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(15 * time.Second) {
		s.Shutdown()
		return nil, errors.New("start embedded nats: not ready within 15s")
	}
	return &Embedded{Server: s, FellBack: fellBack}, nil
}

// ClientURL is the URL clients connect to.
func (e *Embedded) ClientURL() string { return e.Server.ClientURL() }

// Shutdown stops the server and waits for it to finish.
func (e *Embedded) Shutdown() {
	e.Server.Shutdown()
	e.Server.WaitForShutdown()
}

func portFree(host string, port int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return false
	}
	_ = l.Close()
	return true
}

// Credentials authenticate a client connection.
type Credentials struct {
	User, Password, Token, CredsFile string
}

// Keep-alive of service connections: a server that answers none of MaxPingsOut pings sent PingInterval
// apart is given up and the next one of the URL list tried. A NATS node cut off from the network resets
// no connection; with nats.go's defaults (2 minutes, twice) a service on it would stall 4-6 minutes.
const (
	PingInterval = 10 * time.Second
	MaxPingsOut  = 3
)

// Connect opens a NATS connection named name with reconnects enabled forever (services outlive
// broker restarts) and the keep-alive above.
func Connect(url, name string, cred Credentials, extra ...nats.Option) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.PingInterval(PingInterval),
		nats.MaxPingsOutstanding(MaxPingsOut),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.RetryOnFailedConnect(false),
		nats.Timeout(5 * time.Second),
	}
	switch {
	case cred.CredsFile != "":
		opts = append(opts, nats.UserCredentials(cred.CredsFile))
	case cred.User != "":
		opts = append(opts, nats.UserInfo(cred.User, cred.Password))
	case cred.Token != "":
		opts = append(opts, nats.Token(cred.Token))
	}
	nc, err := nats.Connect(url, append(opts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("connect to nats %s: %w", url, err)
	}
	return nc, nil
}
