// Package planner turns a registry push into a rollout: it finds the policy that applies, the devices
// it affects and their batches (Plan, shared by the dry-run Preview and the real rollout so the two
// never disagree), and writes the rollout in one transaction (Service).
package planner

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/imageref"
	"github.com/fleetshift/fleetshift/shared/lifecycle"
	"github.com/fleetshift/fleetshift/shared/match"
	policies "github.com/fleetshift/fleetshift/shared/policy"
	"github.com/fleetshift/fleetshift/streams"
)

// Querier runs read queries; *pgxpool.Pool, *pgx.Conn and pgx.Tx all satisfy it.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

var _ Querier = pgx.Tx(nil)

// Reasons a device running the pushed repository is left out of a rollout.
const (
	ReasonRevoked        = "device revoked"
	ReasonFleet          = "filter: not in the policy's fleet"
	ReasonTags           = "filter: lacks the policy's device tags"
	ReasonUUIDs          = "filter: not in the policy's device_uuids"
	ReasonAlreadyOnImage = "already on the pushed tag and digest"
	ReasonTagNotMatched  = "current tag not matched by the policy's image pattern"
)

// ReasonNoPolicy is RolloutPlan.Reason when no enabled policy applies to the push.
const ReasonNoPolicy = "no enabled policy matches the pushed image"

// RolloutPlan is what a push would do, computed without writing anything.
type RolloutPlan struct {
	// Push is the push planned (repository and image name normalised).
	Push streams.PushV1
	// Image is the pushed reference.
	Image imageref.Ref
	// NewImage is the reference written into targets: familiar repo:tag[@digest].
	NewImage string
	// Policy is the winning policy; nil when none applies (then Reason says so and nothing else is set).
	Policy *Policy
	Reason string
	// Devices are the affected devices in batch order (by uuid), each with its batch number.
	Devices []DevicePlan
	// BatchSizes are the sizes of batches 1..n; they sum to len(Devices).
	BatchSizes []int
	// Excluded are devices running the repository that are left out, with the reason.
	Excluded []Exclusion
}

// DevicePlan is one affected device.
type DevicePlan struct {
	DeviceUUID string `json:"device_uuid"`
	Batch      int    `json:"batch"`
	// OldImage is the device's own current reference of the repository, restored on rollback.
	OldImage string `json:"old_image"`
	OldTag   string `json:"old_tag"`
}

// Exclusion is a device running the repository that the rollout leaves alone.
type Exclusion struct {
	DeviceUUID string `json:"device_uuid"`
	Reason     string `json:"reason"`
}

// OldTag returns the most common old tag among the affected devices (ties: the smallest), "" for none.
func (p *RolloutPlan) OldTag() string {
	counts := map[string]int{}
	best, bestN := "", 0
	for _, d := range p.Devices {
		counts[d.OldTag]++
	}
	for tag, n := range counts {
		if n > bestN || (n == bestN && tag < best) {
			best, bestN = tag, n
		}
	}
	return best
}

// pushRef validates and normalises the push's image reference.
func pushRef(push streams.PushV1) (imageref.Ref, error) {
	name := cmpOr(push.Repository, push.ImageName)
	if name == "" {
		return imageref.Ref{}, apierr.Invalid("image", "the push names no repository")
	}
	if push.Tag == "" {
		return imageref.Ref{}, apierr.Invalid("image", "the push of %s carries no tag", name)
	}
	raw := name + ":" + push.Tag
	if push.Digest != "" {
		raw += "@" + push.Digest
	}
	ref, err := imageref.Parse(raw)
	if err != nil {
		return imageref.Ref{}, apierr.Invalid("image", "%v", err)
	}
	return ref, nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// Plan computes, reading only, what push would do: the winning enabled policy (most specific pattern,
// then higher priority, then lowest id; a semver policy applies only to a tag inside its range), the
// affected devices with their own old image and batch number, and the devices left out with a reason.
// Affected devices pass the policy's filters, run the pushed repository (found through the
// device_images index) with a tag the pattern admits (and, for semver policies, an older version), and
// are not already on the pushed tag and digest. The same function underlies Preview and the real
// rollout. An invalid push is an apierr.ErrInvalid error.
func Plan(ctx context.Context, q Querier, push streams.PushV1) (*RolloutPlan, error) {
	return plan(ctx, q, push, nil)
}

// plan is Plan with an optional policy laid over the stored ones (a replay's new or changed policy):
// with override set, the stored policy of the same id is ignored and override competes in its place.
func plan(ctx context.Context, q Querier, push streams.PushV1, override *Policy) (*RolloutPlan, error) {
	ref, err := pushRef(push)
	if err != nil {
		return nil, err
	}
	push.Repository, push.ImageName, push.Tag, push.Digest = ref.Repository, ref.Familiar, ref.Tag, ref.Digest
	plan := &RolloutPlan{Push: push, Image: ref, NewImage: ref.String()}
	pol, cand, err := winningPolicy(ctx, q, ref.Repository, ref.Tag, override)
	if err != nil {
		return nil, fmt.Errorf("plan %s: %w", ref, err)
	}
	if pol == nil {
		plan.Reason = ReasonNoPolicy
		return plan, nil
	}
	plan.Policy = pol
	if err := plan.devices(ctx, q, cand); err != nil {
		return nil, fmt.Errorf("plan %s: %w", ref, err)
	}
	plan.BatchSizes = pol.BatchSizes(len(plan.Devices))
	i := 0
	for b, size := range plan.BatchSizes {
		for range size {
			plan.Devices[i].Batch = b + 1
			i++
		}
	}
	return plan, nil
}

// service is one device_images row of the pushed repository.
type service struct {
	tag, digest, image string
}

// devices fills Devices and Excluded from one indexed query over the repository's services.
func (p *RolloutPlan) devices(ctx context.Context, q Querier, cand *candidate) error {
	pol := p.Policy
	var fleet, tags, uuids any
	if pol.FleetID != nil && *pol.FleetID != "" {
		fleet = *pol.FleetID
	}
	if len(pol.DeviceTags) > 0 {
		tags = pol.DeviceTags
	}
	if len(pol.DeviceUUIDs) > 0 {
		uuids = pol.DeviceUUIDs
	}
	rows, err := q.Query(ctx, `
		SELECT di.device_uuid, di.tag, di.digest, di.image,
		       d.revoked_at IS NULL,
		       ($2::text IS NULL OR d.fleet_id IS NOT DISTINCT FROM $2::text),
		       ($3::text[] IS NULL OR d.tags @> $3::text[]),
		       ($4::text[] IS NULL OR d.uuid = ANY($4::text[]))
		FROM device_images di
		JOIN devices d ON d.uuid = di.device_uuid
		WHERE di.repository = $1
		ORDER BY di.device_uuid COLLATE "C", di.app_id COLLATE "C", di.service_index`,
		p.Image.Repository, fleet, tags, uuids)
	if err != nil {
		return fmt.Errorf("find devices running %s: %w", p.Image.Repository, err)
	}
	defer rows.Close()
	var (
		cur      string
		filtered string // reason the current device fails the filters, "" when it passes
		svcs     []service
	)
	flush := func() {
		if cur == "" {
			return
		}
		if filtered != "" {
			p.Excluded = append(p.Excluded, Exclusion{DeviceUUID: cur, Reason: filtered})
		} else {
			p.classify(cur, svcs, cand)
		}
		svcs = svcs[:0]
	}
	for rows.Next() {
		var (
			uuid                             string
			s                                service
			active, inFleet, hasTags, inList bool
		)
		if err := rows.Scan(&uuid, &s.tag, &s.digest, &s.image, &active, &inFleet, &hasTags, &inList); err != nil {
			return fmt.Errorf("read devices running %s: %w", p.Image.Repository, err)
		}
		if uuid != cur {
			flush()
			cur = uuid
			switch {
			case !active:
				filtered = ReasonRevoked
			case !inFleet:
				filtered = ReasonFleet
			case !hasTags:
				filtered = ReasonTags
			case !inList:
				filtered = ReasonUUIDs
			default:
				filtered = ""
			}
		}
		svcs = append(svcs, s)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read devices running %s: %w", p.Image.Repository, err)
	}
	flush()
	return nil
}

// classify decides for one device passing the filters whether it is affected. Its services still on
// another image than the pushed one are candidates; the first whose tag the pattern admits (and, under
// a semver policy, is an older version) gives the device's old image.
func (p *RolloutPlan) classify(uuid string, svcs []service, cand *candidate) {
	reason := ReasonAlreadyOnImage
	for _, s := range svcs {
		if s.tag == p.Image.Tag && (p.Image.Digest == "" || s.digest == p.Image.Digest) {
			continue
		}
		if !cand.pattern.MatchTag(s.tag) {
			if reason == ReasonAlreadyOnImage {
				reason = ReasonTagNotMatched
			}
			continue
		}
		if cand.semver != nil {
			if r := match.Upgrade(s.tag, p.Image.Tag); r != "" {
				if reason == ReasonAlreadyOnImage || reason == ReasonTagNotMatched {
					reason = r
				}
				continue
			}
		}
		p.Devices = append(p.Devices, DevicePlan{DeviceUUID: uuid, OldImage: s.image, OldTag: s.tag})
		return
	}
	p.Excluded = append(p.Excluded, Exclusion{DeviceUUID: uuid, Reason: reason})
}

// PreviewResult is the dry run of a push (POST /api/v1/rollouts/preview): what the real rollout would
// do, JSON-ready.
type PreviewResult struct {
	// Policy is the winning policy, null when none applies.
	Policy *Policy `json:"policy"`
	// Reason says why nothing would happen, when nothing would.
	Reason     string `json:"reason,omitempty"`
	Image      string `json:"image"`
	Repository string `json:"repository"`
	Tag        string `json:"tag"`
	Digest     string `json:"digest,omitempty"`
	// Strategy and Status are the rollout's strategy and the status it would be created in.
	Strategy     string         `json:"strategy,omitempty"`
	Status       string         `json:"status,omitempty"`
	TotalDevices int            `json:"total_devices"`
	Batches      []PreviewBatch `json:"batches"`
	Excluded     []Exclusion    `json:"excluded"`
	// Rate is how a rate rollout would be paced (strategy rate only).
	Rate *PreviewRate `json:"rate,omitempty"`
}

// PreviewRate is the pacing of a rate rollout in a preview: the policy's rate fields with their
// defaults filled, the first chunk at the base rate, and the least time dispatching every device takes.
type PreviewRate struct {
	BasePerMinute     int     `json:"base_per_minute"`
	MaximumPerMinute  int     `json:"maximum_per_minute"`
	IncrementFactor   float64 `json:"increment_factor"`
	IncreaseCriteria  string  `json:"increase_criteria"`
	IncreaseThreshold int     `json:"increase_threshold"`
	// ChunkSize devices are dispatched every IntervalSeconds at the base rate (policy.RatePace).
	ChunkSize       int     `json:"chunk_size"`
	IntervalSeconds float64 `json:"interval_seconds"`
	// MinDispatchSeconds is policy.RateDispatchTime of the affected devices: from the first chunk to
	// the last, with every raise as early as possible.
	MinDispatchSeconds float64 `json:"min_dispatch_seconds"`
}

// previewRate renders the pacing of a rate policy over n devices; nil for other strategies.
func previewRate(pol *Policy, n int) *PreviewRate {
	if pol == nil || pol.UpdateStrategy != StrategyRate {
		return nil
	}
	chunk, every := policies.RatePace(pol.RateBase())
	return &PreviewRate{BasePerMinute: pol.RateBase(), MaximumPerMinute: pol.RateMax(), IncrementFactor: pol.RateFactor(),
		IncreaseCriteria: pol.RateCriterion(), IncreaseThreshold: pol.RateThreshold(), ChunkSize: chunk,
		IntervalSeconds: every.Seconds(), MinDispatchSeconds: pol.RateDispatchTime(n).Seconds()}
}

// PreviewBatch is one batch of a preview.
type PreviewBatch struct {
	Batch   int          `json:"batch"`
	Size    int          `json:"size"`
	Devices []DevicePlan `json:"devices"`
}

// Preview computes the dry run of pushing image (repo:tag, optionally @digest; digest, when not empty,
// overrides it), writing nothing: it is Plan rendered for operators, so the real rollout of the same
// push (with the database unchanged) does exactly what it says. q is a *pgxpool.Pool or any Querier.
// Bad input is an apierr.Invalid error naming "image" or "digest" (HTTP 400).
func Preview(ctx context.Context, q Querier, image, digest string) (*PreviewResult, error) {
	image = strings.TrimSpace(image)
	if image == "" {
		return nil, apierr.Invalid("image", "is required (repo:tag)")
	}
	ref, err := imageref.Parse(image)
	if err != nil {
		return nil, apierr.Invalid("image", "%v", err)
	}
	if ref.Tag == "" {
		return nil, apierr.Invalid("image", "%q must carry a tag (repo:tag)", image)
	}
	if digest = strings.TrimSpace(digest); digest != "" {
		d, err := imageref.Parse(ref.Repository + ":" + ref.Tag + "@" + digest)
		if err != nil {
			return nil, apierr.Invalid("digest", "%q is not a digest (sha256:<64 hex>)", digest)
		}
		ref.Digest = d.Digest
	}
	plan, err := Plan(ctx, q, streams.PushV1{Repository: ref.Repository, ImageName: ref.Familiar, Tag: ref.Tag, Digest: ref.Digest})
	if err != nil {
		return nil, err
	}
	return plan.Preview(), nil
}

// Preview renders the plan as a dry-run answer.
func (p *RolloutPlan) Preview() *PreviewResult {
	out := &PreviewResult{
		Policy: p.Policy, Reason: p.Reason, Image: p.NewImage, Repository: p.Image.Repository,
		Tag: p.Image.Tag, Digest: p.Image.Digest, TotalDevices: len(p.Devices),
		Batches: []PreviewBatch{}, Excluded: slices.Clip(p.Excluded),
	}
	if out.Excluded == nil {
		out.Excluded = []Exclusion{}
	}
	if p.Policy != nil {
		out.Strategy = p.Policy.UpdateStrategy
		out.Status = initialStatus(p)
		out.Rate = previewRate(p.Policy, len(p.Devices))
	}
	i := 0
	for b, size := range p.BatchSizes {
		out.Batches = append(out.Batches, PreviewBatch{Batch: b + 1, Size: size, Devices: p.Devices[i : i+size]})
		i += size
	}
	return out
}

// Rollout statuses the planner creates rollouts in (lifecycle.Initial) or moves them to (superseded).
const (
	StatusPending    = string(lifecycle.Pending)
	StatusScheduled  = string(lifecycle.Scheduled)
	StatusInProgress = string(lifecycle.InProgress)
	StatusCompleted  = string(lifecycle.Completed)
	StatusSuperseded = string(lifecycle.Superseded)
)

// initialStatus is the status the plan's rollout is created in.
func initialStatus(p *RolloutPlan) string {
	switch {
	case len(p.Devices) == 0:
		return StatusCompleted
	case p.Policy.UpdateStrategy == StrategyManual:
		return StatusPending
	case p.Policy.UpdateStrategy == StrategyScheduled:
		return StatusScheduled
	default:
		return StatusInProgress
	}
}
