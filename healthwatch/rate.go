package healthwatch

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetshift/fleetshift/shared/command"
	"github.com/fleetshift/fleetshift/shared/events"
	"github.com/fleetshift/fleetshift/shared/lifecycle"
	policies "github.com/fleetshift/fleetshift/shared/policy"
	"github.com/fleetshift/fleetshift/streams"
)

// rateBatch is the one batch of a rate rollout.
const rateBatch = 1

// paceRates is the rate timer of rate rollouts (update_strategy rate). It claims, with SKIP LOCKED so
// replicas share them, the in-progress rate rollouts whose next chunk is due at the clock (Config.Now):
// next_batch_at has passed, or it is unset (a new or resumed rollout) while devices are pending. For
// each, in one transaction, it
//
//   - raises the rate (policy.RaiseRate) once per rate_increase_threshold devices notified
//     (rate_dispatched) or succeeded (updated_devices) since the last raise, up to the maximum, each
//     raise an image.rollout_rate_increased event;
//   - asks the dispatcher for the next chunk (policy.RatePace): command.Rate with UpTo =
//     rate_dispatched + chunk, so a chunk is dispatched once however often the command is handled, and
//     a dispatcher that lags behind is never asked for more than one chunk ahead;
//   - sets next_batch_at one interval after the time the chunk was due (or after now, when the timer
//     fell a whole interval behind: a stall is not made up in a burst).
//
// A due rollout with no pending device left gets next_batch_at = NULL and no command: the sweep or the
// last report completes it. Everything lives on the rollout row (rate_per_minute, rate_dispatched,
// rate_raised_at, next_batch_at), so a restart resumes the ramp where it was. A paused rollout is not
// in progress and is never claimed; resume sets next_batch_at NULL, so it goes on at once at the rate
// it had. It returns how many chunks it requested.
func (s *Service) paceRates(ctx context.Context) (int, error) {
	now := s.now()
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("pace rate rollouts: begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	pending := `EXISTS (SELECT 1 FROM device_rollout_status d WHERE d.rollout_id = r.rollout_id
		AND d.batch_number = ` + strconv.Itoa(rateBatch) + ` AND d.status = ` + lifecycle.SQL(lifecycle.DevicePending) + `)`
	rows, err := tx.Query(ctx, `SELECT r.rollout_id::text, r.policy, r.rate_per_minute, r.rate_dispatched,
			r.rate_raised_at, r.updated_devices, r.next_batch_at, `+pending+`
		FROM image_rollouts r
		WHERE r.strategy = '`+policies.Rate+`' AND r.status = `+lifecycle.SQL(lifecycle.InProgress)+`
		  AND (r.next_batch_at <= $1 OR (r.next_batch_at IS NULL AND `+pending+`))
		ORDER BY r.rollout_id LIMIT $2
		FOR UPDATE OF r SKIP LOCKED`, now, claimLimit)
	if err != nil {
		return 0, fmt.Errorf("pace rate rollouts: claim: %w", err)
	}
	type due struct {
		id                      string
		policy                  []byte
		rate                    *int
		dispatched, mark, count int
		next                    *time.Time
		pending                 bool
	}
	claimed, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (due, error) {
		var d due
		return d, r.Scan(&d.id, &d.policy, &d.rate, &d.dispatched, &d.mark, &d.count, &d.next, &d.pending)
	})
	if err != nil {
		return 0, fmt.Errorf("pace rate rollouts: claim: %w", err)
	}
	if len(claimed) == 0 {
		return 0, nil
	}
	var evs []events.Event
	var reqs []command.Dispatch
	for _, d := range claimed {
		pol := policies.FromJSON(d.policy)
		rate := pol.RateBase()
		if d.rate != nil {
			rate = *d.rate
		}
		criteria := pol.RateCriterion()
		count := d.dispatched
		if criteria == policies.RateSucceeded {
			count = d.count
		}
		rate, mark, raises := pol.RaiseRate(rate, count, d.mark)
		for _, r := range raises {
			evs = append(evs, events.Event{Type: streams.EventRolloutRateIncreased, RolloutID: d.id, Actor: actorHealthwatch,
				Message: fmt.Sprintf("rate raised from %d to %d devices a minute: %d devices %s", r.From, r.To, r.Count, criteria),
				Data: map[string]any{"from": r.From, "to": r.To, "criteria": criteria, "count": r.Count,
					"threshold": pol.RateThreshold(), "dispatched": d.dispatched}})
		}
		var next *time.Time
		if d.pending {
			chunk, every := policies.RatePace(rate)
			at := now
			if d.next != nil {
				at = *d.next
			}
			n := at.Add(every)
			if !n.After(now) {
				n = now.Add(every)
			}
			next = &n
			upTo := d.dispatched + chunk
			reqs = append(reqs, command.Dispatch{RolloutID: d.id, Batch: rateBatch, Purpose: command.Rate,
				Discriminator: strconv.Itoa(upTo) + "-" + strconv.FormatInt(at.UnixMilli(), 10), UpTo: upTo})
		}
		if _, err := tx.Exec(ctx, `UPDATE image_rollouts SET rate_per_minute = $2, rate_raised_at = $3, next_batch_at = $4,
				updated_at = now() WHERE rollout_id = $1`, d.id, rate, mark, next); err != nil {
			return 0, fmt.Errorf("pace rate rollout %s: %w", d.id, err)
		}
	}
	if err := command.Request(ctx, tx, s.subj, reqs...); err != nil {
		return 0, fmt.Errorf("pace rate rollouts: %w", err)
	}
	if err := events.Record(ctx, tx, s.subj, evs...); err != nil {
		return 0, fmt.Errorf("pace rate rollouts: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("pace rate rollouts: commit: %w", err)
	}
	return len(reqs), nil
}
