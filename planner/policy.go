package planner

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/fleetshift/fleetshift/planner/match"
)

// Policy is an image update policy as it stood when a plan was made. Its JSON form is the snapshot
// stored in image_rollouts.policy and the "policy" of a preview, with the API's field names.
type Policy struct {
	ID                        int64           `json:"id"`
	ImagePattern              string          `json:"image_pattern"`
	UpdateStrategy            string          `json:"update_strategy"`
	StagedBatches             int             `json:"staged_batches"`
	BatchPercentages          []int           `json:"batch_percentages"`
	BatchDelayMinutes         int             `json:"batch_delay_minutes"`
	BatchDelaySeconds         *int            `json:"batch_delay_seconds"`
	HealthCheckEnabled        bool            `json:"health_check_enabled"`
	HealthCheckTimeoutSeconds int             `json:"health_check_timeout_seconds"`
	HealthCheckConfig         json.RawMessage `json:"health_check_config"`
	AutoRollbackEnabled       bool            `json:"auto_rollback_enabled"`
	MaxFailureRate            float64         `json:"max_failure_rate"`
	MinSampleSize             int             `json:"min_sample_size"`
	MaintenanceWindowStart    *string         `json:"maintenance_window_start"`
	MaintenanceWindowEnd      *string         `json:"maintenance_window_end"`
	Timezone                  string          `json:"timezone"`
	FleetID                   *string         `json:"fleet_id"`
	DeviceTags                []string        `json:"device_tags"`
	DeviceUUIDs               []string        `json:"device_uuids"`
	Priority                  int             `json:"priority"`
	Enabled                   bool            `json:"enabled"`
	Description               *string         `json:"description"`
	TagPolicy                 string          `json:"tag_policy"`
	SemverRange               *string         `json:"semver_range"`
	BatchApproval             bool            `json:"batch_approval"`
}

// Strategies (image_update_policies.update_strategy).
const (
	StrategyAuto      = "auto"
	StrategyStaged    = "staged"
	StrategyManual    = "manual"
	StrategyScheduled = "scheduled"
)

// BatchSizes returns the batch sizes this policy gives n affected devices: one batch for auto, the
// staged split (Percentages, Batches) for every other strategy.
func (p *Policy) BatchSizes(n int) []int {
	if p.UpdateStrategy == StrategyAuto {
		return Batches(n, []int{100})
	}
	return Batches(n, Percentages(p.StagedBatches, p.BatchPercentages))
}

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

// winningPolicy returns the enabled policy that applies to a push of repository:tag (nil when none),
// and its compiled pattern and semver range. Only the few columns matching needs are read for every
// enabled policy; the winner is then read whole. Policies whose pattern or range no longer compiles
// are skipped.
func winningPolicy(ctx context.Context, q Querier, repository, tag string) (*Policy, *candidate, error) {
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
		p, err := match.Compile(pattern)
		if err != nil {
			continue
		}
		c := candidate{id: id, priority: priority, pattern: p}
		if tagPolicy == "semver" {
			sv, err := match.CompileSemver(semverRange)
			if err != nil {
				continue
			}
			c.semver = &sv
		}
		if !c.admits(repository, tag) {
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
	if best == nil {
		return nil, nil, nil
	}
	pol, err := loadPolicy(ctx, q, best.id)
	if err != nil {
		return nil, nil, err
	}
	return pol, best, nil
}

// loadPolicy reads one policy whole.
func loadPolicy(ctx context.Context, q Querier, id int64) (*Policy, error) {
	var p Policy
	var cfg []byte
	err := q.QueryRow(ctx, `SELECT id, image_pattern, update_strategy, staged_batches, batch_percentages,
			batch_delay_minutes, batch_delay_seconds, health_check_enabled, health_check_timeout_seconds,
			health_check_config, auto_rollback_enabled, max_failure_rate, min_sample_size,
			maintenance_window_start::text, maintenance_window_end::text, timezone, fleet_id, device_tags,
			device_uuids, priority, enabled, description, tag_policy, semver_range, batch_approval
		FROM image_update_policies WHERE id = $1`, id).Scan(
		&p.ID, &p.ImagePattern, &p.UpdateStrategy, &p.StagedBatches, &p.BatchPercentages,
		&p.BatchDelayMinutes, &p.BatchDelaySeconds, &p.HealthCheckEnabled, &p.HealthCheckTimeoutSeconds,
		&cfg, &p.AutoRollbackEnabled, &p.MaxFailureRate, &p.MinSampleSize,
		&p.MaintenanceWindowStart, &p.MaintenanceWindowEnd, &p.Timezone, &p.FleetID, &p.DeviceTags,
		&p.DeviceUUIDs, &p.Priority, &p.Enabled, &p.Description, &p.TagPolicy, &p.SemverRange, &p.BatchApproval)
	if err == pgx.ErrNoRows {
		return nil, fmt.Errorf("load policy %d: vanished while planning", id)
	}
	if err != nil {
		return nil, fmt.Errorf("load policy %d: %w", id, err)
	}
	p.HealthCheckConfig = cfg
	return &p, nil
}
