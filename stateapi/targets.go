package stateapi

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"

	"github.com/fleetshift/fleetshift/shared/outbox"
	"github.com/fleetshift/fleetshift/shared/target"
	"github.com/fleetshift/fleetshift/streams"
)

// writeTargets writes target states with target.Apply and, in the same transaction, one TargetV1 outbox
// message per device on its target subject (Nats-Msg-Id "<uuid>-<version>"), so the device is notified
// even when the process dies right after the commit.
func (s *Service) writeTargets(ctx context.Context, tx pgx.Tx, writes []target.Write) ([]target.Written, error) {
	written, err := target.Apply(ctx, tx, writes)
	if err != nil {
		return nil, err
	}
	uuids := make([]string, len(written))
	for i, w := range written {
		uuids[i] = w.DeviceUUID
	}
	rows, err := tx.Query(ctx, `SELECT device_uuid, apps, config, version FROM device_target_state
		WHERE device_uuid = ANY($1)`, uuids)
	if err != nil {
		return nil, fmt.Errorf("read written targets: %w", err)
	}
	var msgs []outbox.Message
	for rows.Next() {
		var uuid string
		var dt streams.DeviceTarget
		var apps, cfg []byte
		if err := rows.Scan(&uuid, &apps, &cfg, &dt.Version); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read written targets: %w", err)
		}
		dt.Apps, dt.Config = json.RawMessage(apps), json.RawMessage(cfg)
		m, err := outbox.JSON(uuid+"-"+strconv.FormatInt(dt.Version, 10), s.cfg.Subjects.DeviceTarget(uuid),
			streams.TargetV1{uuid: dt})
		if err != nil {
			rows.Close()
			return nil, err
		}
		msgs = append(msgs, m)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read written targets: %w", err)
	}
	if err := outbox.Add(ctx, tx, msgs...); err != nil {
		return nil, err
	}
	return written, nil
}

// announceWritten marks this replica's cache entries stale at once; other replicas learn from the
// target messages.
func (s *Service) announceWritten(written []target.Written) {
	for _, w := range written {
		s.cache.announce(w.DeviceUUID, w.Version)
	}
}

// targetBody renders the device state document: {"<uuid>": {"apps", "config", "version"}}.
func targetBody(uuid string, apps, cfg []byte, version int64) ([]byte, error) {
	if len(apps) == 0 {
		apps = []byte("{}")
	}
	if len(cfg) == 0 {
		cfg = []byte("{}")
	}
	b, err := json.Marshal(streams.TargetV1{uuid: {Apps: apps, Config: cfg, Version: version}})
	if err != nil {
		return nil, fmt.Errorf("encode target of %s: %w", uuid, err)
	}
	return b, nil
}
