package target

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleetshift/fleetshift/shared/outbox"
	"github.com/fleetshift/fleetshift/streams"
)

// KindTargetV1 is the Fleetshift-Kind header of target notifications (streams.TargetV1).
const KindTargetV1 = "target.v1"

// Current is one device's stored target state as device_target_state holds it.
type Current struct {
	DeviceUUID string
	// Apps and Config are the stored JSON documents, never empty ("{}" when nothing is set).
	Apps   json.RawMessage
	Config json.RawMessage
	// Prefetch is the device's prefetch list (a JSON array of {"image", "rollout_id"}: images to pull
	// ahead without changing what runs); nil or "[]" when there is none.
	Prefetch json.RawMessage
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
	rows, err := q.Query(ctx, `SELECT device_uuid, apps, config, prefetch, version, etag
		FROM device_target_state WHERE device_uuid = ANY($1)`, uuids)
	if err != nil {
		return nil, fmt.Errorf("load targets of %d devices: %w", len(uuids), err)
	}
	out := make([]Current, 0, len(uuids))
	for rows.Next() {
		var c Current
		var apps, cfg, prefetch []byte
		if err := rows.Scan(&c.DeviceUUID, &apps, &cfg, &prefetch, &c.Version, &c.ETag); err != nil {
			rows.Close()
			return nil, fmt.Errorf("load targets: %w", err)
		}
		c.Apps, c.Config, c.Prefetch = orEmpty(apps), orEmpty(cfg), prefetch
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
// prefetch (only when not empty), version}} on subj.DeviceTarget(uuid), with Nats-Msg-Id "<uuid>-<version>" so that notifying the same
// generation twice is dropped by JetStream as a duplicate.
func Message(subj streams.Subjects, c Current) *nats.Msg {
	return &nats.Msg{
		Subject: subj.DeviceTarget(c.DeviceUUID),
		Data:    encode(c),
		Header: nats.Header{
			jetstream.MsgIDHeader: []string{msgID(c)},
			streams.HeaderKind:    []string{KindTargetV1},
			outbox.HeaderVersion:  []string{strconv.FormatInt(c.Version, 10)},
		},
	}
}

func msgID(c Current) string { return c.DeviceUUID + "-" + strconv.FormatInt(c.Version, 10) }

// OutboxMessage is the notification of c as an ordered outbox message (outbox.OrderedMessage): the relay
// publishes it only if the device's last target message is older, so it never replaces a newer one.
func OutboxMessage(subj streams.Subjects, c Current) outbox.Message {
	return outbox.OrderedMessage(subj.TargetsStream(), c.Version, msgID(c), subj.DeviceTarget(c.DeviceUUID), encode(c))
}

// encode builds the TargetV1 document by hand: the stored documents are already JSON, and
// re-encoding them through encoding/json would cost more than the rest of a notification.
func encode(c Current) []byte {
	key, _ := json.Marshal(c.DeviceUUID) // a string always encodes
	apps, cfg := orEmpty(c.Apps), orEmpty(c.Config)
	b := make([]byte, 0, len(key)+len(apps)+len(cfg)+len(c.Prefetch)+60)
	b = append(b, '{')
	b = append(b, key...)
	b = append(b, `:{"apps":`...)
	b = append(b, apps...)
	b = append(b, `,"config":`...)
	b = append(b, cfg...)
	if HasPrefetch(c.Prefetch) {
		b = append(b, `,"prefetch":`...)
		b = append(b, c.Prefetch...)
	}
	b = append(b, `,"version":`...)
	b = strconv.AppendInt(b, c.Version, 10)
	b = append(b, "}}"...)
	return b
}

// Publish notifies every device in targets of its target state (see Message) and returns once JetStream
// has acknowledged every message, so each device's latest target is durably in the TARGETS stream (one
// message kept per device subject) and was delivered to live subscribers. It publishes in order
// (outbox.PublishOrdered): a device's message replaces the last one on its subject only if its version
// is newer, so a writer notifying late can never leave an older target last while a newer one was
// already announced. Publishing the same generation again is harmless (it is already there; JetStream
// would also drop it as a duplicate). On error some devices may have been notified and others not;
// calling Publish again with the same targets is the way to finish.
func Publish(ctx context.Context, js jetstream.JetStream, subj streams.Subjects, targets []Current) error {
	if len(targets) == 0 {
		return nil
	}
	msgs := make([]outbox.Ordered, len(targets))
	for i, c := range targets {
		msgs[i] = outbox.Ordered{Stream: subj.TargetsStream(), Version: c.Version, Msg: Message(subj, c)}
	}
	if err := outbox.PublishOrdered(ctx, js, msgs); err != nil {
		return fmt.Errorf("notify %d devices: %w", len(targets), err)
	}
	return nil
}
