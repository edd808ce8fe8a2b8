package healthwatch

import (
	"cmp"
	"fmt"
	"strings"

	"github.com/fleetshift/fleetshift/shared/imageref"
	"github.com/fleetshift/fleetshift/shared/lifecycle"
	"github.com/fleetshift/fleetshift/streams"
)

// Device statuses in a rollout, as plain strings for the rows and SQL of this package (the values and
// their order live in shared/rollout).
const (
	statusPending        = string(lifecycle.DevicePending)
	statusScheduled      = string(lifecycle.DeviceScheduled)
	statusUpdating       = string(lifecycle.DeviceUpdating)
	statusHealthChecking = string(lifecycle.DeviceHealthChecking)
	statusCompleted      = string(lifecycle.DeviceCompleted)
	statusFailed         = string(lifecycle.DeviceFailed)
	statusRolledBack     = string(lifecycle.DeviceRolledBack)
	statusSkipped        = string(lifecycle.DeviceSkipped)
)

// Rollout statuses healthwatch reads or writes (shared/rollout).
const (
	rolloutPending          = string(lifecycle.Pending)
	rolloutScheduled        = string(lifecycle.Scheduled)
	rolloutInProgress       = string(lifecycle.InProgress)
	rolloutPaused           = string(lifecycle.Paused)
	rolloutAwaitingApproval = string(lifecycle.AwaitingApproval)
	rolloutCompleted        = string(lifecycle.Completed)
	rolloutRolledBack       = string(lifecycle.RolledBack)
	rolloutSuperseded       = string(lifecycle.Superseded)
)

// EventRolloutRolledBack is recorded when a whole rollout is rolled back (RollbackAll). It adds to the
// event types of docs/contract.md, which has none for this.
const EventRolloutRolledBack = streams.EventRolloutRolledBack

// inFlight are the device statuses a report or a health timeout can move forward.
var inFlight = lifecycle.Strings(lifecycle.InFlight...)

// unfinished are the device statuses that keep a batch open.
var unfinished = lifecycle.Strings(lifecycle.Unfinished...)

// rank orders device statuses (lifecycle.Rank): a transition only ever raises the rank, and terminal
// statuses (lifecycle.RankFinal) never change through reports.
func rank(status string) int { return lifecycle.Rank(lifecycle.DeviceStatus(status)) }

// verdict is what one report says about one device row.
type verdict struct {
	status string
	// reason explains a failure; log is the failed container's last log lines as the device sent them.
	reason, log string
	// unhealthy marks a failure found by the health check (image.health_check_failed).
	unhealthy bool
}

// rowImage is what a device row expects: the repository it rolls and the new image it should run.
type rowImage struct {
	repository string
	newRef     imageref.Ref
	// refs, when set, caches parsed references across the reports of one batch (they repeat).
	refs refCache
}

// refCache remembers imageref.Parse results; a nil cache parses every time.
type refCache map[string]parsedRef

type parsedRef struct {
	ref imageref.Ref
	err error
}

func (c refCache) parse(raw string) (imageref.Ref, error) {
	if c == nil {
		return imageref.Parse(raw)
	}
	p, ok := c[raw]
	if !ok {
		p.ref, p.err = imageref.Parse(raw)
		c[raw] = p
	}
	return p.ref, p.err
}

// isNew reports whether ref is the row's new image: same normalised repository and tag, and the same
// digest when the row has one (a report naming only the digest is accepted too).
func (r rowImage) isNew(ref imageref.Ref) bool {
	if ref.Repository != r.newRef.Repository {
		return false
	}
	if r.newRef.Digest != "" {
		return ref.Digest == r.newRef.Digest && (ref.Tag == "" || ref.Tag == r.newRef.Tag)
	}
	return ref.Tag == r.newRef.Tag
}

// serviceFailed are container states that mean the new image does not run.
func serviceFailed(status string) bool {
	switch status {
	case "exited", "dead", "failed", "error", "crashed", "oomkilled":
		return true
	}
	return false
}

// derive says where one report puts a device row, for the services of the row's repository:
//   - every such service runs the new image and is healthy (or running, with health checks off): completed;
//   - a service of the new image exited, died or is unhealthy: failed;
//   - the new image runs everywhere, health still starting or not reported, checks on: health_checking;
//   - something moved (pulling, old image stopped or gone, new image starting): updating;
//   - otherwise (old image still running everywhere): scheduled, i.e. no news.
func derive(rep streams.DeviceReport, row rowImage, healthChecks bool) verdict {
	seen, lowest, moved := 0, lifecycle.RankFinal, false
	for _, app := range rep.Apps {
		for _, svc := range app.Services {
			ref, err := row.refs.parse(svc.ImageName)
			if err != nil || ref.Repository != row.repository {
				continue
			}
			seen++
			v := deriveService(svc, ref, row, healthChecks)
			if v.status == statusFailed {
				return v
			}
			lowest = min(lowest, rank(v.status))
			if rank(v.status) > rank(statusScheduled) {
				moved = true
			}
		}
	}
	switch {
	case seen == 0:
		return verdict{status: statusUpdating} // the old image is gone and the new one not there yet
	case lowest == rank(statusCompleted):
		return verdict{status: statusCompleted}
	case lowest == rank(statusHealthChecking):
		return verdict{status: statusHealthChecking}
	case moved || lowest == rank(statusUpdating):
		return verdict{status: statusUpdating}
	}
	return verdict{status: statusScheduled}
}

func deriveService(svc streams.ReportedService, ref imageref.Ref, row rowImage, healthChecks bool) verdict {
	status := strings.ToLower(strings.TrimSpace(svc.Status))
	name := cmp.Or(svc.ServiceName, svc.ImageName)
	if !row.isNew(ref) {
		if status == "running" {
			return verdict{status: statusScheduled}
		}
		return verdict{status: statusUpdating} // pulling, downloading, old container stopping or gone
	}
	if serviceFailed(status) {
		reason := fmt.Sprintf("service %s: %s", name, status)
		if svc.Error != "" {
			reason += ": " + svc.Error
		}
		return verdict{status: statusFailed, reason: reason, log: svc.LogTail}
	}
	if status != "running" {
		return verdict{status: statusUpdating}
	}
	if !healthChecks {
		return verdict{status: statusCompleted}
	}
	health := ""
	if svc.Health != nil {
		health = strings.ToLower(strings.TrimSpace(svc.Health.Status))
	}
	switch health {
	case "healthy":
		return verdict{status: statusCompleted}
	case "unhealthy":
		reason := fmt.Sprintf("service %s: health check failed", name)
		if svc.Error != "" {
			reason += ": " + svc.Error
		}
		return verdict{status: statusFailed, unhealthy: true, reason: reason, log: svc.LogTail}
	}
	return verdict{status: statusHealthChecking}
}

// fold applies reports in order to a row currently in status from, the way applying them one at a
// time would: the status only rises, and the first terminal verdict is final.
func fold(from string, verdicts []verdict) verdict {
	cur := verdict{status: from}
	for _, v := range verdicts {
		if rank(cur.status) >= rank(statusCompleted) {
			break
		}
		if rank(v.status) > rank(cur.status) {
			cur = v
		}
	}
	return cur
}
