package planner

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/streams"
)

// Replay limits.
const (
	DefaultReplayDays = 7
	MaxReplayDays     = 30
	// MaxReplayPushes bounds the pushes one replay plans (the most recent ones win; Truncated says so).
	MaxReplayPushes = 1_000
)

// Reasons a replayed push creates no rollout of the replayed policy.
const (
	ReplayOtherPolicy = "another policy wins"
	ReplayNoMatch     = "the policy does not match the pushed image"
	ReplayNoDevices   = "no device would be updated today"
	ReplayInvalid     = "the push is not a valid image reference"
)

// ReplayResult is the dry run of a policy over past pushes (POST /api/v1/image-policies/replay).
type ReplayResult struct {
	Days  int       `json:"days"`
	Since time.Time `json:"since"`
	// Policy is the policy replayed (id 0 for a policy not stored yet).
	Policy *Policy `json:"policy"`
	// Pushes is how many pushes were replayed; Truncated says older ones were left out.
	Pushes    int  `json:"pushes"`
	Truncated bool `json:"truncated"`
	// Rollouts are the rollouts the policy would have created, oldest push first.
	Rollouts []ReplayRollout `json:"rollouts"`
	// Skipped are the other pushes and why the policy would not have created a rollout for them.
	Skipped []ReplaySkip `json:"skipped"`
}

// ReplayRollout is one rollout a replayed policy would create for a past push, planned over today's
// devices exactly as the planner would (Plan).
type ReplayRollout struct {
	PushEventID string    `json:"push_event_id"`
	PushedAt    time.Time `json:"pushed_at"`
	Image       string    `json:"image"`
	// ActualRolloutID and ActualPolicyID are what the push really created, when it created a rollout.
	ActualRolloutID *string        `json:"actual_rollout_id"`
	ActualPolicyID  *int64         `json:"actual_policy_id"`
	Strategy        string         `json:"strategy"`
	Status          string         `json:"status"`
	TotalDevices    int            `json:"total_devices"`
	BatchSizes      []int          `json:"batch_sizes"`
	Batches         []PreviewBatch `json:"batches"`
}

// ReplaySkip is a past push for which the replayed policy would create no rollout.
type ReplaySkip struct {
	PushEventID string    `json:"push_event_id"`
	PushedAt    time.Time `json:"pushed_at"`
	Image       string    `json:"image"`
	Reason      string    `json:"reason"`
	// WinningPolicyID is the policy that wins instead, when Reason is ReplayOtherPolicy.
	WinningPolicyID *int64 `json:"winning_policy_id,omitempty"`
}

// TxBeginner starts transactions; *pgxpool.Pool satisfies it.
type TxBeginner interface {
	BeginTx(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error)
}

// Replay plans every push the planner handled in the last days days (planner_pushes: pushes that
// planned a rollout or found no policy; duplicates and invalid pushes are left out) as if pol were
// stored: a policy with ID 0 is added, one with the ID of a stored policy replaces it. Each push is
// planned with Plan over today's devices and policies, in one read-only repeatable-read transaction, so
// the answer writes nothing and equals what the planner would create for that push now. days outside
// 1..MaxReplayDays is an apierr.Invalid naming "days".
func Replay(ctx context.Context, db TxBeginner, pol Policy, days int) (*ReplayResult, error) {
	if days < 1 || days > MaxReplayDays {
		return nil, apierr.Invalid("days", "must be between 1 and %d", MaxReplayDays)
	}
	tx, err := db.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("replay: begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	out := &ReplayResult{Days: days, Policy: &pol, Rollouts: []ReplayRollout{}, Skipped: []ReplaySkip{}}
	if err := tx.QueryRow(ctx, `SELECT now() - make_interval(days => $1)`, days).Scan(&out.Since); err != nil {
		return nil, fmt.Errorf("replay: read the clock: %w", err)
	}
	type push struct {
		eventID, repository, tag, digest string
		at                               time.Time
		rolloutID                        *string
		policyID                         *int64
	}
	rows, err := tx.Query(ctx, `SELECT * FROM (
			SELECT p.event_id, p.repository, p.tag, p.digest, p.handled_at, p.rollout_id::text, r.policy_id
			FROM planner_pushes p LEFT JOIN image_rollouts r ON r.rollout_id = p.rollout_id
			WHERE p.handled_at >= $1 AND p.outcome IN ('planned', 'no_policy')
			ORDER BY p.handled_at DESC, p.event_id DESC
			LIMIT $2) recent
		ORDER BY handled_at, event_id`, out.Since, MaxReplayPushes+1)
	if err != nil {
		return nil, fmt.Errorf("replay: read pushes: %w", err)
	}
	pushes, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (push, error) {
		var p push
		err := r.Scan(&p.eventID, &p.repository, &p.tag, &p.digest, &p.at, &p.rolloutID, &p.policyID)
		return p, err
	})
	if err != nil {
		return nil, fmt.Errorf("replay: read pushes: %w", err)
	}
	if len(pushes) > MaxReplayPushes {
		pushes, out.Truncated = pushes[1:], true
	}
	out.Pushes = len(pushes)
	for _, p := range pushes {
		image := p.repository + ":" + p.tag
		if p.digest != "" {
			image += "@" + p.digest
		}
		pl, err := plan(ctx, tx, streams.PushV1{Repository: p.repository, Tag: p.tag, Digest: p.digest}, &pol)
		if err != nil {
			if errors.Is(err, apierr.ErrInvalid) {
				out.Skipped = append(out.Skipped, ReplaySkip{PushEventID: p.eventID, PushedAt: p.at, Image: image, Reason: ReplayInvalid})
				continue
			}
			return nil, fmt.Errorf("replay push %s: %w", p.eventID, err)
		}
		skip := ReplaySkip{PushEventID: p.eventID, PushedAt: p.at, Image: pl.NewImage}
		switch {
		case pl.Policy == nil:
			skip.Reason = ReplayNoMatch
		case pl.Policy.ID != pol.ID:
			id := pl.Policy.ID
			skip.Reason, skip.WinningPolicyID = ReplayOtherPolicy, &id
		case len(pl.Devices) == 0:
			skip.Reason = ReplayNoDevices
		}
		if skip.Reason != "" {
			out.Skipped = append(out.Skipped, skip)
			continue
		}
		pre := pl.Preview()
		out.Rollouts = append(out.Rollouts, ReplayRollout{
			PushEventID: p.eventID, PushedAt: p.at, Image: pre.Image,
			ActualRolloutID: p.rolloutID, ActualPolicyID: p.policyID,
			Strategy: pre.Strategy, Status: pre.Status, TotalDevices: pre.TotalDevices,
			BatchSizes: pl.BatchSizes, Batches: pre.Batches,
		})
	}
	return out, nil
}
