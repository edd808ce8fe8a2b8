package dispatcher

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/fleetshift/fleetshift/shared/target"
	"github.com/fleetshift/fleetshift/streams"
)

// TestDispatchDropsTheDevicesPrefetchEntry: devices of a download-ahead rollout hold a prefetch entry
// for its new image; dispatching batch 1 moves them to the image and drops the entry in the same write
// (the notification carries no prefetch), while batch 2 still holds its entry, and another rollout's
// entry on a moved device stays.
func TestDispatchDropsTheDevicesPrefetchEntry(t *testing.T) {
	t.Parallel()
	b := setup(t)
	batch1 := b.devices(t, "p1-", 3, deviceApps)
	batch2 := b.devices(t, "p2-", 2, deviceApps)
	id := b.rollout(t, "in_progress", batch1, batch2)
	tx, err := b.db.Pool.Begin(b.ctx)
	require.NoError(t, err)
	_, err = target.SetPrefetch(b.ctx, tx, b.ns.Subjects, id, newImage, append(append([]string{}, batch1...), batch2...))
	require.NoError(t, err)
	_, err = target.SetPrefetch(b.ctx, tx, b.ns.Subjects, "00000000-0000-0000-0000-0000000000aa", "ghcr.io/acme/logger:4", batch1[:1])
	require.NoError(t, err)
	require.NoError(t, tx.Commit(b.ctx))
	prefetch := func(u string) []target.PrefetchEntry {
		var raw []byte
		require.NoError(t, b.db.Pool.QueryRow(b.ctx, `SELECT prefetch FROM device_target_state WHERE device_uuid = $1`, u).Scan(&raw))
		var out []target.PrefetchEntry
		require.NoError(t, json.Unmarshal(raw, &out))
		return out
	}
	subs := map[string]*nats.Subscription{}
	for _, u := range batch1 {
		sub, err := b.ns.NC.SubscribeSync(b.ns.Subjects.DeviceTarget(u))
		require.NoError(t, err)
		subs[u] = sub
	}
	require.NoError(t, b.ns.NC.Flush())

	b.run(t)
	b.command(t, id, 1, id+"-dispatch-1")
	b.handled(t)
	for i, u := range batch1 {
		require.Equal(t, newImage, services(t, b.target(t, u).Apps, "1")[0]["imageName"], u)
		msg, err := subs[u].NextMsg(10 * time.Second)
		require.NoError(t, err, "live notification of %s", u)
		var doc streams.TargetV1
		require.NoError(t, json.Unmarshal(msg.Data, &doc))
		require.Contains(t, string(doc[u].Apps), newImage)
		if i == 0 {
			// Only the other rollout's entry is left, in the row and in the notification.
			want := []target.PrefetchEntry{{Image: "ghcr.io/acme/logger:4", RolloutID: "00000000-0000-0000-0000-0000000000aa"}}
			require.Equal(t, want, prefetch(u), u)
			require.JSONEq(t, `[{"image":"ghcr.io/acme/logger:4","rollout_id":"00000000-0000-0000-0000-0000000000aa"}]`, string(doc[u].Prefetch))
			continue
		}
		require.Empty(t, prefetch(u), u)
		require.Nil(t, doc[u].Prefetch, "%s notified with prefetch %s", u, doc[u].Prefetch)
	}
	for _, u := range batch2 {
		require.Equal(t, []target.PrefetchEntry{{Image: newImage, RolloutID: id}}, prefetch(u), u)
	}
}
