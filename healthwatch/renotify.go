package healthwatch

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetshift/fleetshift/shared/lifecycle"
	"github.com/fleetshift/fleetshift/shared/target"
)

// renotifyAfter is how long a dispatched device may stay scheduled (no report about the new target
// yet) before its target is sent again.
const renotifyAfter = 20 * time.Second

// renotifyEvery spaces the scans (they read the in-flight rows of every rollout).
const renotifyEvery = 5 * time.Second

// renotifyLimit bounds the devices one scan sends.
const renotifyLimit = 10000

// renotifyUnstarted sends their current target again to devices dispatched more than renotifyAfter
// ago that are still scheduled. The dispatcher notifies a batch's devices after its transaction
// commits; killed in between, its command comes back only after the ack wait (2 min), which may be
// past the devices' health deadline, and healthy devices would fail by timeout. Each device is sent
// again once per replica (a watermark on scheduled_at); the message id <uuid>-<version> makes a repeat
// of a target already delivered a duplicate JetStream drops, and devices ignore a version not newer
// than theirs.
func (s *Service) renotifyUnstarted(ctx context.Context) (int, error) {
	if time.Since(s.renotifyRan) < renotifyEvery {
		return 0, nil
	}
	if s.renotifyMark.IsZero() {
		// A restarted replica looks back over the ack wait of a killed dispatcher.
		s.renotifyMark = time.Now().Add(-renotifyAfter - 3*time.Minute)
	}
	rows, err := s.pool.Query(ctx, `
		SELECT s.device_uuid, s.scheduled_at, now() - make_interval(secs => $2)
		FROM device_rollout_status s JOIN image_rollouts r ON r.rollout_id = s.rollout_id
		WHERE s.status = `+lifecycle.SQL(lifecycle.DeviceScheduled)+` AND s.health_deadline IS NOT NULL
		  AND r.status = `+lifecycle.SQL(lifecycle.InProgress)+`
		  AND s.scheduled_at > $1 AND s.scheduled_at <= now() - make_interval(secs => $2)
		ORDER BY s.scheduled_at LIMIT $3`, s.renotifyMark, renotifyAfter.Seconds(), renotifyLimit)
	if err != nil {
		return 0, fmt.Errorf("find devices to notify again: %w", err)
	}
	type due struct {
		uuid       string
		at, cutoff time.Time
	}
	found, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (due, error) {
		var d due
		return d, r.Scan(&d.uuid, &d.at, &d.cutoff)
	})
	if err != nil {
		return 0, fmt.Errorf("find devices to notify again: %w", err)
	}
	s.renotifyRan = time.Now()
	if len(found) == 0 {
		return 0, nil
	}
	uuids := make([]string, len(found))
	for i, d := range found {
		uuids[i] = d.uuid
	}
	cur, err := target.Load(ctx, s.pool, uuids)
	if err != nil {
		return 0, fmt.Errorf("notify devices again: %w", err)
	}
	if err := target.Publish(ctx, s.js, s.subj, cur); err != nil {
		return 0, fmt.Errorf("notify devices again: %w", err)
	}
	if len(found) == renotifyLimit {
		s.renotifyMark = found[len(found)-1].at
	} else {
		s.renotifyMark = found[0].cutoff
	}
	s.log.Warn().Int("devices", len(cur)).Msg("dispatched devices still scheduled; sent their targets again")
	return len(cur), nil
}
