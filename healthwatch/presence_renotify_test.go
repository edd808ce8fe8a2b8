package healthwatch

import (
	"strconv"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/fleetshift/fleetshift/shared/target"
)

// TestRenotifiedTargetKeepsOrderedPublishesWorking: the target sent again to a device that came back
// online is stored without the server's headers of the copy it was read from, so its Nats-Sequence is
// its own and a newer target is published (ordered, expecting the subject's last sequence) at the
// first try. A copied header made every later ordered publish expect a stale sequence forever
// (found by make chaos: rollback notifications stuck in the outbox).
func TestRenotifiedTargetKeepsOrderedPublishesWorking(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	devs := b.devices("back", 1, "fleet-b", oldImg)
	dev := devs[0]
	cur, err := target.Load(b.ctx, b.pool, devs)
	require.NoError(t, err)
	require.NoError(t, target.Publish(b.ctx, b.ns.JS, b.subj, cur))

	s := b.newService()
	s.js = b.ns.JS
	s.targets, err = b.ns.JS.Stream(b.ctx, b.subj.TargetsStream())
	require.NoError(t, err)
	s.renotify(b.ctx, []back{{uuid: dev}})

	last, err := s.targets.GetLastMsgForSubject(b.ctx, b.subj.DeviceTarget(dev))
	require.NoError(t, err)
	require.Equal(t, []string{strconv.FormatUint(last.Sequence, 10)}, last.Header.Values(jetstream.SequenceHeader),
		"the stored copy carries a stale Nats-Sequence")

	// A newer target after it is published in order.
	b.tx(func(tx pgx.Tx) {
		_, err := target.Apply(b.ctx, tx, []target.Write{{DeviceUUID: dev, Apps: appsFor(newImg)}})
		require.NoError(t, err)
	})
	cur, err = target.Load(b.ctx, b.pool, devs)
	require.NoError(t, err)
	require.NoError(t, target.Publish(b.ctx, b.ns.JS, b.subj, cur))
	m, err := s.targets.GetLastMsgForSubject(b.ctx, b.subj.DeviceTarget(dev))
	require.NoError(t, err)
	require.Contains(t, string(m.Data), newImg)
}
