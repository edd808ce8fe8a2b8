// Package lifecycle is the one home of rollout and device-rollout statuses: their names, which are
// active or terminal, the forward order of a device's progress, and which transitions are allowed.
// The planner, dispatcher, healthwatch, control verbs and the operator API use these values, and SQL
// either passes them as parameters or interpolates them with SQL (they are constants, never input).
// The CHECK constraints of image_rollouts.status and device_rollout_status.status list the same values
// (TestStatusesMatchSchema).
package lifecycle

import "strings"

// Status is a rollout's status (image_rollouts.status).
type Status string

// Rollout statuses. An automatic pause is Paused with image_rollouts.auto_paused = true (set by
// healthwatch when the failure rate breaks the policy; cleared by an operator's pause or resume).
const (
	Pending          Status = "pending"           // created, waits for an operator's start (manual strategy)
	Scheduled        Status = "scheduled"         // waits for its maintenance window (scheduled strategy)
	InProgress       Status = "in_progress"       // batches are being dispatched and watched
	Paused           Status = "paused"            // stopped by an operator or by the failure rate (auto_paused)
	AwaitingApproval Status = "awaiting_approval" // a batch finished; the next waits for approve (batch_approval)
	Completed        Status = "completed"         // every batch finished
	Failed           Status = "failed"            // ended in failure (kept for the contract; nothing sets it today)
	Cancelled        Status = "cancelled"         // stopped for good by an operator
	RolledBack       Status = "rolled_back"       // every moved device was given its old image back
	Superseded       Status = "superseded"        // a newer push of the same repository and policy took over
)

// Statuses lists every rollout status, in lifecycle order.
var Statuses = []Status{Pending, Scheduled, InProgress, Paused, AwaitingApproval, Completed, Failed, Cancelled,
	RolledBack, Superseded}

// Active are the statuses of a rollout that is not over: a newer push supersedes it, cancel applies.
var Active = []Status{Pending, Scheduled, InProgress, Paused, AwaitingApproval}

// Terminal are the statuses of a rollout that is over; only rollback-all still moves a rollout out of
// one (to RolledBack), and nothing moves a RolledBack or Superseded rollout.
var Terminal = []Status{Completed, Failed, Cancelled, RolledBack, Superseded}

// Valid reports whether s is a rollout status.
func (s Status) Valid() bool { return contains(Statuses, s) }

// IsActive reports whether s is one of Active.
func (s Status) IsActive() bool { return contains(Active, s) }

// IsTerminal reports whether s is one of Terminal.
func (s Status) IsTerminal() bool { return contains(Terminal, s) }

// transitions lists, for each rollout status, the statuses a rollout may move to from it, and who moves it.
var transitions = map[Status][]Status{
	Pending: {InProgress, // control start
		Cancelled, Superseded, RolledBack},
	Scheduled: {InProgress, // healthwatch: window open
		Paused, Cancelled, Superseded, RolledBack},
	InProgress: {Scheduled, // dispatcher: window closed before a batch finished
		Paused,           // control pause, healthwatch failure rate
		AwaitingApproval, // healthwatch: batch finished under batch_approval
		Completed,        // healthwatch: last batch finished
		Cancelled, Superseded, RolledBack},
	Paused:           {InProgress, Cancelled, Superseded, RolledBack},
	AwaitingApproval: {InProgress, Paused, Cancelled, Superseded, RolledBack},
	Completed:        {RolledBack},
	Failed:           {RolledBack},
	Cancelled:        {RolledBack},
}

// Initial are the statuses the planner creates a rollout in.
var Initial = []Status{Pending, Scheduled, InProgress, Completed}

// CanMove reports whether a rollout may move from from to to. Staying in the same status is not a move.
func CanMove(from, to Status) bool { return contains(transitions[from], to) }

// Targets returns the statuses a rollout in from may move to.
func Targets(from Status) []Status { return append([]Status(nil), transitions[from]...) }

// DeviceStatus is the status of one device in a rollout (device_rollout_status.status).
type DeviceStatus string

// Device statuses. A device moves forward only: pending < scheduled < updating < health_checking <
// completed | failed (Rank); rolled_back and skipped end it from the side. The one way back is a retry:
// failed -> scheduled, with a new target generation.
const (
	DevicePending        DeviceStatus = "pending"         // in a batch not dispatched yet
	DeviceScheduled      DeviceStatus = "scheduled"       // its target names the new image
	DeviceUpdating       DeviceStatus = "updating"        // it reported moving to the new image
	DeviceHealthChecking DeviceStatus = "health_checking" // the new image runs; health not yet known
	DeviceCompleted      DeviceStatus = "completed"       // the new image runs healthy
	DeviceFailed         DeviceStatus = "failed"          // the new image failed, or the health timeout passed
	DeviceRolledBack     DeviceStatus = "rolled_back"     // its old image was written back
	DeviceSkipped        DeviceStatus = "skipped"         // never moved: superseded, cancelled, no longer running the repository
)

// DeviceStatuses lists every device status in forward order, then the side exits.
var DeviceStatuses = []DeviceStatus{DevicePending, DeviceScheduled, DeviceUpdating, DeviceHealthChecking,
	DeviceCompleted, DeviceFailed, DeviceRolledBack, DeviceSkipped}

// DeviceForward is the forward order of a device's progress (each rank above the previous one; completed
// and failed share the last rank).
var DeviceForward = []DeviceStatus{DevicePending, DeviceScheduled, DeviceUpdating, DeviceHealthChecking, DeviceCompleted}

// InFlight are the statuses of a device dispatched and not finished: reports and health timeouts move it.
var InFlight = []DeviceStatus{DeviceScheduled, DeviceUpdating, DeviceHealthChecking}

// Unfinished are the statuses that keep a batch open.
var Unfinished = []DeviceStatus{DevicePending, DeviceScheduled, DeviceUpdating, DeviceHealthChecking}

// Moved are the statuses of a device whose target was rewritten to the new image (what a rollback restores).
var Moved = []DeviceStatus{DeviceScheduled, DeviceUpdating, DeviceHealthChecking, DeviceCompleted, DeviceFailed}

// Finished are the statuses counted as finished by the failure rate.
var Finished = []DeviceStatus{DeviceCompleted, DeviceFailed, DeviceRolledBack}

// Valid reports whether s is a device status.
func (s DeviceStatus) Valid() bool { return contains(DeviceStatuses, s) }

// IsTerminal reports whether nothing but a rollback moves a device in s any more (completed, failed) or
// nothing at all (rolled_back, skipped).
func (s DeviceStatus) IsTerminal() bool { return Rank(s) == RankFinal }

// RankFinal is the rank of completed, failed, rolled_back and skipped (and of anything unknown).
const RankFinal = 4

// Rank orders device statuses forward: pending 0, scheduled 1, updating 2, health_checking 3, anything
// else RankFinal. A report only ever raises a device's rank.
func Rank(s DeviceStatus) int {
	switch s {
	case DevicePending:
		return 0
	case DeviceScheduled:
		return 1
	case DeviceUpdating:
		return 2
	case DeviceHealthChecking:
		return 3
	default:
		return RankFinal
	}
}

// deviceTransitions lists, for each device status, the statuses a device may move to from it.
var deviceTransitions = map[DeviceStatus][]DeviceStatus{
	DevicePending: {DeviceScheduled, // dispatcher
		DeviceSkipped}, // dispatcher (repository gone), supersede, cancel, rollback
	DeviceScheduled:      {DeviceUpdating, DeviceHealthChecking, DeviceCompleted, DeviceFailed, DeviceRolledBack, DeviceSkipped},
	DeviceUpdating:       {DeviceHealthChecking, DeviceCompleted, DeviceFailed, DeviceRolledBack, DeviceSkipped},
	DeviceHealthChecking: {DeviceCompleted, DeviceFailed, DeviceRolledBack, DeviceSkipped},
	DeviceCompleted:      {DeviceRolledBack},
	DeviceFailed: {DeviceRolledBack,
		DeviceScheduled}, // retry: an operator's retry verb or the policy's max_retries re-dispatches it
}

// CanMoveDevice reports whether a device may move from from to to in a rollout.
func CanMoveDevice(from, to DeviceStatus) bool { return contains(deviceTransitions[from], to) }

// Strings returns statuses as plain strings (for SQL parameters: status = ANY($n)).
func Strings[S ~string](statuses ...S) []string {
	out := make([]string, len(statuses))
	for i, s := range statuses {
		out[i] = string(s)
	}
	return out
}

// SQL renders statuses as SQL literals for interpolation into a statement: 'a' for one, 'a', 'b' for
// IN (...). The values are this package's constants, never input; literals (rather than parameters) let
// PostgreSQL match the partial indexes whose predicates name statuses.
func SQL[S ~string](statuses ...S) string {
	var b strings.Builder
	for i, s := range statuses {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteByte('\'')
		b.WriteString(strings.ReplaceAll(string(s), "'", "''"))
		b.WriteByte('\'')
	}
	return b.String()
}

func contains[S comparable](list []S, s S) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
