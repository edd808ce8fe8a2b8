package dispatcher

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetshift/fleetshift/shared/command"
	"github.com/fleetshift/fleetshift/shared/lifecycle"
	policies "github.com/fleetshift/fleetshift/shared/policy"
	"github.com/fleetshift/fleetshift/streams"
)

// gate is what the maintenance window of a rollout allows one dispatch command to do.
type gate struct {
	// open: devices may be scheduled now. Always true for rollouts whose strategy is not scheduled.
	open bool
	// limit caps how many devices one command schedules (0: no cap). Scheduled rollouts dispatch in
	// chunks, each checking the window, so a batch cut off by the window's end goes on in the next one.
	limit int
	// next is when the window opens again (set when !open).
	next time.Time
}

// windowGate checks, for the rollout locked in tx, whether its maintenance window (scheduled strategy
// only) is open at the dispatcher's clock.
func (s *Service) windowGate(ctx context.Context, tx pgx.Tx, rolloutID string) (gate, error) {
	var strategy string
	var raw []byte
	if err := tx.QueryRow(ctx, `SELECT strategy, policy FROM image_rollouts WHERE rollout_id = $1`, rolloutID).
		Scan(&strategy, &raw); err != nil {
		return gate{}, fmt.Errorf("read maintenance window: %w", err)
	}
	if strategy != policies.Scheduled {
		return gate{open: true}, nil
	}
	pol := policies.FromJSON(raw)
	w, set, ok := pol.Window()
	if !ok {
		s.log.Warn().Str("rollout_id", rolloutID).Msg("unreadable maintenance window; dispatching as if open")
		return gate{open: true, limit: s.windowChunk}, nil
	}
	if !set {
		return gate{open: true, limit: s.windowChunk}, nil // no window: the whole day
	}
	now := s.now()
	if w.Contains(now) {
		return gate{open: true, limit: s.windowChunk}, nil
	}
	return gate{next: w.NextOpen(now)}, nil
}

// deferToWindow sets an in-progress rollout whose window is closed back to scheduled with its durable
// timer at the window's next opening; healthwatch requests the batch again then. Nothing is dispatched.
func deferToWindow(ctx context.Context, tx pgx.Tx, rolloutID string, g gate) error {
	if _, err := tx.Exec(ctx, `UPDATE image_rollouts SET status = `+lifecycle.SQL(lifecycle.Scheduled)+`, next_batch_at = $2, updated_at = now()
		WHERE rollout_id = $1 AND status = `+lifecycle.SQL(lifecycle.InProgress)+``, rolloutID, g.next); err != nil {
		return fmt.Errorf("wait for maintenance window: %w", err)
	}
	return nil
}

// continueChunk writes, in tx, the command for the rest of a batch a chunk did not cover
// (command.Continue). Its message id is derived from the chunk's last device, so a redelivered command
// writes the same continuation, which JetStream drops as a duplicate.
func continueChunk(ctx context.Context, tx pgx.Tx, subj streams.Subjects, cmd streams.DispatchV1, last string) error {
	if err := command.Request(ctx, tx, subj, command.Dispatch{RolloutID: cmd.RolloutID, Batch: cmd.Batch,
		Purpose: command.Continue, Discriminator: last}); err != nil {
		return fmt.Errorf("continue batch %d: %w", cmd.Batch, err)
	}
	return nil
}

// holdForWindow checks the window of the rollout locked in tx. When it is closed, it sets the rollout
// back to scheduled (deferToWindow), commits, and returns held = true: the command is done.
func (s *Service) holdForWindow(ctx context.Context, tx pgx.Tx, rolloutID string) (gate, bool, error) {
	g, err := s.windowGate(ctx, tx, rolloutID)
	if err != nil || g.open {
		return g, false, err
	}
	if err := deferToWindow(ctx, tx, rolloutID, g); err != nil {
		return g, false, err
	}
	if err := tx.Commit(ctx); err != nil {
		return g, false, fmt.Errorf("commit: %w", err)
	}
	s.log.Info().Str("rollout_id", rolloutID).Time("next_open", g.next).
		Msg("maintenance window closed; rollout scheduled for the next window")
	return g, true, nil
}

// limitArg is the LIMIT of the pending-device query: NULL (no limit) unless the gate caps the chunk.
func (g gate) limitArg() any {
	if g.limit > 0 {
		return g.limit
	}
	return nil
}
