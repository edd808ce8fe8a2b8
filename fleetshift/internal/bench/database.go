package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fleetshift/fleetshift/migrations"
	"github.com/fleetshift/fleetshift/shared/pg"
)

// Database is the fresh database of one run: created, migrated, and dropped by Drop.
type Database struct {
	URL   string
	Name  string
	Pool  *pgxpool.Pool
	admin string
}

// CreateDatabase creates fleetshift_bench_<random> on the server of baseURL (only its server is used),
// applies every migration and opens a pool on it.
func CreateDatabase(ctx context.Context, baseURL string) (*Database, error) {
	u, err := url.Parse(baseURL)
	if err != nil || u.Scheme == "" {
		return nil, fmt.Errorf("database url %s: want postgres://user@host:port/db", pg.Redact(baseURL))
	}
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	name := "fleetshift_bench_" + hex.EncodeToString(rnd[:])
	admin := *u
	admin.Path = "/postgres"
	conn, err := pgx.Connect(ctx, admin.String())
	if err != nil {
		return nil, fmt.Errorf("connect to %s to create the bench database: %w", pg.Redact(admin.String()), err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return nil, fmt.Errorf("create database %s: %w", name, err)
	}
	db := &Database{Name: name, admin: admin.String()}
	dbURL := *u
	dbURL.Path = "/" + name
	db.URL = dbURL.String()
	if err := migrations.ApplyURL(ctx, db.URL); err != nil {
		db.Drop(ctx)
		return nil, fmt.Errorf("migrate %s: %w", name, err)
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
	ctx = context.WithoutCancel(ctx)
	conn, err := pgx.Connect(ctx, db.admin)
	if err != nil {
		return fmt.Errorf("connect to drop %s: %w", db.Name, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{db.Name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop database %s: %w", db.Name, err)
	}
	return nil
}
