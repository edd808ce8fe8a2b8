package healthwatch

import (
	"time"

	policies "github.com/fleetshift/fleetshift/shared/policy"
)

// policy is a rollout's policy snapshot (image_rollouts.policy, written by the planner) as healthwatch
// acts on it: shared/policy's type, read with its defaults, plus the batch delay it stands for.
type policy struct {
	policies.Policy
	// BatchDelay is the wait between a batch's completion and the next batch (Policy.BatchDelay).
	BatchDelay time.Duration
}

// parsePolicy reads a snapshot. An unreadable snapshot yields the defaults: a rollout must never stall
// because its snapshot is odd.
func parsePolicy(raw []byte) policy {
	p := policies.FromJSON(raw)
	return policy{Policy: p, BatchDelay: p.BatchDelay()}
}

// exceeded reports whether failures out of finished devices breaks the policy (Policy.Exceeded).
func (p policy) exceeded(failures, finished int) bool { return p.Exceeded(failures, finished) }
