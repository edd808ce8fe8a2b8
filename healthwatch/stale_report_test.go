package healthwatch

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fleetshift/fleetshift/shared/wait"
)

// TestReportsFromBeforeSchedulingAreNoNews: a report that reached the stream before its device was
// scheduled (it waited while the batch was dispatched, e.g. the device's last report before it went
// offline) must not move the device; a report sent after scheduling does.
func TestReportsFromBeforeSchedulingAreNoNews(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	devs := b.devices("stale", 2, "fleet-a", oldImg)
	// Reports queued while nothing consumes them: an empty report (no services of the repository, which
	// after scheduling would read as "old image gone") and the old image running.
	b.publish(devs[0], body(devs[0]))
	b.publish(devs[1], web(devs[1], oldImg, "running", ""))
	id := b.rollout(rolloutSpec{devices: devs, policy: map[string]any{"max_failure_rate": 1.0}})
	b.service()
	// A marker after scheduling: once it is applied, the stale reports were read too (one consumer, in order).
	b.publish(devs[1], web(devs[1], newImg, "running", "starting"))
	wait.For(t, 10*time.Second, func() error {
		if got := b.status(id, devs[1]); got != statusHealthChecking {
			return fmt.Errorf("marker not applied: %s", got)
		}
		return nil
	})
	require.Equal(t, statusScheduled, b.status(id, devs[0]), "a report from before scheduling moved the device")
	require.Empty(t, b.eventTypes(id, devs[0]))
}
