package planner

import (
	"context"
	"errors"
	"fmt"
	"math"

	"github.com/fleetshift/fleetshift/shared/match"
	policies "github.com/fleetshift/fleetshift/shared/policy"
)

// Policy is an image update policy as it stood when a plan was made (shared/policy). Its JSON form is
// the snapshot stored in image_rollouts.policy and the "policy" of a preview, with the API's field names.
type Policy = policies.Policy

// Strategies (image_update_policies.update_strategy, shared/policy).
const (
	StrategyAuto      = policies.Auto
	StrategyStaged    = policies.Staged
	StrategyManual    = policies.Manual
	StrategyScheduled = policies.Scheduled
	StrategyRate      = policies.Rate
)

// candidate is an enabled policy whose pattern compiled.
type candidate struct {
	id       int64
	priority int
	pattern  match.Pattern
	semver   *match.Semver
}

// admits reports whether the candidate applies to a push of repository:tag.
func (c candidate) admits(repository, tag string) bool {
	if !c.pattern.MatchRepository(repository) || !c.pattern.MatchTag(tag) {
		return false
	}
	return c.semver == nil || c.semver.Admits(tag)
}

// better reports whether c wins over o: more specific pattern, then higher priority, then lower id.
func (c candidate) better(o candidate) bool {
	if cs, os := c.pattern.Specificity(), o.pattern.Specificity(); cs != os {
		return cs > os
	}
	if c.priority != o.priority {
		return c.priority > o.priority
	}
	return c.id < o.id
}

// compile returns the candidate of a policy row; ok is false when its pattern or range does not compile.
func compile(id int64, pattern string, priority int, tagPolicy, semverRange string) (candidate, bool) {
	p, err := match.Compile(pattern)
	if err != nil {
		return candidate{}, false
	}
	c := candidate{id: id, priority: priority, pattern: p}
	if tagPolicy == policies.Semver {
		sv, err := match.CompileSemver(semverRange)
		if err != nil {
			return candidate{}, false
		}
		c.semver = &sv
	}
	return c, true
}

// unsavedID ranks a policy that is not stored yet (a replayed new policy) after every stored one in
// the lowest-id tie-break, as its id would be once created.
const unsavedID = math.MaxInt64

// winningPolicy returns the enabled policy that applies to a push of repository:tag (nil when none),
// and its compiled pattern and semver range. Only the few columns matching needs are read for every
// enabled policy; the winner is then read whole. Policies whose pattern or range no longer compiles
// are skipped. A non-nil override replaces the stored policy of its id (ID 0: a policy not stored yet)
// and is returned as it is when it wins.
func winningPolicy(ctx context.Context, q Querier, repository, tag string, override *Policy) (*Policy, *candidate, error) {
	rows, err := q.Query(ctx, `SELECT id, image_pattern, priority, tag_policy, coalesce(semver_range, '')
		FROM image_update_policies WHERE enabled`)
	if err != nil {
		return nil, nil, fmt.Errorf("load enabled policies: %w", err)
	}
	var best *candidate
	for rows.Next() {
		var (
			id                 int64
			pattern, tagPolicy string
			semverRange        string
			priority           int
		)
		if err := rows.Scan(&id, &pattern, &priority, &tagPolicy, &semverRange); err != nil {
			rows.Close()
			return nil, nil, fmt.Errorf("read policy: %w", err)
		}
		if override != nil && id == override.ID {
			continue
		}
		c, ok := compile(id, pattern, priority, tagPolicy, semverRange)
		if !ok || !c.admits(repository, tag) {
			continue
		}
		if best == nil || c.better(*best) {
			best = &c
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("load enabled policies: %w", err)
	}
	fromOverride := false
	if override != nil && override.Enabled {
		id := override.ID
		if id == 0 {
			id = unsavedID
		}
		c, ok := compile(id, override.ImagePattern, int(override.Priority), override.TagPolicy, deref(override.SemverRange))
		if ok && c.admits(repository, tag) && (best == nil || c.better(*best)) {
			best, fromOverride = &c, true
		}
	}
	if best == nil {
		return nil, nil, nil
	}
	if fromOverride {
		pol := *override
		return &pol, best, nil
	}
	pol, err := loadPolicy(ctx, q, best.id)
	if err != nil {
		return nil, nil, err
	}
	return pol, best, nil
}

// loadPolicy reads one policy whole.
func loadPolicy(ctx context.Context, q Querier, id int64) (*Policy, error) {
	p, err := policies.Load(ctx, q, id)
	if errors.Is(err, policies.ErrNotFound) {
		return nil, fmt.Errorf("load policy %d: vanished while planning", id)
	}
	return p, err
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
