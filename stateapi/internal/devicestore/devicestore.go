// Package devicestore writes devices and their target states for both HTTP surfaces: registration
// (device API) and device creation and target writes (operator API) share one path, so a new device
// always starts on its fleet's default target and every target write notifies its device.
package devicestore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/auth"
	"github.com/fleetshift/fleetshift/shared/device"
	"github.com/fleetshift/fleetshift/shared/target"
	"github.com/fleetshift/fleetshift/streams"
)

// Limits on what one device may carry (docs/reliability.md, "Limits"); shared/device defines them.
const (
	MaxTags     = device.MaxTags
	MaxTagLen   = device.MaxTagLen
	MaxNameLen  = device.MaxNameLen
	MaxFleetLen = device.MaxFleetLen
)

// Announcer learns of target writes and revocations at once (the device API's poll cache); other
// replicas learn from the target messages.
type Announcer interface {
	Announce(uuid string, version int64)
	Evict(uuid string)
}

// ValidUUID reports whether s is a device uuid (device.ValidUUID).
func ValidUUID(s string) bool { return device.ValidUUID(s) }

// QuoteETag renders a stored (unquoted) etag as a strong entity tag.
func QuoteETag(etag string) string { return `"` + etag + `"` }

// ParseTags reads a JSON array of strings or an object k -> v as tags (device.ParseTags).
func ParseTags(field string, raw json.RawMessage) ([]string, error) {
	return device.ParseTags(field, raw)
}

// New is a device to create.
type New struct {
	UUID, Name, FleetID string
	Tags                json.RawMessage
	ProvisioningKeyID   string
}

// Created is a created device: its key (shown once) and the first target written for it.
type Created struct {
	UUID, APIKey string
	Written      []target.Written
}

// Insert validates and stores a device with a new key, starting on its fleet's default target.
func Insert(ctx context.Context, tx pgx.Tx, subj streams.Subjects, d New) (Created, error) {
	d.Name = strings.TrimSpace(d.Name)
	if d.Name == "" || len(d.Name) > MaxNameLen {
		return Created{}, apierr.Invalid("device_name", "required, at most %d characters", MaxNameLen)
	}
	if err := apierr.CheckText("device_name", d.Name); err != nil {
		return Created{}, err
	}
	if d.UUID == "" {
		d.UUID = uuid.NewString()
	} else if !ValidUUID(d.UUID) {
		return Created{}, apierr.Invalid("uuid", "1-64 of A-Z a-z 0-9 _ - (it is used in NATS subjects)")
	}
	if len(d.FleetID) > MaxFleetLen {
		return Created{}, apierr.Invalid("fleet_id", "at most %d characters", MaxFleetLen)
	}
	if err := apierr.CheckText("fleet_id", d.FleetID); err != nil {
		return Created{}, err
	}
	tags, err := ParseTags("tags", d.Tags)
	if err != nil {
		return Created{}, err
	}
	key, hash, err := auth.NewKey()
	if err != nil {
		return Created{}, err
	}
	_, err = tx.Exec(ctx, `INSERT INTO devices (uuid, device_name, fleet_id, tags, api_key_hash, provisioning_key_id)
		VALUES ($1, $2, NULLIF($3, ''), $4, $5, NULLIF($6, '')::uuid)`, d.UUID, d.Name, d.FleetID, tags, hash, d.ProvisioningKeyID)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		return Created{}, apierr.New(apierr.ErrConflict, "device_exists", "device %s already exists", d.UUID)
	}
	if err != nil {
		return Created{}, fmt.Errorf("insert device %s: %w", d.UUID, err)
	}
	// The device starts on its fleet's default target. A rollout that completes while this transaction
	// waits on its lock to join it (JoinActiveRollouts) moves that default to the new image after it was
	// read here: the device would start on the old image, in no rollout. So the default's version is
	// read again after the write (a new statement sees that commit) and, when it moved, the device
	// starts on the moved default instead (a newer target version; it joins nothing it already runs).
	w, version, err := fleetDefault(ctx, tx, d.UUID, d.FleetID)
	if err != nil {
		return Created{}, err
	}
	var written []target.Written
	for attempt := 0; ; attempt++ {
		ws, err := WriteTargets(ctx, tx, subj, []target.Write{w})
		if err != nil {
			return Created{}, fmt.Errorf("write first target of %s: %w", d.UUID, err)
		}
		written = ws
		if d.FleetID == "" || attempt == 2 {
			break
		}
		var now int64
		if w, now, err = fleetDefault(ctx, tx, d.UUID, d.FleetID); err != nil {
			return Created{}, err
		}
		if now == version {
			break
		}
		version = now
	}
	return Created{UUID: d.UUID, APIKey: key, Written: written}, nil
}

// fleetDefault is the first target of device uuid in fleet: the fleet's default target (an empty one
// without a default or a fleet), with the default's version (0 without one).
func fleetDefault(ctx context.Context, tx pgx.Tx, uuid, fleet string) (target.Write, int64, error) {
	w := target.Write{DeviceUUID: uuid, Apps: target.Apps{}, Config: json.RawMessage("{}")}
	if fleet == "" {
		return w, 0, nil
	}
	var apps, cfg []byte
	var version int64
	err := tx.QueryRow(ctx, `SELECT apps, config, version FROM fleet_target_state WHERE fleet_id = $1`, fleet).Scan(&apps, &cfg, &version)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return w, 0, nil
	case err != nil:
		return w, 0, fmt.Errorf("read default target of fleet %s: %w", fleet, err)
	}
	if w.Apps, err = target.ParseApps(apps); err != nil {
		return w, 0, fmt.Errorf("default target of fleet %s: %w", fleet, err)
	}
	w.Config = cfg
	return w, version, nil
}

// WriteTargets writes target states and notifies their devices in order (target.Save: the write and,
// in the same transaction, one ordered TargetV1 outbox message per device, Nats-Msg-Id
// "<uuid>-<version>"), so the device is notified even when the process dies right after the commit.
// A device whose new target runs the repository of an active rollout joins it (JoinActiveRollouts); a
// join that adds a prefetch entry writes the target again, and that newer version is what is returned.
func WriteTargets(ctx context.Context, tx pgx.Tx, subj streams.Subjects, writes []target.Write) ([]target.Written, error) {
	written, err := target.Save(ctx, tx, subj, writes)
	if err != nil {
		return nil, err
	}
	for i, w := range written {
		joined, err := JoinActiveRollouts(ctx, tx, subj, w.DeviceUUID)
		if err != nil {
			return nil, err
		}
		for _, j := range joined {
			if j.Prefetched != nil {
				written[i] = *j.Prefetched // the version the device will see last
			}
		}
	}
	return written, nil
}

// AnnounceWritten tells a (this replica's) announcer of written targets; nil is allowed.
func AnnounceWritten(a Announcer, written []target.Written) {
	if a == nil {
		return
	}
	for _, w := range written {
		a.Announce(w.DeviceUUID, w.Version)
	}
}
