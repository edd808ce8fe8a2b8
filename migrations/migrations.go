// Package migrations holds fleetshift's SQL schema, embedded in the binary, and applies it.
//
// The same embedded files serve production (serve, migrate) and tests (the template database built by
// shared/pgtest), so a test always runs against the schema that ships.
package migrations

import (
	"context"
	"embed"
	"fmt"
	"io/fs"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/tern/v2/migrate"
)

//go:embed sql/*.sql
var files embed.FS

// VersionTable is the table tern records the applied schema version in.
const VersionTable = "fleetshift_schema_version"

// FS returns the embedded migration files.
func FS() fs.FS {
	sub, err := fs.Sub(files, "sql")
	if err != nil {
		panic(err) // the embed pattern above guarantees the directory exists
	}
	return sub
}

// Apply brings the database behind conn up to the newest schema. It is safe to call from several
// processes at once: tern serialises migrators with a PostgreSQL advisory lock, and an already
// applied migration is never run again.
func Apply(ctx context.Context, conn *pgx.Conn) error {
	m, err := migrate.NewMigrator(ctx, conn, VersionTable)
	if err != nil {
		return fmt.Errorf("create migrator: %w", err)
	}
	if err := m.LoadMigrations(FS()); err != nil {
		return fmt.Errorf("load migrations: %w", err)
	}
	if err := m.Migrate(ctx); err != nil {
		return fmt.Errorf("apply migrations: %w", err)
	}
	return nil
}

// ApplyURL connects to connString, applies every migration, and disconnects.
func ApplyURL(ctx context.Context, connString string) error {
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		return fmt.Errorf("connect for migrations: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return Apply(ctx, conn)
}
