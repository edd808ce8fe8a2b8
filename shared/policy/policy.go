// Package policy is the one home of an image update policy: its Go type (the API's JSON document, the
// image_update_policies row and the snapshot a rollout keeps in image_rollouts.policy, all with the same
// field names), its defaults, its validation, and what its fields mean to the services (batch sizes,
// batch delay, maintenance window, the health check handed to devices, the failure-rate threshold).
//
// The operator API validates with Input.Validate, the planner loads policies with Load and snapshots
// them, and the dispatcher and healthwatch read snapshots with FromJSON; none of them repeats a default.
// The column defaults of image_update_policies equal Defaults (TestDefaultsMatchSchema).
package policy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetshift/fleetshift/shared/window"
)

// Update strategies (update_strategy).
const (
	Auto      = "auto"      // one batch with every device
	Staged    = "staged"    // batches by cumulative percentages, health-gated
	Manual    = "manual"    // staged, but waits for an operator's start
	Scheduled = "scheduled" // staged, only inside the maintenance window
	Rate      = "rate"      // one batch dispatched at a rate that ramps up, health-gated
)

// Strategies lists the update strategies.
var Strategies = []string{Auto, Staged, Manual, Scheduled, Rate}

// What counts towards raising a rate rollout's rate (rate_increase_criteria).
const (
	RateNotified  = "notified"  // devices dispatched (their target names the new image)
	RateSucceeded = "succeeded" // devices completed: the new image runs (healthy, with health checks on)
)

// RateCriteria are the values of rate_increase_criteria.
func RateCriteria() []string { return []string{RateNotified, RateSucceeded} }

// Defaults and limits of the rate fields (update_strategy rate only; NULL on every other strategy).
// rate_increase_threshold defaults to the base rate, rate_maximum_per_minute to DefaultRateMaximumTimes
// the base rate (at most MaxRatePerMinute).
const (
	DefaultRateIncrementFactor  = 2.0
	DefaultRateIncreaseCriteria = RateSucceeded
	DefaultRateMaximumTimes     = 10
	MaxRatePerMinute            = 1_000_000
	MaxRateIncrementFactor      = 5.0
)

// Tag policies (tag_policy).
const (
	Glob   = "glob"   // the pattern's tag part is a glob
	Semver = "semver" // additionally the tag must be inside semver_range and newer than the device's
)

// Defaults of the fields an operator may leave out.
const (
	DefaultStrategy                  = Auto
	DefaultStagedBatches             = 3
	DefaultHealthCheckEnabled        = true
	DefaultHealthCheckTimeoutSeconds = 300
	DefaultMaxFailureRate            = 0.2
	DefaultMinSampleSize             = 1
	DefaultTimezone                  = "UTC"
	DefaultEnabled                   = true
	DefaultTagPolicy                 = Glob
	DefaultOfflineGraceSeconds       = 600
	DefaultOfflineAction             = OfflineSkip
	DefaultDynamicInclusion          = true
	DefaultMaxRetries                = 0
	DefaultDownloadAhead             = false
)

// What an offline device becomes once its offline grace has passed.
const (
	OfflineSkip = "skip" // skipped: neither failed nor counted
	OfflineFail = "fail" // failed ("device offline"), counted in the failure rate
)

// OfflineActions are the values of offline_action.
func OfflineActions() []string { return []string{OfflineSkip, OfflineFail} }

// MaxMaxRetries bounds max_retries.
const MaxMaxRetries = 10

// MaxOfflineGraceSeconds bounds offline_grace_seconds (30 days).
const MaxOfflineGraceSeconds = 2_592_000

// Limits of the fields, beyond their column types (integers are int4 columns).
const (
	MaxStagedBatches          = 100
	MaxBatchDelayMinutes      = 525_600    // one year
	MaxBatchDelaySeconds      = 31_536_000 // one year
	MaxHealthCheckTimeout     = 2_592_000  // 30 days, in seconds
	MaxDevices                = 10_000     // device_uuids entries
	MaxPatternLen             = 512
	MaxDescriptionLen         = 2_000
	MaxSemverRangeLen         = 256
	MaxTimezoneLen            = 64
	maxInt4                   = math.MaxInt32
	defaultPercentagesBatches = 3
)

// DefaultPercentages returns the cumulative batch percentages of a staged policy with 3 batches and no
// batch_percentages of its own: 10, 50, 100.
func DefaultPercentages() []int { return []int{10, 50, 100} }

// Policy is an image update policy. Its JSON form is what GET /api/v1/image-policies/:id returns (less
// created_at and updated_at), what a preview shows and what a rollout snapshots.
type Policy struct {
	ID                        int64           `json:"id"`
	ImagePattern              string          `json:"image_pattern"`
	UpdateStrategy            string          `json:"update_strategy"`
	StagedBatches             int32           `json:"staged_batches"`
	BatchPercentages          []int32         `json:"batch_percentages"`
	BatchDelayMinutes         int32           `json:"batch_delay_minutes"`
	BatchDelaySeconds         *int32          `json:"batch_delay_seconds"`
	HealthCheckEnabled        bool            `json:"health_check_enabled"`
	HealthCheckTimeoutSeconds int32           `json:"health_check_timeout_seconds"`
	HealthCheckConfig         json.RawMessage `json:"health_check_config"`
	AutoRollbackEnabled       bool            `json:"auto_rollback_enabled"`
	MaxFailureRate            float64         `json:"max_failure_rate"`
	MinSampleSize             int32           `json:"min_sample_size"`
	MaintenanceWindowStart    *string         `json:"maintenance_window_start"`
	MaintenanceWindowEnd      *string         `json:"maintenance_window_end"`
	Timezone                  string          `json:"timezone"`
	FleetID                   *string         `json:"fleet_id"`
	DeviceTags                []string        `json:"device_tags"`
	DeviceUUIDs               []string        `json:"device_uuids"`
	Priority                  int32           `json:"priority"`
	Enabled                   bool            `json:"enabled"`
	Description               *string         `json:"description"`
	TagPolicy                 string          `json:"tag_policy"`
	SemverRange               *string         `json:"semver_range"`
	BatchApproval             bool            `json:"batch_approval"`
	// OfflineGraceSeconds is how long a rollout waits for an offline device in its batch before
	// OfflineAction applies; its health deadline is suspended meanwhile.
	OfflineGraceSeconds int32 `json:"offline_grace_seconds"`
	// OfflineAction is what an offline device past its grace becomes: OfflineSkip or OfflineFail.
	OfflineAction string `json:"offline_action"`
	// DynamicInclusion lets a device that registers or starts running the repository join an active
	// rollout of it.
	DynamicInclusion bool `json:"dynamic_inclusion"`
	// MaxRetries is how often a failed device is re-dispatched automatically before it counts as
	// failed (0: never).
	MaxRetries int32 `json:"max_retries"`
	// The rate fields: set (defaults filled) for update_strategy rate, nil for every other strategy.
	// RateBasePerMinute is the starting rate in devices a minute; each time RateIncreaseThreshold more
	// devices met RateIncreaseCriteria the rate is multiplied by RateIncrementFactor, up to
	// RateMaximumPerMinute (RaiseRate, RatePace).
	RateBasePerMinute     *int32   `json:"rate_base_per_minute"`
	RateIncrementFactor   *float64 `json:"rate_increment_factor"`
	RateIncreaseCriteria  *string  `json:"rate_increase_criteria"`
	RateIncreaseThreshold *int32   `json:"rate_increase_threshold"`
	RateMaximumPerMinute  *int32   `json:"rate_maximum_per_minute"`
	// DownloadAhead (scheduled strategy only) has the rollout's devices pull the new image as soon as
	// the rollout is created (a prefetch entry in their targets), so that inside the maintenance window
	// they only switch.
	DownloadAhead bool `json:"download_ahead"`
}

// Defaults returns a policy with every default set and no pattern.
func Defaults() Policy {
	return Policy{
		UpdateStrategy:            DefaultStrategy,
		StagedBatches:             DefaultStagedBatches,
		HealthCheckEnabled:        DefaultHealthCheckEnabled,
		HealthCheckTimeoutSeconds: DefaultHealthCheckTimeoutSeconds,
		HealthCheckConfig:         json.RawMessage(`{}`),
		MaxFailureRate:            DefaultMaxFailureRate,
		MinSampleSize:             DefaultMinSampleSize,
		Timezone:                  DefaultTimezone,
		Enabled:                   DefaultEnabled,
		TagPolicy:                 DefaultTagPolicy,
		OfflineGraceSeconds:       DefaultOfflineGraceSeconds,
		OfflineAction:             DefaultOfflineAction,
		DynamicInclusion:          DefaultDynamicInclusion,
		MaxRetries:                DefaultMaxRetries,
		DownloadAhead:             DefaultDownloadAhead,
	}
}

// FromJSON reads a policy from JSON documents laid over the defaults in order: each field a document
// holds replaces the value so far, fields it lacks keep it. A document that is not a readable policy is
// skipped whole: a rollout must never stall because its snapshot is odd. The dispatcher passes the live
// policy row (to_jsonb) and then the rollout's snapshot, so the snapshot wins and an old snapshot that
// lacks a field falls back to the live policy, then to the default.
func FromJSON(docs ...[]byte) Policy {
	p := Defaults()
	for _, d := range docs {
		if len(d) == 0 {
			continue
		}
		next := p
		if err := json.Unmarshal(d, &next); err == nil {
			p = next
		}
	}
	return p
}

// BatchDelay is the wait between a batch's completion and the next batch: batch_delay_seconds when
// set, else batch_delay_minutes; never negative, at most a year.
func (p Policy) BatchDelay() time.Duration {
	if p.BatchDelaySeconds != nil {
		return time.Duration(min(max(*p.BatchDelaySeconds, 0), MaxBatchDelaySeconds)) * time.Second
	}
	return time.Duration(min(max(p.BatchDelayMinutes, 0), MaxBatchDelayMinutes)) * time.Minute
}

// HealthTimeout is how long a dispatched device has to report healthy.
// OfflineGrace is how long an offline device may hold its batch.
func (p Policy) OfflineGrace() time.Duration {
	return time.Duration(min(max(p.OfflineGraceSeconds, 0), MaxOfflineGraceSeconds)) * time.Second
}

func (p Policy) HealthTimeout() time.Duration {
	return time.Duration(min(max(p.HealthCheckTimeoutSeconds, 1), MaxHealthCheckTimeout)) * time.Second
}

// HealthCheck returns the check handed to devices with the new image (each moved service's
// "healthCheck"): the policy's health_check_config with health_check_timeout_seconds as its overall
// deadline unless it sets one. Nil when health checks are off or no config is set.
func (p Policy) HealthCheck() map[string]any {
	if !p.HealthCheckEnabled || len(p.HealthCheckConfig) == 0 {
		return nil
	}
	var hc map[string]any
	if json.Unmarshal(p.HealthCheckConfig, &hc) != nil || len(hc) == 0 {
		return nil
	}
	_, hasDeadline := hc["deadline_seconds"]
	_, hasTimeout := hc["health_check_timeout_seconds"]
	if !hasDeadline && !hasTimeout {
		hc["health_check_timeout_seconds"] = float64(p.HealthTimeout() / time.Second)
	}
	return hc
}

// Exceeded reports whether failures out of finished devices breaks the policy: the rate is above
// max_failure_rate and at least min_sample_size devices (and at least one) have finished.
func (p Policy) Exceeded(failures, finished int) bool {
	if finished == 0 || finished < int(max(p.MinSampleSize, 0)) {
		return false
	}
	return float64(failures)/float64(finished) > p.MaxFailureRate
}

// Window is the policy's maintenance window. ok is false when the window cannot be read (callers treat
// it as open: a rollout must never stall on an odd snapshot). Without both times it is the whole day.
func (p Policy) Window() (w window.Window, set, ok bool) {
	if p.MaintenanceWindowStart == nil || p.MaintenanceWindowEnd == nil ||
		*p.MaintenanceWindowStart == "" || *p.MaintenanceWindowEnd == "" {
		return window.Window{Loc: time.UTC}, false, true
	}
	w, err := window.Parse(*p.MaintenanceWindowStart, *p.MaintenanceWindowEnd, p.Timezone)
	if err != nil {
		return window.Window{Loc: time.UTC}, true, false
	}
	return w, true, true
}

// Percentages returns the cumulative batch percentages the policy stands for: its own batch_percentages
// when set; otherwise 10, 50, 100 for 3 batches and an even cumulative split ending at 100 for any other
// count (1 -> 100; 2 -> 50, 100; 4 -> 25, 50, 75, 100).
func (p Policy) Percentages() []int {
	return Percentages(int(p.StagedBatches), ints(p.BatchPercentages))
}

// BatchSizes returns the batch sizes this policy gives n affected devices: one batch for auto and rate,
// the staged split (Batches of Percentages) for every other strategy.
func (p Policy) BatchSizes(n int) []int {
	if p.UpdateStrategy == Auto || p.UpdateStrategy == Rate {
		return Batches(n, []int{100})
	}
	return Batches(n, p.Percentages())
}

// Percentages is Policy.Percentages for a staged_batches count and batch_percentages list.
func Percentages(stagedBatches int, batchPercentages []int) []int {
	if len(batchPercentages) > 0 {
		return append([]int(nil), batchPercentages...)
	}
	if stagedBatches == defaultPercentagesBatches || stagedBatches <= 0 {
		return DefaultPercentages()
	}
	out := make([]int, stagedBatches)
	for k := range out {
		out[k] = (k + 1) * 100 / stagedBatches
	}
	out[len(out)-1] = 100
	return out
}

// Batches splits n devices into batches by cumulative percentages: batch k ends at max(end(k-1)+1,
// ceil(n*p_k/100)), capped at n; empty batches are dropped. Empty percentages mean DefaultPercentages.
// The sizes always sum to n: if the percentages stop short of 100, a last batch takes the rest. n = 0
// gives no batches.
func Batches(n int, percentages []int) []int {
	if n <= 0 {
		return nil
	}
	if len(percentages) == 0 {
		percentages = DefaultPercentages()
	}
	sizes := make([]int, 0, len(percentages)+1)
	end := 0
	for _, p := range percentages {
		if end >= n {
			break
		}
		p = min(max(p, 0), 100)
		e := min(max(end+1, ceilDiv(n*p, 100)), n)
		sizes = append(sizes, e-end)
		end = e
	}
	if end < n {
		sizes = append(sizes, n-end)
	}
	return sizes
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }

func ints(v []int32) []int {
	if v == nil {
		return nil
	}
	out := make([]int, len(v))
	for i, x := range v {
		out[i] = int(x)
	}
	return out
}

// Columns are the writable columns of image_update_policies in the order of Args.
const Columns = `image_pattern, update_strategy, staged_batches, batch_percentages, batch_delay_minutes,
	batch_delay_seconds, health_check_enabled, health_check_timeout_seconds, health_check_config,
	auto_rollback_enabled, max_failure_rate, min_sample_size, maintenance_window_start, maintenance_window_end,
	timezone, fleet_id, device_tags, device_uuids, priority, enabled, description, tag_policy, semver_range,
	batch_approval, offline_grace_seconds, offline_action, dynamic_inclusion, max_retries, rate_base_per_minute,
	rate_increment_factor, rate_increase_criteria, rate_increase_threshold, rate_maximum_per_minute, download_ahead`

// Placeholders are the VALUES of Columns for an INSERT or UPDATE whose first argument is Args()[0].
const Placeholders = `$1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11, $12, $13::time, $14::time, $15, $16,
	$17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33, $34`

// Args returns the values of Columns.
func (p Policy) Args() []any {
	cfg := string(p.HealthCheckConfig)
	if cfg == "" {
		cfg = "{}"
	}
	return []any{p.ImagePattern, p.UpdateStrategy, p.StagedBatches, p.BatchPercentages, p.BatchDelayMinutes,
		p.BatchDelaySeconds, p.HealthCheckEnabled, p.HealthCheckTimeoutSeconds, cfg,
		p.AutoRollbackEnabled, p.MaxFailureRate, p.MinSampleSize, p.MaintenanceWindowStart, p.MaintenanceWindowEnd,
		p.Timezone, p.FleetID, p.DeviceTags, p.DeviceUUIDs, p.Priority, p.Enabled, p.Description, p.TagPolicy,
		p.SemverRange, p.BatchApproval, p.OfflineGraceSeconds, p.OfflineAction, p.DynamicInclusion, p.MaxRetries,
		p.RateBasePerMinute, p.RateIncrementFactor, p.RateIncreaseCriteria, p.RateIncreaseThreshold, p.RateMaximumPerMinute,
		p.DownloadAhead}
}

// Querier runs a query returning one row; *pgxpool.Pool, *pgx.Conn and pgx.Tx satisfy it.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// ErrNotFound is returned by Load for a policy that does not exist.
var ErrNotFound = errors.New("policy not found")

// Load reads policy id whole.
func Load(ctx context.Context, q Querier, id int64) (*Policy, error) {
	var p Policy
	var cfg []byte
	err := q.QueryRow(ctx, `SELECT id, image_pattern, update_strategy, staged_batches, batch_percentages,
			batch_delay_minutes, batch_delay_seconds, health_check_enabled, health_check_timeout_seconds,
			health_check_config, auto_rollback_enabled, max_failure_rate, min_sample_size,
			maintenance_window_start::text, maintenance_window_end::text, timezone, fleet_id, device_tags,
			device_uuids, priority, enabled, description, tag_policy, semver_range, batch_approval,
			offline_grace_seconds, offline_action, dynamic_inclusion, max_retries, rate_base_per_minute,
			rate_increment_factor, rate_increase_criteria, rate_increase_threshold, rate_maximum_per_minute, download_ahead
		FROM image_update_policies WHERE id = $1`, id).Scan(
		&p.ID, &p.ImagePattern, &p.UpdateStrategy, &p.StagedBatches, &p.BatchPercentages,
		&p.BatchDelayMinutes, &p.BatchDelaySeconds, &p.HealthCheckEnabled, &p.HealthCheckTimeoutSeconds,
		&cfg, &p.AutoRollbackEnabled, &p.MaxFailureRate, &p.MinSampleSize,
		&p.MaintenanceWindowStart, &p.MaintenanceWindowEnd, &p.Timezone, &p.FleetID, &p.DeviceTags,
		&p.DeviceUUIDs, &p.Priority, &p.Enabled, &p.Description, &p.TagPolicy, &p.SemverRange, &p.BatchApproval,
		&p.OfflineGraceSeconds, &p.OfflineAction, &p.DynamicInclusion, &p.MaxRetries, &p.RateBasePerMinute,
		&p.RateIncrementFactor, &p.RateIncreaseCriteria, &p.RateIncreaseThreshold, &p.RateMaximumPerMinute, &p.DownloadAhead)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("load policy %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("load policy %d: %w", id, err)
	}
	p.HealthCheckConfig = cfg
	return &p, nil
}
