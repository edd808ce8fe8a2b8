package bench

import (
	"context"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fleetshift/fleetshift/shared/auth"
	"github.com/fleetshift/fleetshift/shared/target"
)

// SeedBatch is how many devices one COPY and one target.Apply transaction carry.
const SeedBatch = 20_000

// Fleet describes devices to insert.
type Fleet struct {
	// Prefix names the devices <Prefix>-<index>; Fleet is their fleet_id.
	Prefix, Fleet string
	// N is how many; Image the one service image each target runs (app "1", service "web").
	N     int
	Image string
}

// Device is a seeded device and its key.
type Device struct {
	UUID, Key string
}

// UUID is the uuid of device i.
func (f Fleet) UUID(i int) string { return f.Prefix + "-" + strconv.Itoa(i) }

// Key is the API key of device i (only its auth.HashKey is stored).
func (f Fleet) Key(i int) string { return "bench-key-" + f.Prefix + "-" + strconv.Itoa(i) }

// Devices lists the fleet's devices with their keys.
func (f Fleet) Devices() []Device {
	out := make([]Device, f.N)
	for i := range out {
		out[i] = Device{UUID: f.UUID(i), Key: f.Key(i)}
	}
	return out
}

// Apps is the target every device of the fleet starts with.
func Apps(image string) target.Apps {
	return target.Apps{"1": map[string]any{"appId": 1, "appName": "main", "services": []any{
		map[string]any{"serviceId": 1, "serviceName": "web", "imageName": image, "config": map[string]any{"image": image}},
	}}}
}

// Seed inserts the fleet set-based: devices with COPY, targets with target.Apply, SeedBatch at a time.
func Seed(ctx context.Context, pool *pgxpool.Pool, f Fleet) error {
	apps := Apps(f.Image)
	for lo := 0; lo < f.N; lo += SeedBatch {
		hi := min(lo+SeedBatch, f.N)
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			rows := make([][]any, 0, hi-lo)
			writes := make([]target.Write, 0, hi-lo)
			for i := lo; i < hi; i++ {
				u := f.UUID(i)
				rows = append(rows, []any{u, u, f.Fleet, auth.HashKey(f.Key(i))})
				writes = append(writes, target.Write{DeviceUUID: u, Apps: apps})
			}
			if _, err := tx.CopyFrom(ctx, pgx.Identifier{"devices"}, []string{"uuid", "device_name", "fleet_id", "api_key_hash"},
				pgx.CopyFromRows(rows)); err != nil {
				return fmt.Errorf("copy devices: %w", err)
			}
			_, err := target.Apply(ctx, tx, writes)
			return err
		})
		if err != nil {
			return fmt.Errorf("seed devices %d-%d of %s: %w", lo, hi, f.Prefix, err)
		}
	}
	if _, err := pool.Exec(ctx, "ANALYZE devices, device_target_state, device_images"); err != nil {
		return fmt.Errorf("analyze seeded tables: %w", err)
	}
	return nil
}
