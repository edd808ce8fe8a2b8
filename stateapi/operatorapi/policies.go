package operatorapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/jackc/pgx/v5"

	"github.com/fleetshift/fleetshift/planner/match"
	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/stateapi/internal/devicestore"
	"github.com/fleetshift/fleetshift/stateapi/internal/httpio"
)

// Limits of a policy's fields besides their column ranges (integers are int32, as their columns).
const (
	// MaxPolicyDevices is the most device_uuids one policy may list.
	MaxPolicyDevices  = 10000
	maxPatternLen     = 512
	maxDescriptionLen = 2000
)

// policyInput is a policy as written by operators. Absent fields take their defaults (PUT replaces the
// whole policy). id, created_at and updated_at are accepted and ignored, so a GET body can be PUT back.
type policyInput struct {
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

	ID        json.RawMessage `json:"id"`
	CreatedAt json.RawMessage `json:"created_at"`
	UpdatedAt json.RawMessage `json:"updated_at"`
}

// policyRow is a validated policy, in column order.
type policyRow struct {
	imagePattern              string
	updateStrategy            string
	stagedBatches             int32
	batchPercentages          []int32
	batchDelayMinutes         int32
	batchDelaySeconds         *int32
	healthCheckEnabled        bool
	healthCheckTimeoutSeconds int32
	healthCheckConfig         string
	autoRollbackEnabled       bool
	maxFailureRate            float64
	minSampleSize             int32
	windowStart, windowEnd    *string
	timezone                  string
	fleetID                   *string
	deviceTags                []string
	deviceUUIDs               []string
	priority                  int32
	enabled                   bool
	description               *string
	tagPolicy                 string
	semverRange               *string
	batchApproval             bool
}

const policyColumns = `image_pattern, update_strategy, staged_batches, batch_percentages, batch_delay_minutes,
	batch_delay_seconds, health_check_enabled, health_check_timeout_seconds, health_check_config,
	auto_rollback_enabled, max_failure_rate, min_sample_size, maintenance_window_start, maintenance_window_end,
	timezone, fleet_id, device_tags, device_uuids, priority, enabled, description, tag_policy, semver_range,
	batch_approval`

func (p policyRow) args() []any {
	return []any{p.imagePattern, p.updateStrategy, p.stagedBatches, p.batchPercentages, p.batchDelayMinutes,
		p.batchDelaySeconds, p.healthCheckEnabled, p.healthCheckTimeoutSeconds, p.healthCheckConfig,
		p.autoRollbackEnabled, p.maxFailureRate, p.minSampleSize, p.windowStart, p.windowEnd,
		p.timezone, p.fleetID, p.deviceTags, p.deviceUUIDs, p.priority, p.enabled, p.description, p.tagPolicy,
		p.semverRange, p.batchApproval}
}

func orDefault[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

func trimmedOrNil(p *string) *string {
	if p == nil {
		return nil
	}
	s := strings.TrimSpace(*p)
	if s == "" {
		return nil
	}
	return &s
}

// validate checks every field and fills defaults. The first bad field is a 400 naming it.
func (in policyInput) validate() (policyRow, error) {
	var p policyRow
	if in.ImagePattern == nil || strings.TrimSpace(*in.ImagePattern) == "" {
		return p, apierr.Invalid("image_pattern", "required, e.g. \"acme/app:*\"")
	}
	p.imagePattern = strings.TrimSpace(*in.ImagePattern)
	if len(p.imagePattern) > maxPatternLen {
		return p, apierr.Invalid("image_pattern", "at most %d characters", maxPatternLen)
	}
	if _, err := match.Compile(p.imagePattern); err != nil {
		return p, apierr.Invalid("image_pattern", "%v", err)
	}
	p.updateStrategy = orDefault(in.UpdateStrategy, "auto")
	switch p.updateStrategy {
	case "auto", "staged", "manual", "scheduled":
	default:
		return p, apierr.Invalid("update_strategy", "want auto, staged, manual or scheduled, got %q", p.updateStrategy)
	}
	p.stagedBatches = orDefault(in.StagedBatches, 3)
	if p.stagedBatches < 1 || p.stagedBatches > 100 {
		return p, apierr.Invalid("staged_batches", "want 1 to 100, got %d", p.stagedBatches)
	}
	if in.BatchPercentages != nil {
		if len(in.BatchPercentages) == 0 {
			return p, apierr.Invalid("batch_percentages", "must not be empty; omit it for the default")
		}
		prev := int32(0)
		for i, v := range in.BatchPercentages {
			if v <= prev || v > 100 {
				return p, apierr.Invalid("batch_percentages", "cumulative percentages must increase within 1-100 (element %d is %d)", i, v)
			}
			prev = v
		}
		if prev != 100 {
			return p, apierr.Invalid("batch_percentages", "the last percentage must be 100, got %d", prev)
		}
		if in.StagedBatches != nil && int(*in.StagedBatches) != len(in.BatchPercentages) {
			return p, apierr.Invalid("batch_percentages", "has %d entries but staged_batches is %d", len(in.BatchPercentages), *in.StagedBatches)
		}
		p.batchPercentages = in.BatchPercentages
		p.stagedBatches = int32(len(in.BatchPercentages))
	}
	p.batchDelayMinutes = orDefault(in.BatchDelayMinutes, 0)
	if p.batchDelayMinutes < 0 {
		return p, apierr.Invalid("batch_delay_minutes", "must not be negative")
	}
	if in.BatchDelaySeconds != nil && *in.BatchDelaySeconds < 0 {
		return p, apierr.Invalid("batch_delay_seconds", "must not be negative")
	}
	p.batchDelaySeconds = in.BatchDelaySeconds
	p.healthCheckEnabled = orDefault(in.HealthCheckEnabled, true)
	p.healthCheckTimeoutSeconds = orDefault(in.HealthCheckTimeoutSeconds, 300)
	if p.healthCheckTimeoutSeconds <= 0 {
		return p, apierr.Invalid("health_check_timeout_seconds", "must be positive")
	}
	p.healthCheckConfig = "{}"
	if c := bytes.TrimSpace(in.HealthCheckConfig); len(c) > 0 && string(c) != "null" {
		if c[0] != '{' {
			return p, apierr.Invalid("health_check_config", "must be an object")
		}
		p.healthCheckConfig = string(c)
	}
	p.autoRollbackEnabled = orDefault(in.AutoRollbackEnabled, false)
	p.maxFailureRate = orDefault(in.MaxFailureRate, 0.2)
	if !(p.maxFailureRate >= 0 && p.maxFailureRate <= 1) {
		return p, apierr.Invalid("max_failure_rate", "want 0 to 1, got %v", p.maxFailureRate)
	}
	p.minSampleSize = orDefault(in.MinSampleSize, 1)
	if p.minSampleSize < 0 {
		return p, apierr.Invalid("min_sample_size", "must not be negative")
	}
	var err error
	if p.windowStart, err = clockTime("maintenance_window_start", in.MaintenanceWindowStart); err != nil {
		return p, err
	}
	if p.windowEnd, err = clockTime("maintenance_window_end", in.MaintenanceWindowEnd); err != nil {
		return p, err
	}
	if (p.windowStart == nil) != (p.windowEnd == nil) {
		field := "maintenance_window_end"
		if p.windowStart == nil {
			field = "maintenance_window_start"
		}
		return p, apierr.Invalid(field, "a maintenance window needs both a start and an end")
	}
	if p.updateStrategy == "scheduled" && p.windowStart == nil {
		return p, apierr.Invalid("maintenance_window_start", "the scheduled strategy needs a maintenance window")
	}
	if p.windowStart != nil && *p.windowStart == *p.windowEnd {
		return p, apierr.Invalid("maintenance_window_end", "must differ from maintenance_window_start")
	}
	p.timezone = strings.TrimSpace(orDefault(in.Timezone, "UTC"))
	if p.timezone == "" {
		p.timezone = "UTC"
	}
	if _, err := time.LoadLocation(p.timezone); err != nil || strings.EqualFold(p.timezone, "local") {
		return p, apierr.Invalid("timezone", "unknown time zone %q (want an IANA name such as Europe/Berlin)", p.timezone)
	}
	p.fleetID = trimmedOrNil(in.FleetID)
	if p.fleetID != nil && len(*p.fleetID) > devicestore.MaxFleetLen {
		return p, apierr.Invalid("fleet_id", "at most %d characters", devicestore.MaxFleetLen)
	}
	if len(bytes.TrimSpace(in.DeviceTags)) > 0 && string(bytes.TrimSpace(in.DeviceTags)) != "null" {
		tags, err := devicestore.ParseTags("device_tags", in.DeviceTags)
		if err != nil {
			return p, err
		}
		p.deviceTags = tags
	}
	if len(in.DeviceUUIDs) > MaxPolicyDevices {
		return p, apierr.Invalid("device_uuids", "at most %d devices per policy, got %d", MaxPolicyDevices, len(in.DeviceUUIDs))
	}
	if in.DeviceUUIDs != nil {
		for _, u := range in.DeviceUUIDs {
			if !devicestore.ValidUUID(u) {
				return p, apierr.Invalid("device_uuids", "not a device uuid: %q", u)
			}
		}
		p.deviceUUIDs = in.DeviceUUIDs
	}
	p.priority = orDefault(in.Priority, 0)
	p.enabled = orDefault(in.Enabled, true)
	p.description = in.Description
	if p.description != nil && len(*p.description) > maxDescriptionLen {
		return p, apierr.Invalid("description", "at most %d characters", maxDescriptionLen)
	}
	p.tagPolicy = orDefault(in.TagPolicy, "glob")
	if p.tagPolicy != "glob" && p.tagPolicy != "semver" {
		return p, apierr.Invalid("tag_policy", "want glob or semver, got %q", p.tagPolicy)
	}
	p.semverRange = trimmedOrNil(in.SemverRange)
	if p.semverRange != nil {
		if p.tagPolicy != "semver" {
			return p, apierr.Invalid("semver_range", "needs tag_policy \"semver\"")
		}
		if err := match.ValidateSemverRange(*p.semverRange); err != nil {
			return p, apierr.Invalid("semver_range", "%v", err)
		}
	}
	p.batchApproval = orDefault(in.BatchApproval, false)
	return p, nil
}

// clockTime validates an HH:MM (or HH:MM:SS) local time.
func clockTime(field string, v *string) (*string, error) {
	s := trimmedOrNil(v)
	if s == nil {
		return nil, nil
	}
	for _, layout := range []string{"15:04", "15:04:05"} {
		if t, err := time.Parse(layout, *s); err == nil {
			out := t.Format("15:04:05")
			return &out, nil
		}
	}
	return nil, apierr.Invalid(field, "want HH:MM (24-hour), got %q", *s)
}

func policyID(c *fiber.Ctx) (int64, error) {
	raw := c.Params("id")
	id, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || id < 1 {
		return 0, apierr.Invalid("id", "not a policy id: %q", raw)
	}
	return id, nil
}

// policyJSON selects a policy as JSON: every column, times as HH:MM.
const policyJSON = `to_jsonb(p) || jsonb_build_object(
	'maintenance_window_start', to_char(p.maintenance_window_start, 'HH24:MI'),
	'maintenance_window_end', to_char(p.maintenance_window_end, 'HH24:MI'))`

func (s *Service) listPolicies(c *fiber.Ctx) error {
	rows, err := s.cfg.Pool.Query(c.UserContext(), `SELECT `+policyJSON+` FROM image_update_policies p ORDER BY id`)
	if err != nil {
		return fmt.Errorf("list policies: %w", err)
	}
	list, err := pgx.CollectRows(rows, pgx.RowTo[json.RawMessage])
	if err != nil {
		return fmt.Errorf("list policies: %w", err)
	}
	if list == nil {
		list = []json.RawMessage{}
	}
	return c.JSON(fiber.Map{"policies": list})
}

func (s *Service) getPolicy(c *fiber.Ctx) error {
	id, err := policyID(c)
	if err != nil {
		return err
	}
	return s.sendPolicy(c, s.cfg.Pool.QueryRow(c.UserContext(), `SELECT `+policyJSON+` FROM image_update_policies p WHERE id = $1`, id), id, fiber.StatusOK)
}

func (s *Service) sendPolicy(c *fiber.Ctx, row pgx.Row, id int64, status int) error {
	var doc json.RawMessage
	err := row.Scan(&doc)
	if errors.Is(err, pgx.ErrNoRows) {
		return apierr.New(apierr.ErrNotFound, "policy_not_found", "policy %d not found", id)
	}
	if err != nil {
		return fmt.Errorf("policy %d: %w", id, err)
	}
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
	return c.Status(status).Send(doc)
}

func (s *Service) createPolicy(c *fiber.Ctx) error {
	var in policyInput
	if err := httpio.DecodeBody(c, &in, true, httpio.DefaultMaxBody); err != nil {
		return err
	}
	p, err := in.validate()
	if err != nil {
		return err
	}
	return s.sendPolicy(c, s.cfg.Pool.QueryRow(c.UserContext(), `WITH p AS (INSERT INTO image_update_policies (`+policyColumns+`)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11, $12, $13::time, $14::time, $15, $16, $17, $18, $19,
			$20, $21, $22, $23, $24) RETURNING *)
		SELECT `+policyJSON+` FROM p`, p.args()...), 0, fiber.StatusCreated)
}

func (s *Service) replacePolicy(c *fiber.Ctx) error {
	id, err := policyID(c)
	if err != nil {
		return err
	}
	var in policyInput
	if err := httpio.DecodeBody(c, &in, true, httpio.DefaultMaxBody); err != nil {
		return err
	}
	p, err := in.validate()
	if err != nil {
		return err
	}
	args := append(p.args(), id)
	return s.sendPolicy(c, s.cfg.Pool.QueryRow(c.UserContext(), `WITH p AS (UPDATE image_update_policies SET
		(`+policyColumns+`, updated_at) = ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11, $12, $13::time,
			$14::time, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, now())
		WHERE id = $25 RETURNING *)
		SELECT `+policyJSON+` FROM p`, args...), id, fiber.StatusOK)
}

func (s *Service) deletePolicy(c *fiber.Ctx) error {
	id, err := policyID(c)
	if err != nil {
		return err
	}
	tag, err := s.cfg.Pool.Exec(c.UserContext(), `DELETE FROM image_update_policies WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("delete policy %d: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return apierr.New(apierr.ErrNotFound, "policy_not_found", "policy %d not found", id)
	}
	return c.SendStatus(fiber.StatusNoContent)
}
