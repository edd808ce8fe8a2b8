package device_test

import (
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/fleetshift/fleetshift/agent/device"
	"github.com/fleetshift/fleetshift/agent/internal/fleettest"
)

// dialLog records when each connection attempt starts.
type dialLog struct {
	mu    sync.Mutex
	times []time.Time
}

func (d *dialLog) Dial(network, address string) (net.Conn, error) {
	d.mu.Lock()
	d.times = append(d.times, time.Now())
	d.mu.Unlock()
	return (&net.Dialer{Timeout: 2 * time.Second}).Dial(network, address)
}

func (d *dialLog) gaps() []time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []time.Duration
	for i := 1; i < len(d.times); i++ {
		out = append(out, d.times[i].Sub(d.times[i-1]))
	}
	return out
}

// TestRefusedNATSConnectsBackOffWithJitter: devices the NATS server refuses (as the auth callout refuses
// a reconnect storm beyond its capacity) keep retrying, never sooner than the reconnect wait, and at
// jittered moments, so a refused crowd does not come back in lockstep.
func TestRefusedNATSConnectsBackOffWithJitter(t *testing.T) {
	t.Parallel()
	for _, client := range natsClients {
		t.Run(client, func(t *testing.T) {
			t.Parallel()
			testRefusedConnects(t, client)
		})
	}
}

func testRefusedConnects(t *testing.T, client string) {
	srv := fleettest.New(t, fleettest.Options{})
	var logs []*dialLog
	for i := range 8 {
		uuid, _ := srv.AddDevice(fmt.Sprintf("storm-%d", i))
		log := &dialLog{}
		logs = append(logs, log)
		startAs(t, srv, uuid, "refused-key", func(c *device.Config) { useClient(c, client, log) })
	}
	fleettest.Eventually(t, 45*time.Second, func() error {
		for i, l := range logs {
			if n := len(l.gaps()); n < 2 {
				return fmt.Errorf("device %d retried %d times", i, n)
			}
		}
		return nil
	})
	var firsts []time.Duration
	for i, l := range logs {
		g := l.gaps()
		for _, gap := range g {
			if gap < 1900*time.Millisecond { // the reconnect wait is 2 s (dial times are taken before the dial)
				t.Fatalf("device %d retried a refused connect after %s: %v", i, gap, g)
			}
		}
		firsts = append(firsts, g[0])
	}
	slices.Sort(firsts)
	if spread := firsts[len(firsts)-1] - firsts[0]; spread < 200*time.Millisecond {
		t.Fatalf("8 refused devices retried in lockstep (first retry gaps %v): no jitter", firsts)
	}
}
