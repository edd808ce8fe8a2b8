package migrations_test

import (
	"context"
	"io/fs"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/tern/v2/migrate"
	"github.com/stretchr/testify/require"

	"github.com/fleetshift/fleetshift/migrations"
)

// previousRelease is the migration set the previous release shipped (001-006, with 005 and 006 empty
// placeholders), kept as a fixture so an upgrade from it is tested for as long as such databases exist.
func previousRelease() fs.FS { return os.DirFS("testdata/v-previous") }

// migrateWith applies files up to version (0: all) to the database at url.
func migrateWith(t *testing.T, url string, files fs.FS, version int32) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(ctx)
	m, err := migrate.NewMigrator(ctx, conn, migrations.VersionTable)
	require.NoError(t, err)
	require.NoError(t, m.LoadMigrations(files))
	if version == 0 {
		require.NoError(t, m.Migrate(ctx))
		return
	}
	require.NoError(t, m.MigrateTo(ctx, version))
}

// schemaOf describes every table column, constraint, index, view and sequence of the public schema plus the
// recorded schema version, one line each, sorted: two databases with equal descriptions have the same schema.
func schemaOf(t *testing.T, url string) []string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(ctx)
	queries := []string{
		`SELECT 'column ' || table_name || '.' || ordinal_position || ' ' || column_name || ' ' || data_type || ' ' ||
		        is_nullable || ' ' || coalesce(column_default, '-') || ' ' || is_identity
		   FROM information_schema.columns WHERE table_schema = 'public'`,
		`SELECT 'constraint ' || conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)
		   FROM pg_constraint WHERE connamespace = 'public'::regnamespace`,
		`SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'public'`,
		`SELECT 'view ' || viewname || ' ' || definition FROM pg_views WHERE schemaname = 'public'`,
		`SELECT 'sequence ' || sequencename || ' ' || data_type::text FROM pg_sequences WHERE schemaname = 'public'`,
		`SELECT 'version ' || version FROM ` + migrations.VersionTable,
	}
	var out []string
	for _, q := range queries {
		rows, err := conn.Query(ctx, q)
		require.NoError(t, err)
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		out = append(out, lines...)
	}
	require.NotEmpty(t, out)
	sort.Strings(out)
	return out
}

// TestUpgradeFromPreviousReleaseMatchesFresh: a database migrated by the previous release (version 6, with two
// placeholder migrations) upgrades with today's files and ends with exactly the schema a fresh database gets.
func TestUpgradeFromPreviousReleaseMatchesFresh(t *testing.T) {
	t.Parallel()
	fresh := freshDatabase(t)
	require.NoError(t, migrations.ApplyURL(context.Background(), fresh))

	upgraded := freshDatabase(t)
	migrateWith(t, upgraded, previousRelease(), 0)
	require.NoError(t, migrations.ApplyURL(context.Background(), upgraded))

	require.Equal(t, schemaOf(t, fresh), schemaOf(t, upgraded))
}

// TestUpgradeFromEveryPreviousVersionMatchesFresh: a database stopped at any version of the previous release's
// files (an older deployment) also upgrades cleanly to the fresh schema.
func TestUpgradeFromEveryPreviousVersionMatchesFresh(t *testing.T) {
	t.Parallel()
	fresh := freshDatabase(t)
	require.NoError(t, migrations.ApplyURL(context.Background(), fresh))
	want := schemaOf(t, fresh)
	for v := int32(1); v <= 5; v++ {
		url := freshDatabase(t)
		migrateWith(t, url, previousRelease(), v)
		require.NoError(t, migrations.ApplyURL(context.Background(), url), "upgrade from version %d", v)
		require.Equal(t, want, schemaOf(t, url), "upgrade from version %d", v)
	}
}

// TestMigrationFilesAreLinearWithoutPlaceholders: files are numbered 1..N without gaps or duplicates, and
// every file changes the schema (no "SELECT 1" placeholders reserving a number).
func TestMigrationFilesAreLinearWithoutPlaceholders(t *testing.T) {
	entries, err := fs.ReadDir(migrations.FS(), ".")
	require.NoError(t, err)
	name := regexp.MustCompile(`^(\d{3})_[a-z0-9_]+\.sql$`)
	ddl := regexp.MustCompile(`(?im)^\s*(CREATE|ALTER|DROP|COMMENT|INSERT|UPDATE|DELETE)\b`)
	for i, e := range entries {
		m := name.FindStringSubmatch(e.Name())
		require.NotNil(t, m, "migration file name %q: want NNN_name.sql", e.Name())
		n, _ := strconv.Atoi(m[1])
		require.Equal(t, i+1, n, "migration %q out of sequence", e.Name())
		body, err := fs.ReadFile(migrations.FS(), e.Name())
		require.NoError(t, err)
		require.Regexp(t, ddl, string(body), "migration %q changes nothing", e.Name())
		require.NotContains(t, strings.ToUpper(string(body)), "SELECT 1;", "migration %q is a placeholder", e.Name())
	}
}
