package dispatcher

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/fleetshift/fleetshift/shared/events"
	"github.com/fleetshift/fleetshift/shared/lifecycle"
	policies "github.com/fleetshift/fleetshift/shared/policy"
	"github.com/fleetshift/fleetshift/shared/target"
	"github.com/fleetshift/fleetshift/streams"
)

// Result says what handling one dispatch command did.
type Result struct {
	// RolloutStatus is the rollout's status when the command was handled ("" when no such rollout).
	RolloutStatus string
	// Scheduled is how many devices moved from pending to scheduled.
	Scheduled int
	// Skipped is how many pending devices were skipped because their target no longer runs the
	// rollout's repository.
	Skipped int
	// Notified is how many devices of the batch were sent their target state.
	Notified int

	written []target.Current // the targets this handling wrote, notified without reading them back
	// rate: a rate rollout's chunk, whose handling notifies only the devices it moved (moved); the rest
	// of the batch was notified by earlier chunks (and healthwatch re-sends targets left unanswered).
	rate  bool
	moved []string
}

// Dispatch handles cmd as the consumer does, without the message: it dispatches batch cmd.Batch of
// rollout cmd.RolloutID when the rollout is in progress, then notifies every device of that batch that
// is scheduled or further along. Calling it again for the same batch changes nothing and only
// re-notifies (with the same message ids, which JetStream drops as duplicates).
func (s *Service) Dispatch(ctx context.Context, cmd streams.DispatchV1) (Result, error) {
	return s.dispatch(ctx, cmd, func() {})
}

// rollout is what a dispatch needs of the rollout row.
type rollout struct {
	status         string
	strategy       string
	rateDispatched int
	repository     string
	newImage       string
	newTag         string
	currentBatch   int
	totalBatches   int
	notStarted     bool
	healthTimeoutS float64
	// healthCheck is the check handed to the devices with the new image, as each moved service's
	// "healthCheck" (policy.HealthCheck; nil when checks are off or not configured).
	healthCheck map[string]any
}

// serviceFields are the fields set on every service the dispatch moves: the policy's health check
// (policy.HealthCheck: its config, with the policy's timeout as its overall deadline unless it sets one).
func (r rollout) serviceFields() map[string]any {
	if len(r.healthCheck) == 0 {
		return nil
	}
	return map[string]any{"healthCheck": r.healthCheck}
}

// outcome is what the rewrite decided for one candidate.
type outcome int

const (
	outcomeWrite   outcome = iota // target rewritten to the new image
	outcomeCurrent                // target already runs the new image: schedule without a write
	outcomeSkip                   // target no longer runs the repository
)

func (s *Service) dispatch(ctx context.Context, cmd streams.DispatchV1, progress func()) (Result, error) {
	if _, err := uuid.Parse(cmd.RolloutID); err != nil {
		return Result{}, fmt.Errorf("dispatch rollout %q: rollout id: %w", cmd.RolloutID, errPermanent)
	}
	if cmd.Batch < 1 || cmd.Batch > math.MaxInt32 {
		return Result{}, fmt.Errorf("dispatch rollout %s batch %d: batch numbers run from 1 to %d: %w", cmd.RolloutID, cmd.Batch, math.MaxInt32, errPermanent)
	}
	res, err := s.schedule(ctx, cmd)
	if err != nil {
		return res, fmt.Errorf("dispatch rollout %s batch %d: %w", cmd.RolloutID, cmd.Batch, err)
	}
	if res.RolloutStatus == "" {
		s.log.Warn().Str("rollout_id", cmd.RolloutID).Msg("dispatch for an unknown rollout; nothing to do")
		return res, nil
	}
	progress()
	var n int
	if res.rate {
		n, err = s.notifyMoved(ctx, res.moved, res.written)
	} else {
		n, err = s.notify(ctx, cmd, res.written)
	}
	if err != nil {
		return res, fmt.Errorf("notify rollout %s batch %d: %w", cmd.RolloutID, cmd.Batch, err)
	}
	res.Notified = n
	return res, nil
}

// schedule is the transaction: lock the rollout, rewrite and write the pending devices' targets, move
// their rows to scheduled (or skipped), advance the rollout and record the events.
func (s *Service) schedule(ctx context.Context, cmd streams.DispatchV1) (Result, error) {
	var res Result
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return res, fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))

	var r rollout
	var livePolicy, snapshot []byte
	err = tx.QueryRow(ctx, `
		SELECT r.status, r.strategy, r.rate_dispatched, r.repository, r.new_image, r.new_tag, r.current_batch,
		       r.total_batches,
		       r.current_batch = 0, -- never dispatched: the planner sets started_at, so it cannot tell
		       to_jsonb(p), r.policy
		FROM image_rollouts r LEFT JOIN image_update_policies p ON p.id = r.policy_id
		WHERE r.rollout_id = $1
		FOR UPDATE OF r`, cmd.RolloutID).
		Scan(&r.status, &r.strategy, &r.rateDispatched, &r.repository, &r.newImage, &r.newTag, &r.currentBatch,
			&r.totalBatches, &r.notStarted, &livePolicy, &snapshot)
	if errors.Is(err, pgx.ErrNoRows) {
		return res, nil
	}
	if err != nil {
		return res, fmt.Errorf("lock rollout: %w", err)
	}
	// The snapshot wins; fields an old snapshot lacks come from the live policy, then the defaults.
	pol := policies.FromJSON(livePolicy, snapshot)
	r.healthTimeoutS, r.healthCheck = pol.HealthTimeout().Seconds(), pol.HealthCheck()
	res.RolloutStatus = r.status
	if r.status != string(lifecycle.InProgress) {
		return res, nil // paused, cancelled, superseded, completed...: change nothing
	}
	if r.totalBatches > 0 && cmd.Batch > r.totalBatches {
		return res, fmt.Errorf("rollout has %d batches: %w", r.totalBatches, errPermanent)
	}
	win, held, err := s.holdForWindow(ctx, tx, cmd.RolloutID)
	if err != nil || held {
		if held {
			res.RolloutStatus = string(lifecycle.Scheduled)
		}
		return res, err
	}
	limit := win.limitArg()
	// A rate rollout is dispatched only by its rate timer's chunks, each up to a total (rate_dispatched)
	// so that handling one twice dispatches nothing twice. Any other request (a join, a resume) leaves
	// its pending devices to the next chunk.
	res.rate = r.strategy == policies.Rate
	if res.rate {
		want := cmd.UpTo - r.rateDispatched
		if cmd.UpTo <= 0 || want <= 0 {
			return res, nil
		}
		limit = want
	}

	// The pending devices of the batch, target rows locked (in a stable order, so concurrent dispatches
	// of rollouts sharing devices cannot deadlock) until commit, grouped by their current document:
	// devices of a fleet mostly share one, which is then sent, rewritten and written once.
	rows, err := tx.Query(ctx, `
		WITH c AS MATERIALIZED (
			SELECT d.device_uuid, t.version, t.apps
			FROM device_rollout_status d
			JOIN device_target_state t ON t.device_uuid = d.device_uuid
			WHERE d.rollout_id = $1 AND d.batch_number = $2 AND d.status = `+lifecycle.SQL(lifecycle.DevicePending)+`
			ORDER BY d.device_uuid
			LIMIT $3
			FOR UPDATE OF t)
		SELECT apps, array_agg(device_uuid), array_agg(version), max(device_uuid)
		FROM c GROUP BY apps`, cmd.RolloutID, cmd.Batch, limit)
	if err != nil {
		return res, fmt.Errorf("read pending devices: %w", err)
	}
	groups, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (group, error) {
		var g group
		err := row.Scan(&g.apps, &g.uuids, &g.versions, &g.last)
		return g, err
	})
	if err != nil {
		return res, fmt.Errorf("read pending devices: %w", err)
	}
	plan, err := rewrite(groups, r.repository, r.newImage, r.serviceFields())
	if err != nil {
		return res, err
	}
	written, err := target.ApplyImage(ctx, tx, plan.write)
	if err != nil {
		return res, err
	}
	if len(written) != len(plan.write.Devices) {
		// A pending device's target vanished after it was read and locked: impossible, so retry.
		return res, fmt.Errorf("wrote %d of %d targets", len(written), len(plan.write.Devices))
	}
	schedUUIDs, schedVersions := plan.current, plan.currentVersions
	for _, w := range written {
		schedUUIDs, schedVersions = append(schedUUIDs, w.DeviceUUID), append(schedVersions, w.Version)
	}

	// Devices first (the skip below then only looks at what is still pending), events after, the
	// rollout's before its devices'.
	var devEvs []events.Event
	if len(schedUUIDs) > 0 {
		moved, err := markScheduled(ctx, tx, cmd, r, schedUUIDs, schedVersions)
		if err != nil {
			return res, err
		}
		if len(moved) != len(schedUUIDs) {
			// The rollout is locked, so only a writer bypassing its lock could do this: retry.
			return res, fmt.Errorf("scheduled %d of %d pending devices", len(moved), len(schedUUIDs))
		}
		devEvs = scheduledEvents(cmd, r.newImage, moved)
	}
	res.Scheduled = len(schedUUIDs)
	if res.rate {
		res.moved = schedUUIDs
	}

	// Skipped: the candidates whose target no longer runs the repository, and pending devices of the
	// batch that have no target state at all.
	tag, err := tx.Exec(ctx, `
		UPDATE device_rollout_status d SET
			status = `+lifecycle.SQL(lifecycle.DeviceSkipped)+`,
			error_message = $3,
			completed_at = now(),
			updated_at = now()
		WHERE d.rollout_id = $1 AND d.batch_number = $2 AND d.status = `+lifecycle.SQL(lifecycle.DevicePending)+`
		  AND (d.device_uuid = ANY($4::text[])
		       OR NOT EXISTS (SELECT 1 FROM device_target_state t WHERE t.device_uuid = d.device_uuid))`,
		cmd.RolloutID, cmd.Batch, "target no longer runs "+r.repository, plan.skip)
	if err != nil {
		return res, fmt.Errorf("skip devices: %w", err)
	}
	res.Skipped = int(tag.RowsAffected())
	if !res.rate && win.limit > 0 && plan.candidates == win.limit {
		if err := continueChunk(ctx, tx, s.subj, cmd, plan.last); err != nil {
			return res, err
		}
	}

	advanced := r.currentBatch < cmd.Batch
	changed := res.Scheduled > 0 || res.Skipped > 0
	if !advanced && !r.notStarted && !changed {
		return res, nil // a redelivery: nothing to write
	}
	rateMoved := 0
	if res.rate {
		rateMoved = res.Scheduled + res.Skipped
	}
	if _, err := tx.Exec(ctx, `
		UPDATE image_rollouts SET
			current_batch = GREATEST(current_batch, $2),
			rate_dispatched = rate_dispatched + $3,
			started_at = COALESCE(started_at, now()),
			updated_at = now()
		WHERE rollout_id = $1`, cmd.RolloutID, cmd.Batch, rateMoved); err != nil {
		return res, fmt.Errorf("advance rollout: %w", err)
	}

	evs := make([]events.Event, 0, 2+len(devEvs))
	if r.notStarted {
		evs = append(evs, events.Event{
			Type: streams.EventRolloutStarted, RolloutID: cmd.RolloutID,
			Message: fmt.Sprintf("rollout of %s started", r.newImage),
			Data:    map[string]any{"batch": cmd.Batch, "total_batches": r.totalBatches, "new_image": r.newImage},
		})
	}
	// A rate rollout's batch starts with its first chunk; later chunks record only their devices.
	if advanced || (changed && !res.rate) {
		evs = append(evs, events.Event{
			Type: streams.EventBatchStarted, RolloutID: cmd.RolloutID,
			Message: fmt.Sprintf("batch %d started: %d devices scheduled, %d skipped", cmd.Batch, res.Scheduled, res.Skipped),
			Data: map[string]any{"batch": cmd.Batch, "total_batches": r.totalBatches,
				"scheduled": res.Scheduled, "skipped": res.Skipped},
		})
	}
	if err := events.Record(ctx, tx, s.subj, append(evs, devEvs...)...); err != nil {
		return res, err
	}
	if err := tx.Commit(ctx); err != nil {
		return res, fmt.Errorf("commit: %w", err)
	}
	res.written = written
	return res, nil
}

// markScheduled moves the devices uuids (target generation versions) from pending to scheduled in one
// statement and returns the uuids it moved. A device's details (old image, target version, scheduled_at,
// health deadline) stay in its row; the events name only the devices.
func markScheduled(ctx context.Context, tx pgx.Tx, cmd streams.DispatchV1, r rollout, uuids []string, versions []int64) ([]string, error) {
	rows, err := tx.Query(ctx, `
		UPDATE device_rollout_status d SET
			status = `+lifecycle.SQL(lifecycle.DeviceScheduled)+`,
			scheduled_at = now(),
			target_version = v.version,
			health_deadline = now() + make_interval(secs => $3),
			new_image = COALESCE(d.new_image, $4),
			new_image_tag = COALESCE(d.new_image_tag, $5),
			error_message = NULL,
			updated_at = now()
		FROM unnest($6::text[], $7::bigint[]) AS v(device_uuid, version)
		WHERE d.rollout_id = $1 AND d.batch_number = $2 AND d.device_uuid = v.device_uuid
		  AND d.status = `+lifecycle.SQL(lifecycle.DevicePending)+`
		RETURNING d.device_uuid`,
		cmd.RolloutID, cmd.Batch, r.healthTimeoutS, r.newImage, r.newTag, uuids, versions)
	if err != nil {
		return nil, fmt.Errorf("schedule devices: %w", err)
	}
	moved, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("schedule devices: %w", err)
	}
	return moved, nil
}

// scheduledEvents are the image.batch_devices_scheduled events of the devices one dispatch moved to
// scheduled: one per streams.BatchDevicesChunk devices, in uuid order.
func scheduledEvents(cmd streams.DispatchV1, newImage string, moved []string) []events.Event {
	slices.Sort(moved)
	chunks := (len(moved) + streams.BatchDevicesChunk - 1) / streams.BatchDevicesChunk
	evs := make([]events.Event, 0, chunks)
	for i := range chunks {
		devs := moved[i*streams.BatchDevicesChunk : min((i+1)*streams.BatchDevicesChunk, len(moved))]
		evs = append(evs, events.Event{Type: streams.EventBatchDevicesScheduled, RolloutID: cmd.RolloutID,
			Message: fmt.Sprintf("batch %d: %d devices scheduled for %s (%d of %d)", cmd.Batch, len(devs), newImage, i+1, chunks),
			Data: streams.BatchDevicesScheduledV1{Batch: cmd.Batch, NewImage: newImage, Chunk: i + 1, Chunks: chunks,
				Count: len(devs), Devices: devs}})
	}
	return evs
}

// group is the pending devices of a batch that share one current target document.
type group struct {
	apps     []byte
	uuids    []string
	versions []int64
	last     string // the greatest uuid
}

// writePlan is what the rewrite decided for the pending devices.
type writePlan struct {
	write target.ImageWrite // targets rewritten to the new image
	// current are the devices whose target already runs the new image (scheduled without a write).
	current         []string
	currentVersions []int64
	skip            []string // devices whose target no longer runs the repository
	candidates      int      // how many pending devices were read
	last            string   // the greatest of their uuids
}

// rewrite decides, for every group of devices sharing a target document, whether that document is
// rewritten to image (only the services that run repository change), already runs it, or no longer
// runs the repository. Each distinct document is decoded, rewritten and encoded once.
func rewrite(groups []group, repository, image string, set map[string]any) (writePlan, error) {
	p := writePlan{write: target.ImageWrite{Repository: repository, Image: image}}
	for _, g := range groups {
		p.candidates += len(g.uuids)
		p.last = max(p.last, g.last)
		o, apps, err := rewriteOne(g.apps, repository, image, set)
		if err != nil {
			return p, fmt.Errorf("rewrite target of %s: %w", g.uuids[0], err)
		}
		switch o {
		case outcomeWrite:
			doc, err := json.Marshal(apps)
			if err != nil {
				return p, fmt.Errorf("encode target of %s: %w", g.uuids[0], err)
			}
			idx := int32(len(p.write.Docs))
			p.write.Docs = append(p.write.Docs, doc)
			for _, u := range g.uuids {
				p.write.Devices = append(p.write.Devices, u)
				p.write.Doc = append(p.write.Doc, idx)
			}
		case outcomeCurrent:
			p.current = append(p.current, g.uuids...)
			p.currentVersions = append(p.currentVersions, g.versions...)
		case outcomeSkip:
			p.skip = append(p.skip, g.uuids...)
		}
	}
	return p, nil
}

func rewriteOne(raw []byte, repository, image string, set map[string]any) (outcome, target.Apps, error) {
	var apps target.Apps
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber() // numbers (app ids...) survive the rewrite exactly
	if err := dec.Decode(&apps); err != nil {
		return 0, nil, fmt.Errorf("decode apps: %w", err)
	}
	next, changed, _ := target.SetImageWith(apps, repository, image, nil, set)
	if changed {
		return outcomeWrite, next, nil
	}
	imgs, err := target.Images(apps)
	if err != nil {
		return outcomeSkip, nil, nil // unreadable services cannot run the repository
	}
	for _, im := range imgs {
		if im.Ref.Repository == repository {
			return outcomeCurrent, nil, nil
		}
	}
	return outcomeSkip, nil, nil
}

// notifyMoved sends the devices a rate chunk moved (moved) their target: those it wrote as written, the
// others (already on the new image) as read from the database. It returns how many it notified.
func (s *Service) notifyMoved(ctx context.Context, moved []string, written []target.Current) (int, error) {
	if len(moved) == 0 {
		return 0, nil
	}
	known := make(map[string]struct{}, len(written))
	for _, w := range written {
		known[w.DeviceUUID] = struct{}{}
	}
	var rest []string
	for _, u := range moved {
		if _, ok := known[u]; !ok {
			rest = append(rest, u)
		}
	}
	cur := written
	if len(rest) > 0 {
		more, err := target.Load(ctx, s.pool, rest)
		if err != nil {
			return 0, err
		}
		cur = append(slices.Clone(written), more...)
	}
	if err := target.Publish(ctx, s.js, s.subj, cur); err != nil {
		return 0, err
	}
	return len(cur), nil
}

// notify sends every device of the batch that is scheduled or further along its current target state
// and returns how many it notified. The targets this handling just wrote (written) are sent as written;
// the others are read from the database, so a re-notification after a later change is still the truth.
func (s *Service) notify(ctx context.Context, cmd streams.DispatchV1, written []target.Current) (int, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT device_uuid FROM device_rollout_status
		WHERE rollout_id = $1 AND batch_number = $2 AND status NOT IN (`+lifecycle.SQL(lifecycle.DevicePending, lifecycle.DeviceSkipped)+`)`,
		cmd.RolloutID, cmd.Batch)
	if err != nil {
		return 0, fmt.Errorf("list devices to notify: %w", err)
	}
	uuids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return 0, fmt.Errorf("list devices to notify: %w", err)
	}
	known := make(map[string]struct{}, len(written))
	for _, w := range written {
		known[w.DeviceUUID] = struct{}{}
	}
	rest := make([]string, 0, len(uuids))
	for _, u := range uuids {
		if _, ok := known[u]; !ok {
			rest = append(rest, u)
		}
	}
	cur, err := target.Load(ctx, s.pool, rest)
	if err != nil {
		return 0, err
	}
	cur = append(cur, written...)
	if err := target.Publish(ctx, s.js, s.subj, cur); err != nil {
		return 0, err
	}
	return len(cur), nil
}
