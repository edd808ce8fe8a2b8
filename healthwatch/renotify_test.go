package healthwatch

import (
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestUnnotifiedDevicesGetTheirTargetAgain: a dispatcher killed between its commit and its
// notifications leaves a batch scheduled that no device heard of (its command comes back after a 2 min
// ack wait, possibly past the health deadline). healthwatch sends the targets of devices still
// scheduled after 20 s once, so they update instead of failing healthy by timeout.
func TestUnnotifiedDevicesGetTheirTargetAgain(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	devs := b.devices("renotify", 3, "fleet-r", oldImg)
	id := b.rollout(rolloutSpec{devices: devs}) // targets written, nothing published (the dispatcher died)
	b.exec(`UPDATE device_rollout_status SET scheduled_at = now() - interval '30 seconds' WHERE rollout_id = $1`, id)
	b.exec(`UPDATE device_rollout_status SET status = 'updating' WHERE rollout_id = $1 AND device_uuid = $2`, id, devs[2])
	stream, err := b.ns.JS.Stream(b.ctx, b.subj.TargetsStream())
	require.NoError(t, err)
	for _, d := range devs {
		_, err := stream.GetLastMsgForSubject(b.ctx, b.subj.DeviceTarget(d))
		require.Error(t, err, "no target message before")
	}

	s := b.newService()
	s.js = b.ns.JS
	n, err := s.renotifyUnstarted(b.ctx)
	require.NoError(t, err)
	require.Equal(t, 2, n, "the two devices still scheduled")
	for _, d := range devs[:2] {
		m, err := stream.GetLastMsgForSubject(b.ctx, b.subj.DeviceTarget(d))
		require.NoError(t, err, "target of %s sent again", d)
		_, version := b.targetImage(d)
		require.Contains(t, string(m.Data), newImg)
		require.Equal(t, d+"-"+strconv.FormatInt(version, 10), m.Header.Get("Nats-Msg-Id"))
	}
	_, err = stream.GetLastMsgForSubject(b.ctx, b.subj.DeviceTarget(devs[2]))
	require.Error(t, err, "a device that reported is not sent again")

	// Once per device: the next scan (after its spacing) sends nothing again.
	s.renotifyRan = time.Time{}
	n, err = s.renotifyUnstarted(b.ctx)
	require.NoError(t, err)
	require.Zero(t, n)
}
