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
		subject := subj.Event(e.Type, e.RolloutID)
		if e.RolloutID == "" && e.DeviceUUID != "" {
			subject = subj.DeviceEvent(e.Type, e.DeviceUUID) // presence: <prefix>.events.device.offline.<uuid>
		}
		msg := outbox.Message{ID: id.String(), Subject: subject,
			Payload: encode(id.String(), e, data, now)}
		msgs = append(msgs, msg)
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"rollout_events"},
		[]string{"event_id", "rollout_id", "device_uuid", "event_type", "message", "data", "actor", "timestamp"},
		pgx.CopyFromRows(rows)); err != nil {
		return fmt.Errorf("write rollout events: %w", err)
	}
	return outbox.Add(ctx, tx, msgs...)
}

// encode renders the streams.EventV1 of e by hand, as encoding/json would (same fields, omitempty,
// RFC 3339 timestamp): data is already JSON, and re-validating it per event would cost more than the
// rest of the event.
func encode(id string, e Event, data []byte, now time.Time) []byte {
	b := make([]byte, 0, 160+len(e.Type)+len(e.RolloutID)+len(e.DeviceUUID)+len(e.Message)+len(data)+len(e.Actor))
	b = append(b, `{"id":`...)
	b = appendString(b, id)
	b = append(b, `,"type":`...)
	b = appendString(b, e.Type)
	for _, f := range [...]struct{ key, v string }{{"rollout_id", e.RolloutID}, {"device_uuid", e.DeviceUUID}, {"message", e.Message}} {
		if f.v != "" {
			b = append(b, `,"`...)
			b = append(b, f.key...)
			b = append(b, `":`...)
			b = appendString(b, f.v)
		}
	}
	if len(data) > 0 {
		b = append(b, `,"data":`...)
		b = append(b, data...)
	}
	if e.Actor != "" {
		b = append(b, `,"actor":`...)
		b = appendString(b, e.Actor)
	}
	b = append(b, `,"timestamp":"`...)
	b = now.AppendFormat(b, time.RFC3339Nano)
	return append(b, `"}`...)
}

// appendString appends s as a JSON string; plain ASCII (ids, types, most messages) is copied as is.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always encodes
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

func nullable(s string) pgtype.Text {
	return pgtype.Text{String: s, Valid: s != ""}
}
