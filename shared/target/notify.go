package target

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleetshift/fleetshift/streams"
)

// KindTargetV1 is the Fleetshift-Kind header of target notifications (streams.TargetV1).
const KindTargetV1 = "target.v1"

// PublishWindow is how many target notifications Publish keeps in flight (published, ack not yet
// received) at most. It stays well below the JetStream client's own async limit (4000 by default), so
// other publishers sharing the same client are not starved.
const PublishWindow = 1024

// ackTimeout is how long Publish waits for the oldest in-flight acknowledgement before giving up.
const ackTimeout = 30 * time.Second

// Current is one device's stored target state as device_target_state holds it.
type Current struct {
	DeviceUUID string
	// Apps and Config are the stored JSON documents, never empty ("{}" when nothing is set).
	Apps   json.RawMessage
	Config json.RawMessage
	// Version is the target generation; it never goes backwards.
	Version int64
	// ETag is the unquoted entity tag of this generation.
	ETag string
}

// Querier is what Load reads through: a *pgxpool.Pool, a *pgx.Conn or a pgx.Tx.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Load reads the current target state of the devices in uuids with one query, whatever their number.
// Devices without a target state are left out; the order of the result is unspecified. Run it inside
// a transaction to read the targets that transaction sees, or on a pool to read committed state.
func Load(ctx context.Context, q Querier, uuids []string) ([]Current, error) {
	if len(uuids) == 0 {
		return nil, nil
	}
	rows, err := q.Query(ctx, `SELECT device_uuid, apps, config, version, etag
		FROM device_target_state WHERE device_uuid = ANY($1)`, uuids)
	if err != nil {
		return nil, fmt.Errorf("load targets of %d devices: %w", len(uuids), err)
	}
	out := make([]Current, 0, len(uuids))
	for rows.Next() {
		var c Current
		var apps, cfg []byte
		if err := rows.Scan(&c.DeviceUUID, &apps, &cfg, &c.Version, &c.ETag); err != nil {
			rows.Close()
			return nil, fmt.Errorf("load targets: %w", err)
		}
		c.Apps, c.Config = orEmpty(apps), orEmpty(cfg)
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load targets of %d devices: %w", len(uuids), err)
	}
	return out, nil
}

func orEmpty(b []byte) json.RawMessage {
	if len(b) == 0 {
		return json.RawMessage("{}")
	}
	return b
}

// Message returns the notification of c: a streams.TargetV1 document {"<uuid>": {apps, config,
// version}} on subj.DeviceTarget(uuid), with Nats-Msg-Id "<uuid>-<version>" so that notifying the same
// generation twice is dropped by JetStream as a duplicate.
func Message(subj streams.Subjects, c Current) *nats.Msg {
	return &nats.Msg{
		Subject: subj.DeviceTarget(c.DeviceUUID),
		Data:    encode(c),
		Header: nats.Header{
			jetstream.MsgIDHeader: []string{c.DeviceUUID + "-" + strconv.FormatInt(c.Version, 10)},
			streams.HeaderKind:    []string{KindTargetV1},
		},
	}
}

// encode builds the TargetV1 document by hand: the stored documents are already JSON, and
// re-encoding them through encoding/json would cost more than the rest of a notification.
func encode(c Current) []byte {
	key, _ := json.Marshal(c.DeviceUUID) // a string always encodes
	apps, cfg := orEmpty(c.Apps), orEmpty(c.Config)
	b := make([]byte, 0, len(key)+len(apps)+len(cfg)+48)
	b = append(b, '{')
	b = append(b, key...)
	b = append(b, `:{"apps":`...)
	b = append(b, apps...)
	b = append(b, `,"config":`...)
	b = append(b, cfg...)
	b = append(b, `,"version":`...)
	b = strconv.AppendInt(b, c.Version, 10)
	b = append(b, "}}"...)
	return b
}

// Publish notifies every device in targets of its target state (see Message) and returns once
// JetStream has acknowledged every message, so each device's latest target is durably in the TARGETS
// stream (one message kept per device subject) and was delivered to live subscribers. Messages are
// published asynchronously with at most PublishWindow awaiting acknowledgement. Publishing the same
// generation again is harmless: JetStream drops it as a duplicate within the stream's window, and a
// device ignores a version not newer than the one it has. It returns an error if any publish fails or
// is not acknowledged; some devices may then have been notified and others not, and calling Publish
// again with the same targets is the way to finish.
func Publish(ctx context.Context, js jetstream.JetStream, subj streams.Subjects, targets []Current) error {
	if len(targets) == 0 {
		return nil
	}
	pending := make([]jetstream.PubAckFuture, 0, min(len(targets), PublishWindow))
	head := 0 // index of the oldest future not yet awaited
	timer := time.NewTimer(ackTimeout)
	defer timer.Stop()
	awaitOldest := func() error {
		f := pending[head]
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(ackTimeout)
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return fmt.Errorf("notify %s: %w", f.Msg().Subject, err)
		case <-timer.C:
			return fmt.Errorf("notify %s: no acknowledgement within %s", f.Msg().Subject, ackTimeout)
		case <-ctx.Done():
			return fmt.Errorf("notify %s: %w", f.Msg().Subject, ctx.Err())
		}
		pending[head] = nil
		head++
		return nil
	}
	for _, c := range targets {
		if len(pending)-head >= PublishWindow {
			if err := awaitOldest(); err != nil {
				return err
			}
		}
		if head >= PublishWindow { // compact: the slice never holds more than two windows
			n := copy(pending, pending[head:])
			clear(pending[n:])
			pending, head = pending[:n], 0
		}
		msg := Message(subj, c)
		for {
			f, err := js.PublishMsgAsync(msg)
			if err == nil {
				pending = append(pending, f)
				break
			}
			// The client is shared: other publishers may have filled its async window. Make room
			// by waiting for one of ours, or give up if none of ours is in flight.
			if errors.Is(err, jetstream.ErrTooManyStalledMsgs) && head < len(pending) {
				if err := awaitOldest(); err != nil {
					return err
				}
				continue
			}
			return fmt.Errorf("notify %s: %w", msg.Subject, err)
		}
	}
	for head < len(pending) {
		if err := awaitOldest(); err != nil {
			return err
		}
	}
	return nil
}
