package device_test

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetshift/fleetshift/agent/device"
	"github.com/fleetshift/fleetshift/agent/internal/fleettest"
)

// stallDialer dials for real; stall makes every connection it has made so far carry nothing either way
// while staying open, as a pulled cable or a NATS node cut off does: what the peer sends never arrives,
// what is written vanishes without an error, and nothing resets the connection. Connections dialled
// afterwards work.
type stallDialer struct {
	mu    sync.Mutex
	conns []*stallConn
	dials atomic.Int64
}

func (d *stallDialer) Dial(network, address string) (net.Conn, error) {
	c, err := (&net.Dialer{Timeout: 2 * time.Second}).Dial(network, address)
	if err != nil {
		return nil, err
	}
	d.dials.Add(1)
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

// Read drops what arrives once stalled, but still ends on a deadline or a close, as a silent TCP
// connection does.
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

// TestStalledConnectionIsMadeAgain: when the link to the NATS server stalls without being reset, the
// next report that times out makes the agent probe the connection, drop it and connect again, so
// reports go over NATS again within seconds (not after the minutes the keep-alive pings take).
func TestStalledConnectionIsMadeAgain(t *testing.T) {
	t.Parallel()
	for _, client := range natsClients {
		t.Run(client, func(t *testing.T) {
			t.Parallel()
			srv := fleettest.New(t, fleettest.Options{})
			d := &stallDialer{}
			s := start(t, srv, func(c *device.Config) {
				useClient(c, client, d)
				c.PollInterval = time.Hour
				c.Heartbeat = 250 * time.Millisecond
				c.RequestTimeout = time.Second
			})
			since := func(at time.Time) func() error {
				return func() error {
					for _, r := range srv.Reports(s.uuid) {
						if r.Via == "nats" && r.At.After(at) {
							return nil
						}
					}
					return fmt.Errorf("no report over nats since %s (%d dials)", at.Format(time.StampMilli), d.dials.Load())
				}
			}
			fleettest.Eventually(t, 10*time.Second, since(time.Time{}))
			d.stall()
			stalled := time.Now()
			// The keep-alive pings (2 minutes, twice) would take far longer than this to notice.
			fleettest.Eventually(t, 30*time.Second, since(stalled))
			if n := d.dials.Load(); n < 2 {
				t.Fatalf("%d dials: the stalled connection was not made again", n)
			}
			// While it was stalled, the heartbeats went over HTTP.
			var http bool
			for _, r := range srv.Reports(s.uuid) {
				http = http || (r.Via == "http" && r.At.After(stalled))
			}
			if !http {
				t.Error("no report over http while the connection was stalled")
			}
		})
	}
}
