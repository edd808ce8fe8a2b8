package broker

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// stallDialer dials for real; after stall, the connections it has made carry nothing either way and
// are never reset (a NATS node cut off from the network); new ones work.
type stallDialer struct {
	mu    sync.Mutex
	conns []*stallConn
}

func (d *stallDialer) Dial(network, address string) (net.Conn, error) {
	c, err := (&net.Dialer{Timeout: 2 * time.Second}).Dial(network, address)
	if err != nil {
		return nil, err
	}
	sc := &stallConn{Conn: c}
	d.mu.Lock()
	d.conns = append(d.conns, sc)
	d.mu.Unlock()
	return sc, nil
}

func (d *stallDialer) stall() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range d.conns {
		c.stalled.Store(true)
	}
}

type stallConn struct {
	net.Conn
	stalled atomic.Bool
}

func (c *stallConn) Read(b []byte) (int, error) {
	for {
		n, err := c.Conn.Read(b)
		if err != nil || !c.stalled.Load() {
			return n, err
		}
	}
}

func (c *stallConn) Write(b []byte) (int, error) {
	if c.stalled.Load() {
		return len(b), nil
	}
	return c.Conn.Write(b)
}

// TestStalledServiceConnectionIsGivenUp: a service whose NATS server goes silent without resetting the
// connection connects again within PingInterval x (MaxPingsOut+1), not after nats.go's default 4-6
// minutes, and works again.
func TestStalledServiceConnectionIsGivenUp(t *testing.T) {
	t.Parallel()
	e, err := StartEmbedded(EmbeddedConfig{Addr: "127.0.0.1:0", ServicePassword: "x", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Shutdown()
	d := &stallDialer{}
	reconnected := make(chan struct{}, 1)
	nc, err := Connect(e.ClientURL(), "stall-test", Credentials{User: ServiceUser, Password: "x"},
		nats.SetCustomDialer(d), nats.ReconnectHandler(func(*nats.Conn) {
			select {
			case reconnected <- struct{}{}:
			default:
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	d.stall()
	stalled := time.Now()
	limit := PingInterval*time.Duration(MaxPingsOut+1) + 10*time.Second // nats.go's defaults: 4-6 min
	select {
	case <-reconnected:
	case <-time.After(limit):
		t.Fatalf("still on the stalled connection after %s", limit)
	}
	if err := nc.FlushTimeout(5 * time.Second); err != nil {
		t.Fatalf("after reconnecting (%s after the stall): %v", time.Since(stalled).Round(time.Second), err)
	}
}
