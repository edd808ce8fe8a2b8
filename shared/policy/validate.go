package policy

import (
	"bytes"
	"encoding/json"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/device"
	"github.com/fleetshift/fleetshift/shared/match"
)

// Input is a policy as an operator writes it (the body of POST and PUT /api/v1/image-policies). Absent
// fields take their defaults (PUT replaces the whole policy). id, created_at and updated_at are accepted
// and ignored, so a GET body can be PUT back. Integers are int32 like their columns, so a value out of
// range is a field-named 400 when decoding with apierr.DecodeJSON.
type Input struct {
	ImagePattern              *string         `json:"image_pattern"`
	UpdateStrategy            *string         `json:"update_strategy"`
	StagedBatches             *int32          `json:"staged_batches"`
	BatchPercentages          []int32         `json:"batch_percentages"`
	BatchDelayMinutes         *int32          `json:"batch_delay_minutes"`
	BatchDelaySeconds         *int32          `json:"batch_delay_seconds"`
	HealthCheckEnabled        *bool           `json:"health_check_enabled"`
	HealthCheckTimeoutSeconds *int32          `json:"health_check_timeout_seconds"`
	HealthCheckConfig         json.RawMessage `json:"health_check_config"`
	AutoRollbackEnabled       *bool           `json:"auto_rollback_enabled"`
	MaxFailureRate            *float64        `json:"max_failure_rate"`
	MinSampleSize             *int32          `json:"min_sample_size"`
	MaintenanceWindowStart    *string         `json:"maintenance_window_start"`
	MaintenanceWindowEnd      *string         `json:"maintenance_window_end"`
	Timezone                  *string         `json:"timezone"`
	FleetID                   *string         `json:"fleet_id"`
	DeviceTags                json.RawMessage `json:"device_tags"`
	DeviceUUIDs               []string        `json:"device_uuids"`
	Priority                  *int32          `json:"priority"`
	Enabled                   *bool           `json:"enabled"`
	Description               *string         `json:"description"`
	TagPolicy                 *string         `json:"tag_policy"`
	SemverRange               *string         `json:"semver_range"`
	BatchApproval             *bool           `json:"batch_approval"`
	OfflineGraceSeconds       *int32          `json:"offline_grace_seconds"`
	OfflineAction             *string         `json:"offline_action"`
	DynamicInclusion          *bool           `json:"dynamic_inclusion"`
	MaxRetries                *int32          `json:"max_retries"`
	RateBasePerMinute         *int32          `json:"rate_base_per_minute"`
	RateIncrementFactor       *float64        `json:"rate_increment_factor"`
	RateIncreaseCriteria      *string         `json:"rate_increase_criteria"`
	RateIncreaseThreshold     *int32          `json:"rate_increase_threshold"`
	RateMaximumPerMinute      *int32          `json:"rate_maximum_per_minute"`
	DownloadAhead             *bool           `json:"download_ahead"`

	ID        json.RawMessage `json:"id"`
	CreatedAt json.RawMessage `json:"created_at"`
	UpdatedAt json.RawMessage `json:"updated_at"`
}

// Decode reads a policy body (one JSON object, unknown fields refused) and validates it. Every problem
// is an apierr.ErrInvalid error naming the field and the expected shape (HTTP 400).
func Decode(body []byte) (Policy, error) {
	var in Input
	if err := apierr.DecodeJSON(body, &in, true); err != nil {
		return Policy{}, err
	}
	return in.Validate()
}

func orDefault[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// text returns the trimmed string (nil when absent or blank) after checking it is valid UTF-8 without
// NUL and at most maxLen bytes.
func text(field string, p *string, maxLen int) (*string, error) {
	if p == nil {
		return nil, nil
	}
	if err := apierr.CheckText(field, *p); err != nil {
		return nil, err
	}
	s := strings.TrimSpace(*p)
	if s == "" {
		return nil, nil
	}
	if len(s) > maxLen {
		return nil, apierr.Invalid(field, "expected a string of at most %d bytes, got %d", maxLen, len(s))
	}
	return &s, nil
}

// intIn checks an integer field against lo..hi.
func intIn(field string, v, lo, hi int32) error {
	if v < lo || v > hi {
		return apierr.Invalid(field, "expected an integer from %d to %d, got %d", lo, hi, v)
	}
	return nil
}

// Validate checks every field and fills the defaults. The first bad field is an apierr.ErrInvalid error
// naming it and the shape it expects.
func (in Input) Validate() (Policy, error) {
	p := Defaults()
	pattern, err := text("image_pattern", in.ImagePattern, MaxPatternLen)
	if err != nil {
		return p, err
	}
	if pattern == nil {
		return p, apierr.Invalid("image_pattern", "required: a string such as \"acme/app:*\"")
	}
	p.ImagePattern = *pattern
	if _, err := match.Compile(p.ImagePattern); err != nil {
		return p, apierr.Invalid("image_pattern", "%v", err)
	}
	p.UpdateStrategy = orDefault(in.UpdateStrategy, DefaultStrategy)
	switch p.UpdateStrategy {
	case Auto, Staged, Manual, Scheduled, Rate:
	default:
		return p, apierr.Invalid("update_strategy", "expected one of %s, got %q", strings.Join(Strategies, ", "), p.UpdateStrategy)
	}
	p.StagedBatches = orDefault(in.StagedBatches, DefaultStagedBatches)
	if err := intIn("staged_batches", p.StagedBatches, 1, MaxStagedBatches); err != nil {
		return p, err
	}
	if in.BatchPercentages != nil {
		if len(in.BatchPercentages) == 0 || len(in.BatchPercentages) > MaxStagedBatches {
			return p, apierr.Invalid("batch_percentages", "expected an array of 1 to %d cumulative percentages ending at 100 (omit it for the default)", MaxStagedBatches)
		}
		prev := int32(0)
		for i, v := range in.BatchPercentages {
			if v <= prev || v > 100 {
				return p, apierr.Invalid("batch_percentages", "expected increasing integers from 1 to 100 ending at 100; element %d is %d", i, v)
			}
			prev = v
		}
		if prev != 100 {
			return p, apierr.Invalid("batch_percentages", "expected the last percentage to be 100, got %d", prev)
		}
		if in.StagedBatches != nil && int(*in.StagedBatches) != len(in.BatchPercentages) {
			return p, apierr.Invalid("batch_percentages", "has %d entries but staged_batches is %d", len(in.BatchPercentages), *in.StagedBatches)
		}
		p.BatchPercentages = in.BatchPercentages
		p.StagedBatches = int32(len(in.BatchPercentages))
	}
	p.BatchDelayMinutes = orDefault(in.BatchDelayMinutes, 0)
	if err := intIn("batch_delay_minutes", p.BatchDelayMinutes, 0, MaxBatchDelayMinutes); err != nil {
		return p, err
	}
	if in.BatchDelaySeconds != nil {
		if err := intIn("batch_delay_seconds", *in.BatchDelaySeconds, 0, MaxBatchDelaySeconds); err != nil {
			return p, err
		}
	}
	p.BatchDelaySeconds = in.BatchDelaySeconds
	p.HealthCheckEnabled = orDefault(in.HealthCheckEnabled, DefaultHealthCheckEnabled)
	p.HealthCheckTimeoutSeconds = orDefault(in.HealthCheckTimeoutSeconds, DefaultHealthCheckTimeoutSeconds)
	if err := intIn("health_check_timeout_seconds", p.HealthCheckTimeoutSeconds, 1, MaxHealthCheckTimeout); err != nil {
		return p, err
	}
	if c := bytes.TrimSpace(in.HealthCheckConfig); len(c) > 0 && string(c) != "null" {
		if c[0] != '{' {
			return p, apierr.Invalid("health_check_config", "expected an object")
		}
		if err := apierr.CheckJSONText(c, "health_check_config"); err != nil {
			return p, err
		}
		p.HealthCheckConfig = json.RawMessage(c)
	}
	p.AutoRollbackEnabled = orDefault(in.AutoRollbackEnabled, false)
	p.MaxFailureRate = orDefault(in.MaxFailureRate, DefaultMaxFailureRate)
	if math.IsNaN(p.MaxFailureRate) || p.MaxFailureRate < 0 || p.MaxFailureRate > 1 {
		return p, apierr.Invalid("max_failure_rate", "expected a number from 0 to 1, got %v", p.MaxFailureRate)
	}
	p.MinSampleSize = orDefault(in.MinSampleSize, DefaultMinSampleSize)
	if err := intIn("min_sample_size", p.MinSampleSize, 0, maxInt4); err != nil {
		return p, err
	}
	if p.MaintenanceWindowStart, err = clockTime("maintenance_window_start", in.MaintenanceWindowStart); err != nil {
		return p, err
	}
	if p.MaintenanceWindowEnd, err = clockTime("maintenance_window_end", in.MaintenanceWindowEnd); err != nil {
		return p, err
	}
	if (p.MaintenanceWindowStart == nil) != (p.MaintenanceWindowEnd == nil) {
		field := "maintenance_window_end"
		if p.MaintenanceWindowStart == nil {
			field = "maintenance_window_start"
		}
		return p, apierr.Invalid(field, "a maintenance window needs both a start and an end (HH:MM)")
	}
	if p.UpdateStrategy == Scheduled && p.MaintenanceWindowStart == nil {
		return p, apierr.Invalid("maintenance_window_start", "the scheduled strategy needs a maintenance window (HH:MM start and end)")
	}
	if p.MaintenanceWindowStart != nil && *p.MaintenanceWindowStart == *p.MaintenanceWindowEnd {
		return p, apierr.Invalid("maintenance_window_end", "must differ from maintenance_window_start")
	}
	tz, err := text("timezone", in.Timezone, MaxTimezoneLen)
	if err != nil {
		return p, err
	}
	if tz != nil {
		p.Timezone = *tz
	}
	if _, err := time.LoadLocation(p.Timezone); err != nil || strings.EqualFold(p.Timezone, "local") {
		return p, apierr.Invalid("timezone", "unknown time zone %q: expected an IANA name such as Europe/Berlin", p.Timezone)
	}
	if p.FleetID, err = text("fleet_id", in.FleetID, device.MaxFleetLen); err != nil {
		return p, err
	}
	if raw := bytes.TrimSpace(in.DeviceTags); len(raw) > 0 && string(raw) != "null" {
		if p.DeviceTags, err = device.ParseTags("device_tags", raw); err != nil {
			return p, err
		}
	}
	if in.DeviceUUIDs != nil {
		if len(in.DeviceUUIDs) > MaxDevices {
			return p, apierr.Invalid("device_uuids", "expected at most %d device uuids, got %d", MaxDevices, len(in.DeviceUUIDs))
		}
		for _, u := range in.DeviceUUIDs {
			if !device.ValidUUID(u) {
				return p, apierr.Invalid("device_uuids", "expected device uuids (1-64 of A-Z a-z 0-9 _ -), got %q", u)
			}
		}
		p.DeviceUUIDs = in.DeviceUUIDs
	}
	p.Priority = orDefault(in.Priority, 0)
	p.Enabled = orDefault(in.Enabled, DefaultEnabled)
	if in.Description != nil {
		if err := apierr.CheckText("description", *in.Description); err != nil {
			return p, err
		}
		if len(*in.Description) > MaxDescriptionLen {
			return p, apierr.Invalid("description", "expected a string of at most %d bytes, got %d", MaxDescriptionLen, len(*in.Description))
		}
		p.Description = in.Description
	}
	p.TagPolicy = orDefault(in.TagPolicy, DefaultTagPolicy)
	if p.TagPolicy != Glob && p.TagPolicy != Semver {
		return p, apierr.Invalid("tag_policy", "expected %q or %q, got %q", Glob, Semver, p.TagPolicy)
	}
	if p.SemverRange, err = text("semver_range", in.SemverRange, MaxSemverRangeLen); err != nil {
		return p, err
	}
	if p.SemverRange != nil {
		if p.TagPolicy != Semver {
			return p, apierr.Invalid("semver_range", "needs tag_policy \"semver\"")
		}
		if err := match.ValidateSemverRange(*p.SemverRange); err != nil {
			return p, apierr.Invalid("semver_range", "%v", err)
		}
	}
	p.BatchApproval = orDefault(in.BatchApproval, false)
	p.OfflineGraceSeconds = orDefault(in.OfflineGraceSeconds, DefaultOfflineGraceSeconds)
	if err := intIn("offline_grace_seconds", p.OfflineGraceSeconds, 0, MaxOfflineGraceSeconds); err != nil {
		return p, err
	}
	p.OfflineAction = orDefault(in.OfflineAction, DefaultOfflineAction)
	if !slices.Contains(OfflineActions(), p.OfflineAction) {
		return p, apierr.Invalid("offline_action", "must be one of %s", strings.Join(OfflineActions(), ", "))
	}
	p.DynamicInclusion = orDefault(in.DynamicInclusion, DefaultDynamicInclusion)
	p.MaxRetries = orDefault(in.MaxRetries, DefaultMaxRetries)
	if err := intIn("max_retries", p.MaxRetries, 0, MaxMaxRetries); err != nil {
		return p, err
	}
	if err := in.validateRate(&p); err != nil {
		return p, err
	}
	p.DownloadAhead = orDefault(in.DownloadAhead, DefaultDownloadAhead)
	if p.DownloadAhead && p.UpdateStrategy != Scheduled {
		return p, apierr.Invalid("download_ahead", "needs update_strategy %q (devices download ahead of a maintenance window), got %q",
			Scheduled, p.UpdateStrategy)
	}
	return p, nil
}

// validateRate checks the rate fields and fills their defaults: they belong to update_strategy rate
// (refused, by name, on any other strategy; null counts as absent, so a GET body can be PUT back), where
// rate_base_per_minute is required.
func (in Input) validateRate(p *Policy) error {
	if p.UpdateStrategy != Rate {
		for _, f := range []struct {
			name string
			set  bool
		}{
			{"rate_base_per_minute", in.RateBasePerMinute != nil}, {"rate_increment_factor", in.RateIncrementFactor != nil},
			{"rate_increase_criteria", in.RateIncreaseCriteria != nil}, {"rate_increase_threshold", in.RateIncreaseThreshold != nil},
			{"rate_maximum_per_minute", in.RateMaximumPerMinute != nil},
		} {
			if f.set {
				return apierr.Invalid(f.name, "only applies to update_strategy %q (this policy is %q)", Rate, p.UpdateStrategy)
			}
		}
		return nil
	}
	if in.RateBasePerMinute == nil {
		return apierr.Invalid("rate_base_per_minute", "required for update_strategy %q: devices a minute to start with, 1 to %d", Rate, MaxRatePerMinute)
	}
	base := *in.RateBasePerMinute
	if err := intIn("rate_base_per_minute", base, 1, MaxRatePerMinute); err != nil {
		return err
	}
	factor := orDefault(in.RateIncrementFactor, DefaultRateIncrementFactor)
	if math.IsNaN(factor) || factor <= 1 || factor > MaxRateIncrementFactor {
		return apierr.Invalid("rate_increment_factor", "expected a number above 1 and at most %v, got %v", MaxRateIncrementFactor, factor)
	}
	criteria := orDefault(in.RateIncreaseCriteria, DefaultRateIncreaseCriteria)
	if !slices.Contains(RateCriteria(), criteria) {
		return apierr.Invalid("rate_increase_criteria", "expected %q or %q, got %q", RateNotified, RateSucceeded, criteria)
	}
	threshold := orDefault(in.RateIncreaseThreshold, base)
	if err := intIn("rate_increase_threshold", threshold, 1, maxInt4); err != nil {
		return err
	}
	maximum := orDefault(in.RateMaximumPerMinute, int32(DefaultRateMaximum(int(base))))
	if maximum < base || maximum > MaxRatePerMinute {
		return apierr.Invalid("rate_maximum_per_minute", "expected an integer from rate_base_per_minute (%d) to %d, got %d", base, MaxRatePerMinute, maximum)
	}
	p.RateBasePerMinute, p.RateIncrementFactor, p.RateIncreaseCriteria = &base, &factor, &criteria
	p.RateIncreaseThreshold, p.RateMaximumPerMinute = &threshold, &maximum
	return nil
}

// clockTime validates an HH:MM (or HH:MM:SS) local time and returns it as HH:MM:SS.
func clockTime(field string, v *string) (*string, error) {
	s, err := text(field, v, 16)
	if err != nil || s == nil {
		return nil, err
	}
	for _, layout := range []string{"15:04", "15:04:05"} {
		if t, err := time.Parse(layout, *s); err == nil {
			out := t.Format("15:04:05")
			return &out, nil
		}
	}
	return nil, apierr.Invalid(field, "expected a time of day HH:MM (24-hour), got %q", *s)
}
