// Package pgtest gives each test its own PostgreSQL database with fleetshift's schema, cloned from a
// migrated template database, so tests run in parallel and never touch user data.
//
// The server comes from TEST_DATABASE_URL, else DATABASE_URL, else postgres://postgres@127.0.0.1:5432.
// Only the server is taken from those URLs: pgtest creates and drops its own databases
// (fleetshift_test_*), never writing to the database the URL names. When no server answers, the test
// fails with what to do; `make test` starts a throwaway cluster itself when initdb is installed.
package pgtest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fleetshift/fleetshift/migrations"
	"github.com/fleetshift/fleetshift/shared/pg"
)

// DB is a test database.
type DB struct {
	// URL connects to the test database.
	URL string
	// Pool is an open pool on it, closed at cleanup.
	Pool *pgxpool.Pool
	// Name is the database name.
	Name string
}

var (
	templateOnce sync.Once
	templateName string
	templateErr  error
)

// ServerURL returns the URL of the PostgreSQL server tests use (database "postgres").
func ServerURL() string {
	for _, k := range []string{"TEST_DATABASE_URL", "DATABASE_URL"} {
		if v := os.Getenv(k); v != "" {
			return v
		}
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

func adminConfig() (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig(ServerURL())
	if err != nil {
		return nil, fmt.Errorf("parse test database url: %w", err)
	}
	cfg.Database = "postgres"
	return cfg, nil
}

func connectAdmin(ctx context.Context) (*pgx.Conn, error) {
	cfg, err := adminConfig()
	if err != nil {
		return nil, err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("no PostgreSQL reachable at %s:%d (%v).\n"+
			"Tests need a real PostgreSQL 13+: set TEST_DATABASE_URL to a server where this user may CREATE DATABASE, "+
			"or install one (Debian: apt-get install postgresql) and run `make test`, which starts a throwaway cluster "+
			"when none answers", cfg.Host, cfg.Port, err)
	}
	return conn, nil
}

// New returns a fresh migrated database, dropped when the test ends.
func New(t testing.TB) *DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	templateOnce.Do(func() { templateName, templateErr = ensureTemplate(ctx) })
	if templateErr != nil {
		t.Fatalf("pgtest: %v", templateErr)
	}
	admin, err := connectAdmin(ctx)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	defer admin.Close(ctx)
	name := "fleetshift_test_" + randomHex(6)
	var createErr error
	for attempt := 0; attempt < 20; attempt++ { // the template may be briefly in use by a concurrent clone
		_, createErr = admin.Exec(ctx, fmt.Sprintf("CREATE DATABASE %s TEMPLATE %s",
			pgx.Identifier{name}.Sanitize(), pgx.Identifier{templateName}.Sanitize()))
		if createErr == nil {
			break
		}
		time.Sleep(time.Duration(50*(attempt+1)) * time.Millisecond)
	}
	if createErr != nil {
		t.Fatalf("pgtest: create database %s: %v", name, createErr)
	}
	url, err := pg.WithDatabase(ServerURL(), name)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatalf("pgtest: open %s: %v", name, err)
	}
	t.Cleanup(func() {
		pool.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if a, err := connectAdmin(ctx); err == nil {
			_, _ = a.Exec(ctx, fmt.Sprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)", pgx.Identifier{name}.Sanitize()))
			_ = a.Close(ctx)
		}
	})
	return &DB{URL: url, Pool: pool, Name: name}
}

// ensureTemplate builds (once per schema version, across processes) the migrated template database.
func ensureTemplate(ctx context.Context) (string, error) {
	sum, err := schemaHash()
	if err != nil {
		return "", err
	}
	name := "fleetshift_tmpl_" + sum[:12]
	admin, err := connectAdmin(ctx)
	if err != nil {
		return "", err
	}
	defer admin.Close(ctx)
	// Serialise builders across test processes.
	if _, err := admin.Exec(ctx, "SELECT pg_advisory_lock(424242)"); err != nil {
		return "", fmt.Errorf("lock template build: %w", err)
	}
	defer admin.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock(424242)")
	var ready bool
	err = admin.QueryRow(ctx, `SELECT coalesce(shobj_description(oid, 'pg_database') = 'ready', false)
		FROM pg_database WHERE datname = $1`, name).Scan(&ready)
	if err == nil && ready {
		return name, nil
	}
	if _, err := admin.Exec(ctx, fmt.Sprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)", pgx.Identifier{name}.Sanitize())); err != nil {
		return "", fmt.Errorf("drop stale template: %w", err)
	}
	if _, err := admin.Exec(ctx, fmt.Sprintf("CREATE DATABASE %s", pgx.Identifier{name}.Sanitize())); err != nil {
		return "", fmt.Errorf("create template: %w", err)
	}
	cfg, _ := adminConfig()
	cfg.Database = name
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return "", fmt.Errorf("connect template: %w", err)
	}
	if err := migrations.Apply(ctx, conn); err != nil {
		conn.Close(ctx)
		return "", err
	}
	conn.Close(ctx)
	if _, err := admin.Exec(ctx, fmt.Sprintf("COMMENT ON DATABASE %s IS 'ready'", pgx.Identifier{name}.Sanitize())); err != nil {
		return "", fmt.Errorf("mark template ready: %w", err)
	}
	return name, nil
}

func schemaHash() (string, error) {
	h := sha256.New()
	err := fs.WalkDir(migrations.FS(), ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(migrations.FS(), path)
		if err != nil {
			return err
		}
		h.Write([]byte(path))
		h.Write(b)
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("hash migrations: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
