package lifecycle_test

import (
	"context"
	"regexp"
	"slices"
	"testing"

	"github.com/fleetshift/fleetshift/shared/lifecycle"
	"github.com/fleetshift/fleetshift/shared/pgtest"
)

// TestRolloutTransitions: the whole rollout transition table, every pair.
func TestRolloutTransitions(t *testing.T) {
	t.Parallel()
	allowed := map[lifecycle.Status][]lifecycle.Status{
		lifecycle.Pending:          {lifecycle.InProgress, lifecycle.Cancelled, lifecycle.Superseded, lifecycle.RolledBack},
		lifecycle.Scheduled:        {lifecycle.InProgress, lifecycle.Paused, lifecycle.Cancelled, lifecycle.Superseded, lifecycle.RolledBack},
		lifecycle.InProgress:       {lifecycle.Scheduled, lifecycle.Paused, lifecycle.AwaitingApproval, lifecycle.Completed, lifecycle.Cancelled, lifecycle.Superseded, lifecycle.RolledBack},
		lifecycle.Paused:           {lifecycle.InProgress, lifecycle.Cancelled, lifecycle.Superseded, lifecycle.RolledBack},
		lifecycle.AwaitingApproval: {lifecycle.InProgress, lifecycle.Paused, lifecycle.Cancelled, lifecycle.Superseded, lifecycle.RolledBack},
		lifecycle.Completed:        {lifecycle.RolledBack},
		lifecycle.Failed:           {lifecycle.RolledBack},
		lifecycle.Cancelled:        {lifecycle.RolledBack},
		lifecycle.RolledBack:       nil,
		lifecycle.Superseded:       nil,
	}
	for _, from := range lifecycle.Statuses {
		for _, to := range lifecycle.Statuses {
			want := slices.Contains(allowed[from], to)
			if got := lifecycle.CanMove(from, to); got != want {
				t.Errorf("CanMove(%s, %s) = %v, want %v", from, to, got, want)
			}
		}
	}
	for _, s := range lifecycle.Statuses {
		if s.IsActive() == s.IsTerminal() {
			t.Errorf("%s: active %v, terminal %v: every status is exactly one", s, s.IsActive(), s.IsTerminal())
		}
		if s.IsActive() && !lifecycle.CanMove(s, lifecycle.Cancelled) {
			t.Errorf("active %s cannot be cancelled", s)
		}
		if s.IsActive() && !lifecycle.CanMove(s, lifecycle.Superseded) {
			t.Errorf("active %s cannot be superseded", s)
		}
	}
	if lifecycle.Status("running").Valid() || !lifecycle.InProgress.Valid() {
		t.Error("Valid")
	}
}

// TestDeviceTransitions: the device transition table; a device only moves forward (but for a retry,
// failed -> scheduled), and every move reports could make raises its rank.
func TestDeviceTransitions(t *testing.T) {
	t.Parallel()
	P, S, U, H := lifecycle.DevicePending, lifecycle.DeviceScheduled, lifecycle.DeviceUpdating, lifecycle.DeviceHealthChecking
	C, F, R, K := lifecycle.DeviceCompleted, lifecycle.DeviceFailed, lifecycle.DeviceRolledBack, lifecycle.DeviceSkipped
	allowed := map[lifecycle.DeviceStatus][]lifecycle.DeviceStatus{
		P: {S, K},
		S: {U, H, C, F, R, K},
		U: {H, C, F, R, K},
		H: {C, F, R, K},
		C: {R},
		F: {R, S}, // retry
		R: nil,
		K: nil,
	}
	for _, from := range lifecycle.DeviceStatuses {
		for _, to := range lifecycle.DeviceStatuses {
			want := slices.Contains(allowed[from], to)
			if got := lifecycle.CanMoveDevice(from, to); got != want {
				t.Errorf("CanMoveDevice(%s, %s) = %v, want %v", from, to, got, want)
			}
			// Moves among the forward statuses always raise the rank.
			if want && slices.Contains(lifecycle.DeviceForward, from) && (slices.Contains(lifecycle.DeviceForward, to) || to == F) &&
				lifecycle.Rank(to) <= lifecycle.Rank(from) {
				t.Errorf("%s -> %s does not raise the rank", from, to)
			}
		}
	}
	for i := 1; i < len(lifecycle.DeviceForward); i++ {
		if lifecycle.Rank(lifecycle.DeviceForward[i]) <= lifecycle.Rank(lifecycle.DeviceForward[i-1]) {
			t.Errorf("forward order broken at %s", lifecycle.DeviceForward[i])
		}
	}
	for _, s := range lifecycle.InFlight {
		if s.IsTerminal() || s == P {
			t.Errorf("in-flight %s", s)
		}
	}
	for _, s := range []lifecycle.DeviceStatus{C, F, R, K} {
		if !s.IsTerminal() {
			t.Errorf("%s should be terminal", s)
		}
	}
	if got := lifecycle.SQL(lifecycle.InFlight...); got != `'scheduled', 'updating', 'health_checking'` {
		t.Errorf("SQL = %s", got)
	}
}

// TestStatusesMatchSchema: the CHECK constraints of the status columns list exactly these statuses, so
// the database and the code cannot disagree about what a status is.
func TestStatusesMatchSchema(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	check := func(table string) []string {
		var def string
		if err := db.Pool.QueryRow(context.Background(), `SELECT pg_get_constraintdef(oid) FROM pg_constraint
			WHERE conrelid = $1::regclass AND contype = 'c' AND pg_get_constraintdef(oid) LIKE '%status%'`, table).Scan(&def); err != nil {
			t.Fatalf("read CHECK of %s.status: %v", table, err)
		}
		var out []string
		for _, m := range regexp.MustCompile(`'([a-z_]+)'`).FindAllStringSubmatch(def, -1) {
			out = append(out, m[1])
		}
		slices.Sort(out)
		return out
	}
	sorted := func(s []string) []string { s = slices.Clone(s); slices.Sort(s); return s }
	if got, want := check("image_rollouts"), sorted(lifecycle.Strings(lifecycle.Statuses...)); !slices.Equal(got, want) {
		t.Errorf("image_rollouts.status CHECK %v, code %v", got, want)
	}
	if got, want := check("device_rollout_status"), sorted(lifecycle.Strings(lifecycle.DeviceStatuses...)); !slices.Equal(got, want) {
		t.Errorf("device_rollout_status.status CHECK %v, code %v", got, want)
	}
}
