// Package command is the one way to ask the dispatcher to start (or go on with) a batch of a rollout:
// a streams.DispatchV1 command written to the outbox in the caller's transaction, with a deterministic
// Nats-Msg-Id made of the rollout, the batch and the purpose of the request. The same request written
// twice (a redelivery, a retried transaction) is one message to JetStream; requests that must not be
// dropped as duplicates of an earlier one (a retry, a resume) carry what tells them apart in Purpose's
// discriminator. The dispatcher handles a batch once however often it is asked.
package command

import (
	"context"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"

	"github.com/fleetshift/fleetshift/shared/outbox"
	"github.com/fleetshift/fleetshift/streams"
)

// KindDispatchV1 is the Fleetshift-Kind of a dispatch command.
const KindDispatchV1 = "dispatch.v1"

// Purpose says why a batch is requested; it is part of the message id.
type Purpose string

// Purposes.
const (
	// First: batch 1 of a rollout that starts (planner, in progress at creation; control start).
	First Purpose = "first"
	// Next: the batch after a completed one (healthwatch's batch timer; control approve).
	Next Purpose = "next"
	// Retry: a requested batch the dispatcher never started (it drops commands for rollouts not in
	// progress); the discriminator is when it was asked again.
	Retry Purpose = "retry"
	// Resume: whatever a rollout set back to in progress needs (control resume, maintenance window
	// open); the discriminator is when it was asked.
	Resume Purpose = "resume"
	// Continue: the rest of a batch a maintenance-window chunk did not cover; the discriminator is the
	// chunk's last device.
	Continue Purpose = "continue"
	// Join: a device joined the batch in progress (dynamic inclusion); the discriminator is the device.
	Join Purpose = "join"
	// Rate: the next chunk of a rate rollout (healthwatch's rate timer), with UpTo set; the
	// discriminator is UpTo and the time the chunk was due.
	Rate Purpose = "rate"
)

// Dispatch is one request for a batch.
type Dispatch struct {
	RolloutID string
	Batch     int
	Purpose   Purpose
	// Discriminator tells apart requests of the same batch and purpose that must all reach the
	// dispatcher (required for Retry, Resume, Continue and Rate; empty for First and Next).
	Discriminator string
	// UpTo caps a rate rollout's dispatch (streams.DispatchV1.UpTo): required for Rate, 0 otherwise.
	UpTo int
}

// MsgID is the request's Nats-Msg-Id: dispatch-<rollout>-<batch>-<purpose>[-<discriminator>].
func (d Dispatch) MsgID() string {
	id := "dispatch-" + d.RolloutID + "-" + strconv.Itoa(d.Batch) + "-" + string(d.Purpose)
	if d.Discriminator != "" {
		id += "-" + d.Discriminator
	}
	return id
}

// Message renders the request as an outbox message on subj's command subject.
func (d Dispatch) Message(subj streams.Subjects) (outbox.Message, error) {
	if d.RolloutID == "" || d.Batch < 1 || d.Purpose == "" {
		return outbox.Message{}, fmt.Errorf("request dispatch %q batch %d (%s): rollout, batch >= 1 and purpose are required",
			d.RolloutID, d.Batch, d.Purpose)
	}
	if (d.Purpose == Rate) != (d.UpTo > 0) || d.UpTo < 0 {
		return outbox.Message{}, fmt.Errorf("request dispatch %q batch %d (%s): up to %d: a rate chunk needs up to >= 1, nothing else takes one",
			d.RolloutID, d.Batch, d.Purpose, d.UpTo)
	}
	return outbox.JSON(d.MsgID(), subj.Command(streams.CommandDispatch, d.RolloutID),
		streams.DispatchV1{RolloutID: d.RolloutID, Batch: d.Batch, UpTo: d.UpTo})
}

// Request writes the dispatch requests in tx (outbox): they are published once tx commits, never if it
// rolls back.
func Request(ctx context.Context, tx pgx.Tx, subj streams.Subjects, reqs ...Dispatch) error {
	msgs := make([]outbox.Message, 0, len(reqs))
	for _, d := range reqs {
		m, err := d.Message(subj)
		if err != nil {
			return err
		}
		msgs = append(msgs, m)
	}
	if err := outbox.Add(ctx, tx, msgs...); err != nil {
		return fmt.Errorf("request %d batch dispatches: %w", len(reqs), err)
	}
	return nil
}
