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

// TestDisconnectOfAnOlderConnectionKeepsTheDeviceOnline: a device that left a stalled or cut-off NATS
// node for another one has two connections for a while; the old node reports the old one closed only
// when it is back, after the new one's connect. That disconnect does not make the device offline; the
// disconnect of its newest connection does, and advisories that do not say when the connection started
// (as before) still count.
func TestDisconnectOfAnOlderConnectionKeepsTheDeviceOnline(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	devs := b.devices("twoconn", 2, "fleet-twoconn", oldImg)
	b.exec(`UPDATE devices SET is_online = false, offline_since = now() - interval '1 hour' WHERE fleet_id = 'fleet-twoconn'`)
	s := b.newService()
	msg := func(kind, dev string, start, at time.Time) *nats.Msg {
		var a advisory
		a.Client.User, a.Client.Start, a.Timestamp = dev, start, at
		body, err := json.Marshal(a)
		require.NoError(t, err)
		return &nats.Msg{Subject: "$SYS.ACCOUNT.ACC." + kind, Data: body}
	}
	online := func(dev string) bool {
		var on bool
		require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT is_online FROM devices WHERE uuid = $1`, dev).Scan(&on))
		return on
	}
	t0 := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
	t1, t2 := t0.Add(20*time.Second), t0.Add(40*time.Second)
	d := devs[0]
	s.applyAdvisories(b.ctx, []*nats.Msg{msg("CONNECT", d, t0, t0)})
	require.True(t, online(d))
	// The device moves to another node (t1); the old node reports the first connection closed at t2.
	s.applyAdvisories(b.ctx, []*nats.Msg{msg("CONNECT", d, t1, t1)})
	s.applyAdvisories(b.ctx, []*nats.Msg{msg("DISCONNECT", d, t0, t2)})
	require.True(t, online(d), "the close of an older connection made the device offline")
	// Its newest connection closes: offline.
	s.applyAdvisories(b.ctx, []*nats.Msg{msg("DISCONNECT", d, t1, t2.Add(time.Second))})
	require.False(t, online(d))
	// Both in one batch, in the server's order: the same.
	e := devs[1]
	s.applyAdvisories(b.ctx, []*nats.Msg{msg("CONNECT", e, t0, t0), msg("CONNECT", e, t1, t1), msg("DISCONNECT", e, t0, t2)})
	require.True(t, online(e), "batched: the close of an older connection made the device offline")
	// Without a start (older servers, tests): a disconnect counts.
	s.applyAdvisories(b.ctx, []*nats.Msg{msg("DISCONNECT", e, time.Time{}, t2.Add(time.Second))})
	require.False(t, online(e))
	var offEvents int
	require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT count(*) FROM rollout_events WHERE event_type = 'device.offline'
		AND device_uuid = ANY($1)`, devs).Scan(&offEvents))
	require.Equal(t, 2, offEvents, "one offline event per device")
}
