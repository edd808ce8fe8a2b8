package device

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// Reconnect timing every Conn keeps: after a lost or refused connection, wait ReconnectWait plus a random
// part of ReconnectJitter before the next attempt, forever (so a refused crowd does not return in lockstep).
const (
	ReconnectWait   = 2 * time.Second
	ReconnectJitter = 3 * time.Second
	// StallProbe is how long a connection whose request timed out gets to answer a PING before it is
	// taken for stalled and dropped (see Conn).
	StallProbe = 5 * time.Second
)

// Conn is a device's NATS connection as the engine uses it: connected with the device's own credentials,
// subscribed to its target subject on every (re)connect, reconnecting by itself until closed. The agent
// uses nats.go (Config.Dial unset); the simulator plugs in a lighter implementation of the same protocol.
//
// A request that times out makes the connection probe its server: a PING that gets no PONG within
// StallProbe means the link is stalled (a cable pulled, a node cut off: nothing resets the TCP
// connection, and the 2-minute keep-alive pings would notice only after minutes), so the connection is
// dropped and made again, to the next server of the URL list. A slow answer with a live link (a stream
// electing its leader) keeps the connection.
type Conn interface {
	// Request publishes data with headers hdr (nil: none) to subj, with a reply subject under the
	// connection's inbox prefix, and returns the one reply. A "no responders" status is an error.
	Request(ctx context.Context, subj string, hdr nats.Header, data []byte) (*nats.Msg, error)
	// Connected reports whether the connection is up now.
	Connected() bool
	// Close ends the connection for good.
	Close()
}

// ConnSpec is what a Dialer opens a device's connection with.
type ConnSpec struct {
	URL, Name      string
	User, Password string
	// InboxPrefix is the prefix of reply subjects (the device may receive only under its own).
	InboxPrefix string
	// Subject is subscribed on every connect; the data of each message on it goes to OnMessage.
	Subject   string
	OnMessage func(data []byte)
	// OnConnect runs after every connect and reconnect, once Subject is subscribed.
	OnConnect func()
	// OnError receives asynchronous errors: errors.Is(err, nats.ErrPermissionViolation) means the server
	// refused the subscription (pushes cannot arrive).
	OnError func(error)
	// OnDisconnect runs when an established connection is lost.
	OnDisconnect func(error)
}

// Dialer opens a Conn. It returns an error only when the spec cannot work at all: a server that cannot
// be reached yet is retried in the background (ReconnectWait, ReconnectJitter) and OnConnect says when.
type Dialer func(ConnSpec) (Conn, error)

// NATSGoDialer is the agent's Dialer: nats.go with opts appended to the engine's own options.
func NATSGoDialer(opts ...nats.Option) Dialer {
	return func(s ConnSpec) (Conn, error) {
		if s.OnMessage == nil {
			s.OnMessage = func([]byte) {}
		}
		if s.OnConnect == nil {
			s.OnConnect = func() {}
		}
		if s.OnError == nil {
			s.OnError = func(error) {}
		}
		if s.OnDisconnect == nil {
			s.OnDisconnect = func(error) {}
		}
		base := []nats.Option{
			nats.Name(s.Name),
			nats.UserInfo(s.User, s.Password),
			nats.CustomInboxPrefix(s.InboxPrefix),
			nats.RetryOnFailedConnect(true),
			nats.MaxReconnects(-1),
			nats.ReconnectWait(ReconnectWait),
			nats.ReconnectJitter(ReconnectJitter, 5*time.Second), // the second: over TLS
			nats.IgnoreAuthErrorAbort(),
			// No buffering while disconnected: a report that cannot go now stays pending in the agent.
			nats.ReconnectBufSize(-1),
			nats.ConnectHandler(func(*nats.Conn) { s.OnConnect() }),
			nats.ReconnectHandler(func(*nats.Conn) { s.OnConnect() }),
			nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { s.OnDisconnect(err) }),
			nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { s.OnError(err) }),
		}
		nc, err := nats.Connect(s.URL, append(base, opts...)...)
		if err != nil {
			return nil, err
		}
		if _, err := nc.Subscribe(s.Subject, func(m *nats.Msg) { s.OnMessage(m.Data) }); err != nil {
			nc.Close()
			return nil, fmt.Errorf("subscribe %s: %w", s.Subject, err)
		}
		return &natsGoConn{nc: nc}, nil
	}
}

type natsGoConn struct {
	nc      *nats.Conn
	probing atomic.Bool
}

func (c *natsGoConn) Request(ctx context.Context, subj string, hdr nats.Header, data []byte) (*nats.Msg, error) {
	m, err := c.nc.RequestMsgWithContext(ctx, &nats.Msg{Subject: subj, Header: hdr, Data: data})
	if (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout)) && c.probing.CompareAndSwap(false, true) {
		go c.probe()
	}
	return m, err
}

// probe drops the connection when its server does not answer a PING within StallProbe (see Conn).
func (c *natsGoConn) probe() {
	defer c.probing.Store(false)
	if err := c.nc.FlushTimeout(StallProbe); err != nil && c.nc.IsConnected() {
		_ = c.nc.ForceReconnect()
	}
}

func (c *natsGoConn) Connected() bool { return c.nc.IsConnected() }
func (c *natsGoConn) Close()          { c.nc.Close() }
