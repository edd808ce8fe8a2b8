// Package events records rollout events: each one a rollout_events row and, through the outbox in the
// same transaction, a message on <prefix>.events.<type>.<rollout id>. Never one without the other.
package events

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/fleetshift/fleetshift/shared/outbox"
	"github.com/fleetshift/fleetshift/streams"
)

// Event is an event to record. Data is any JSON-encodable value (nil for none).
type Event struct {
	Type       string
	RolloutID  string
	DeviceUUID string
	Message    string
	Data       any
	Actor      string
}

// Record writes evs in tx: rows in rollout_events and outbox messages, set-based.
func Record(ctx context.Context, tx pgx.Tx, subj streams.Subjects, evs ...Event) error {
	if len(evs) == 0 {
		return nil
	}
	now := time.Now().UTC()
	rows := make([][]any, 0, len(evs))
	msgs := make([]outbox.Message, 0, len(evs))
	for _, e := range evs {
		id := uuid.New()
		var data json.RawMessage = []byte("{}")
		if e.Data != nil {
			b, err := json.Marshal(e.Data)
			if err != nil {
				return fmt.Errorf("encode %s event data: %w", e.Type, err)
			}
			data = b
		}
		// Values in the columns' own Go types, so COPY encodes them without trying other plans first.
		var rollout pgtype.UUID
		if e.RolloutID != "" {
			r, err := uuid.Parse(e.RolloutID)
			if err != nil {
				return fmt.Errorf("record %s event: rollout id %q: %w", e.Type, e.RolloutID, err)
			}
			rollout = pgtype.UUID{Bytes: r, Valid: true}
		}
		rows = append(rows, []any{pgtype.UUID{Bytes: id, Valid: true}, rollout, nullable(e.DeviceUUID), e.Type,
			nullable(e.Message), []byte(data), nullable(e.Actor), now})
		msg, err := outbox.JSON(id.String(), subj.Event(e.Type, e.RolloutID), streams.EventV1{
			ID: id.String(), Type: e.Type, RolloutID: e.RolloutID, DeviceUUID: e.DeviceUUID,
			Message: e.Message, Data: data, Actor: e.Actor, Timestamp: now,
		})
		if err != nil {
			return err
		}
		msgs = append(msgs, msg)
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"rollout_events"},
		[]string{"event_id", "rollout_id", "device_uuid", "event_type", "message", "data", "actor", "timestamp"},
		pgx.CopyFromRows(rows)); err != nil {
		return fmt.Errorf("write rollout events: %w", err)
	}
	return outbox.Add(ctx, tx, msgs...)
}

func nullable(s string) pgtype.Text {
	return pgtype.Text{String: s, Valid: s != ""}
}
