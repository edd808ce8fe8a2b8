package bench

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fleetshift/fleetshift/migrations"
	"github.com/fleetshift/fleetshift/shared/pg"
)

// Database is the fresh database of one run: created, migrated, and dropped by Drop.
type Database struct {
	URL     string
	Name    string
	Pool    *pgxpool.Pool
	scratch *pg.Scratch
}

// CreateDatabase creates fleetshift_bench_<random> on the server of baseURL (only its server is used),
// applies every migration and opens a pool on it.
func CreateDatabase(ctx context.Context, baseURL string) (*Database, error) {
	scratch, err := pg.CreateScratch(ctx, baseURL, "fleetshift_bench_")
	if err != nil {
		return nil, err
	}
	db := &Database{URL: scratch.URL, Name: scratch.Name, scratch: scratch}
	if err := migrations.ApplyURL(ctx, db.URL); err != nil {
		db.Drop(ctx)
		return nil, fmt.Errorf("migrate %s: %w", db.Name, err)
	}
	if db.Pool, err = pg.Connect(ctx, db.URL); err != nil {
		db.Drop(ctx)
		return nil, err
	}
	return db, nil
}

// Version returns the server's version string, e.g. "PostgreSQL 15.20".
func (db *Database) Version(ctx context.Context) string {
	var v string
	if err := db.Pool.QueryRow(ctx, "SHOW server_version").Scan(&v); err != nil {
		return "PostgreSQL (unknown version)"
	}
	if i := strings.IndexByte(v, ' '); i > 0 {
		v = v[:i]
	}
	return "PostgreSQL " + v
}

// Reset empties every table a measurement writes, so measurements do not see each other's rows.
func (db *Database) Reset(ctx context.Context) error {
	_, err := db.Pool.Exec(ctx, `TRUNCATE devices, image_rollouts, image_update_policies, rollout_events, outbox,
		fleet_target_state, provisioning_keys, api_tokens RESTART IDENTITY CASCADE`)
	if err != nil {
		return fmt.Errorf("reset bench database: %w", err)
	}
	return nil
}

// Drop closes the pool and drops the database (terminating leftover sessions).
func (db *Database) Drop(ctx context.Context) error {
	if db.Pool != nil {
		db.Pool.Close()
	}
	return db.scratch.Drop(ctx)
}
