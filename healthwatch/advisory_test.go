package healthwatch

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/fleetshift/fleetshift/shared/broker"
	"github.com/fleetshift/fleetshift/shared/wait"
)

// TestAdvisoryStormLosesNoDevice: a reconnect storm sends one connect advisory per device at once.
// Applied one transaction per advisory, healthwatch fell behind its 4,096-message buffer and the server
// dropped the rest as a slow consumer's (seen in the benchmark with 18,000 simulated devices), disconnects
// included. Here 12,000 connects, then 3,000 disconnects, then 500 reconnects arrive faster than any
// database can take them one by one: every device ends in the state its last advisory says, with one
// offline event per disconnect.
func TestAdvisoryStormLosesNoDevice(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	const n, gone, back = 12_000, 3_000, 500
	devs := b.devices("storm", n, "fleet-storm", oldImg)
	b.exec(`UPDATE devices SET is_online = false, offline_since = now() - interval '1 hour' WHERE fleet_id = 'fleet-storm'`)

	emb, err := broker.StartEmbedded(broker.EmbeddedConfig{Addr: "127.0.0.1:0", StoreDir: t.TempDir(), ServicePassword: "pw"})
	require.NoError(t, err)
	t.Cleanup(emb.Server.Shutdown)
	sys, err := nats.Connect(emb.Server.ClientURL(), nats.UserInfo(broker.SystemUser, "pw"))
	require.NoError(t, err)
	t.Cleanup(sys.Close)
	pub, err := nats.Connect(emb.Server.ClientURL(), nats.UserInfo(broker.SystemUser, "pw"))
	require.NoError(t, err)
	t.Cleanup(pub.Close)

	s := b.newService()
	ctx, cancel := context.WithCancel(b.ctx)
	t.Cleanup(cancel)
	go func() { _ = s.followAdvisories(ctx, sys) }()

	send := func(kind, dev string) {
		var a advisory
		a.Client.User = dev
		a.Timestamp = time.Now()
		body, err := json.Marshal(a)
		require.NoError(t, err)
		require.NoError(t, pub.Publish(fmt.Sprintf("$SYS.ACCOUNT.ACC.%s", kind), body))
	}
	// followAdvisories has subscribed once a probe device's connect comes through.
	probe := b.devices("probe", 1, "fleet-probe", oldImg)[0]
	b.exec(`UPDATE devices SET is_online = false, offline_since = now() WHERE uuid = $1`, probe)
	wait.For(t, 30*time.Second, func() error {
		send("CONNECT", probe)
		var online bool
		if err := b.pool.QueryRow(b.ctx, `SELECT is_online FROM devices WHERE uuid = $1`, probe).Scan(&online); err != nil || !online {
			return fmt.Errorf("probe not online yet (%v)", err)
		}
		return nil
	})
	for _, d := range devs {
		send("CONNECT", d)
	}
	for _, d := range devs[:gone] {
		send("DISCONNECT", d)
	}
	for _, d := range devs[:back] {
		send("CONNECT", d)
	}
	require.NoError(t, pub.Flush())

	wait.For(t, 2*time.Minute, func() error {
		var online, offline, offEvents int
		if err := b.pool.QueryRow(b.ctx, `SELECT count(*) FILTER (WHERE is_online), count(*) FILTER (WHERE NOT is_online),
				(SELECT count(*) FROM rollout_events ev JOIN devices x ON x.uuid = ev.device_uuid
				 WHERE x.fleet_id = 'fleet-storm' AND ev.event_type = 'device.offline' AND ev.data->>'reason' = 'disconnected')
			FROM devices WHERE fleet_id = 'fleet-storm'`).Scan(&online, &offline, &offEvents); err != nil {
			return err
		}
		if online != n-gone+back || offline != gone-back || offEvents != gone {
			return fmt.Errorf("online %d (want %d), offline %d (want %d), disconnected events %d (want %d)",
				online, n-gone+back, offline, gone-back, offEvents, gone)
		}
		return nil
	})
}
