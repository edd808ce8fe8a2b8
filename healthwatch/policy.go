package healthwatch

import (
	"encoding/json"
	"time"
)

// policy is the part of a rollout's policy snapshot (image_rollouts.policy, written by the planner with
// the image_update_policies column names) that healthwatch acts on. Missing fields take the column
// defaults of image_update_policies.
type policy struct {
	HealthCheckEnabled  bool
	AutoRollbackEnabled bool
	MaxFailureRate      float64
	MinSampleSize       int
	BatchDelay          time.Duration
	BatchApproval       bool
}

type policyJSON struct {
	HealthCheckEnabled  *bool    `json:"health_check_enabled"`
	AutoRollbackEnabled *bool    `json:"auto_rollback_enabled"`
	MaxFailureRate      *float64 `json:"max_failure_rate"`
	MinSampleSize       *int     `json:"min_sample_size"`
	BatchDelayMinutes   *int     `json:"batch_delay_minutes"`
	BatchDelaySeconds   *int     `json:"batch_delay_seconds"`
	BatchApproval       *bool    `json:"batch_approval"`
}

// parsePolicy reads a snapshot. An unreadable snapshot yields the defaults: a rollout must never stall
// because its snapshot is odd.
func parsePolicy(raw []byte) policy {
	p := policy{HealthCheckEnabled: true, MaxFailureRate: 0.2, MinSampleSize: 1}
	var j policyJSON
	if len(raw) == 0 || json.Unmarshal(raw, &j) != nil {
		return p
	}
	if j.HealthCheckEnabled != nil {
		p.HealthCheckEnabled = *j.HealthCheckEnabled
	}
	if j.AutoRollbackEnabled != nil {
		p.AutoRollbackEnabled = *j.AutoRollbackEnabled
	}
	if j.MaxFailureRate != nil {
		p.MaxFailureRate = *j.MaxFailureRate
	}
	if j.MinSampleSize != nil {
		p.MinSampleSize = max(*j.MinSampleSize, 0)
	}
	if j.BatchApproval != nil {
		p.BatchApproval = *j.BatchApproval
	}
	// batch_delay_seconds wins over batch_delay_minutes when set (docs/contract.md).
	switch {
	case j.BatchDelaySeconds != nil:
		p.BatchDelay = time.Duration(max(*j.BatchDelaySeconds, 0)) * time.Second
	case j.BatchDelayMinutes != nil:
		p.BatchDelay = time.Duration(max(*j.BatchDelayMinutes, 0)) * time.Minute
	}
	return p
}

// exceeded reports whether failures out of finished devices breaks the policy: the rate is above
// max_failure_rate and at least min_sample_size devices have finished.
func (p policy) exceeded(failures, finished int) bool {
	if finished == 0 || finished < p.MinSampleSize {
		return false
	}
	return float64(failures)/float64(finished) > p.MaxFailureRate
}
