package control

import (
	"context"
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

// TestBadInputNamesFieldAndShape: malformed ids and verbs are 400s naming the field and what it expects.
func TestBadInputNamesFieldAndShape(t *testing.T) {
	t.Parallel()
	s := &Service{}
	const rollout = "7d0e9c1e-0000-4000-8000-000000000001"
	cases := []struct {
		verb             Verb
		id, device       string
		field, code, say string
	}{
		{Pause, "nope", "", "id", "invalid_id", "expected a rollout id (a UUID)"},
		{Rollback, rollout, "bad uuid!", "device_uuid", "invalid_device_uuid", "expected a device uuid (1-64 of A-Z a-z 0-9 _ -)"},
		{Pause, rollout, "dev-1", "device_uuid", "invalid_device_uuid", "only the rollback verb takes a device"},
		{Verb("explode"), rollout, "", "", "invalid_verb", "start, pause, resume, cancel, approve, rollback-all, rollback"},
	}
	for _, c := range cases {
		_, err := s.Do(context.Background(), c.verb, c.id, c.device, "test")
		require.ErrorIs(t, err, apierr.ErrInvalid, "%s %s %s", c.verb, c.id, c.device)
		var ae *apierr.Error
		require.ErrorAs(t, err, &ae)
		require.Equal(t, c.field, ae.Field)
		require.Equal(t, c.code, ae.Code)
		require.Contains(t, ae.Message, c.say)
	}
}
