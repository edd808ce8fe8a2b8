package sim

import (
	"errors"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/fleetshift/fleetshift/agent/device"
	"github.com/fleetshift/fleetshift/agent/sim/lightnats"
)

// sourceAddrs is how many loopback source addresses (127.0.0.1 ..) the devices' NATS connections are
// spread over: one address has only the ephemeral port range (about 28,000 ports) towards one server
// port, so a large fleet on one machine would run out of ports on 127.0.0.1 alone.
const sourceAddrs = 250

// dialer opens simulated device i's NATS connection with client (NATSClientLight or NATSClientGo), its
// socket leaving from the device's loopback source address. The light connection hands over to nats.go
// when it cannot serve the server (TLS).
func dialer(client string, i int) device.Dialer {
	return func(s device.ConnSpec) (device.Conn, error) {
		d := &spreadDialer{index: i}
		if client == NATSClientLight {
			c, err := lightnats.Connect(s, lightnats.Options{Dial: d.Dial})
			if err == nil {
				return c, nil
			}
			if !errors.Is(err, lightnats.ErrUnsupported) {
				return nil, err
			}
		}
		return device.NATSGoDialer(natsOptions(d)...)(s)
	}
}

// natsOptions are the nats.go options of a simulated device, beyond the device engine's own (which
// already keep no reconnect buffer): a dialer spreading loopback connections over source addresses.
func natsOptions(d *spreadDialer) []nats.Option {
	return []nats.Option{nats.SetCustomDialer(d)}
}

// spreadDialer dials like net.Dialer, but a connection to a loopback IPv4 address leaves from
// 127.0.0.<1 + index mod sourceAddrs>.
type spreadDialer struct {
	index int
}

// dialTimeout is nats.go's own default connect timeout.
const dialTimeout = 2 * time.Second

// Dial implements nats.CustomDialer.
func (d *spreadDialer) Dial(network, address string) (net.Conn, error) {
	nd := net.Dialer{Timeout: dialTimeout}
	if host, _, err := net.SplitHostPort(address); err == nil {
		if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() && ip.To4() != nil {
			nd.LocalAddr = &net.TCPAddr{IP: SourceIP(d.index)}
		}
	}
	return nd.Dial(network, address)
}

// SourceIP is the loopback address simulated device i's connections to a local server leave from.
func SourceIP(i int) net.IP {
	return net.ParseIP("127.0.0." + strconv.Itoa(1+i%sourceAddrs))
}
