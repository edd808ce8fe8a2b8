package control

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/lifecycle"
)

// verbTarget is the status each rollout-wide verb that changes something moves a rollout to.
var verbTarget = map[Verb]lifecycle.Status{
	Start: lifecycle.InProgress, Pause: lifecycle.Paused, Resume: lifecycle.InProgress,
	Cancel: lifecycle.Cancelled, Approve: lifecycle.InProgress,
}

// TestVerbsFollowTheTransitionTable: every change a verb makes is a transition shared/lifecycle allows,
// and a verb on a status it does not apply to is a 409, never a silent change.
func TestVerbsFollowTheTransitionTable(t *testing.T) {
	t.Parallel()
	for verb, to := range verbTarget {
		for _, from := range lifecycle.Statuses {
			act, err := decide(verb, string(from))
			switch {
			case err != nil:
				require.True(t, errors.Is(err, apierr.ErrConflict), "%s on %s: %v", verb, from, err)
				require.NotContains(t, err.Error(), "lifecycle.", "%s on %s", verb, from)
			case act.change:
				require.True(t, lifecycle.CanMove(from, to), "%s moves %s -> %s, which the transition table forbids", verb, from, to)
			default:
				require.Contains(t, []lifecycle.Status{to, lifecycle.AwaitingApproval}, from, "%s is a no-op on %s", verb, from)
			}
		}
	}
	// Ended rollouts are refused by every verb (rollback-all goes through healthwatch.RollbackAll).
	for _, from := range lifecycle.Terminal {
		for verb := range verbTarget {
			if verb == Cancel && from == lifecycle.Cancelled {
				continue
			}
			_, err := decide(verb, string(from))
			require.Error(t, err, "%s on %s", verb, from)
			require.Contains(t, err.Error(), "it has ended", "%s on %s", verb, from)
		}
	}
}
