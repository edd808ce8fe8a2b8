// Package pgtest gives each test its own PostgreSQL database with fleetshift's schema, cloned from a
// migrated template database, so tests run in parallel and never touch user data.
//
// The server comes from TEST_DATABASE_URL, else DATABASE_URL, else postgres://postgres@127.0.0.1:5432.
// Only the server is taken from those URLs: pgtest creates and drops its own databases
// (fleetshift_test_*, fleetshift_tmpl_*), never writing to the database the URL names. When no server
// answers, the test fails with what to do; `make test` starts a throwaway cluster itself when initdb is
// installed.
//
// Nothing is left behind: each test's database is dropped when the test ends, and when the test process
// exits (however it ends) a reaper it started drops the databases it still owned and every template no
// live test process uses. Ownership is told by session advisory locks, which PostgreSQL releases when
// their process's connection goes away; Leftovers lists what no live process owns.
package pgtest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"strings"
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

// Name prefixes of the databases pgtest makes.
const (
	TestPrefix     = "fleetshift_test_"
	TemplatePrefix = "fleetshift_tmpl_"
)

// reaperEnv, set in a test binary's environment, makes it the reaper of the process named by its value.
const reaperEnv = "FLEETSHIFT_PGTEST_REAPER_FOR"

func init() {
	if owner := os.Getenv(reaperEnv); owner != "" {
		os.Exit(reap())
	}
}

// process is this test process's registration: its id (in its database names), the connection holding
// its advisory locks, and the template it uses.
var (
	processOnce sync.Once
	processID   string
	processErr  error
	holder      *pgx.Conn
	reaperStdin io.WriteCloser // kept open for the process's life: the reaper starts when it closes

	templateOnce sync.Once
	templateName string
	templateErr  error
)

// lockKey is the advisory lock key standing for name (a process or a template).
func lockKey(name string) int64 {
	h := fnv.New64a()
	h.Write([]byte("fleetshift-pgtest:" + name))
	return int64(h.Sum64())
}

// register makes this process known: it holds the lock of its id for as long as it lives, and starts
// its reaper.
func register(ctx context.Context) (string, error) {
	processOnce.Do(func() {
		id := randomHex(4)
		conn, err := connectAdmin(ctx)
		if err != nil {
			processErr = err
			return
		}
		if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", lockKey("process:"+id)); err != nil {
			conn.Close(ctx)
			processErr = fmt.Errorf("lock test process id: %w", err)
			return
		}
		holder, processID = conn, id
		processErr = startReaper(id)
	})
	return processID, processErr
}

// startReaper runs this test binary again as the reaper of process id; it waits for its stdin to close,
// which happens when this process exits, however it exits.
func startReaper(id string) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find the test binary for the database reaper: %w", err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), reaperEnv+"="+id, "TEST_DATABASE_URL="+ServerURL())
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return fmt.Errorf("start the database reaper: %w", err)
	}
	// No stdout/stderr: `go test` would wait for the reaper to close them.
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the database reaper: %w", err)
	}
	reaperStdin = stdin
	go func() { _ = cmd.Wait() }() // never returns before this process ends, unless the reaper died
	return nil
}

// reap runs in the reaper process: once its parent is gone, drop what no live test process owns.
func reap() int {
	_, _ = io.Copy(io.Discard, os.Stdin)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	left, err := Leftovers(ctx)
	if err != nil {
		return 1
	}
	admin, err := connectAdmin(ctx)
	if err != nil {
		return 1
	}
	defer admin.Close(ctx)
	for _, name := range left {
		key := ownerKey(name)
		var got bool
		if err := admin.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", key).Scan(&got); err != nil || !got {
			continue // owned again since Leftovers looked
		}
		_, _ = admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
		_, _ = admin.Exec(ctx, "SELECT pg_advisory_unlock($1)", key)
	}
	return 0
}

// ownerKey is the lock held by whoever owns database name: its process for a test database, every
// process using it for a template.
func ownerKey(name string) int64 {
	if rest, ok := strings.CutPrefix(name, TestPrefix); ok {
		id, _, _ := strings.Cut(rest, "_")
		return lockKey("process:" + id)
	}
	return lockKey("template:" + name)
}

// Leftovers lists pgtest's databases on the test server that no live test process owns: left behind.
func Leftovers(ctx context.Context) ([]string, error) {
	admin, err := connectAdmin(ctx)
	if err != nil {
		return nil, err
	}
	defer admin.Close(ctx)
	rows, err := admin.Query(ctx, `SELECT datname FROM pg_database WHERE datname LIKE $1 OR datname LIKE $2 ORDER BY datname`,
		strings.ReplaceAll(TestPrefix, "_", `\_`)+"%", strings.ReplaceAll(TemplatePrefix, "_", `\_`)+"%")
	if err != nil {
		return nil, fmt.Errorf("list test databases: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list test databases: %w", err)
	}
	var left []string
	for _, name := range names {
		var free bool
		if err := admin.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", ownerKey(name)).Scan(&free); err != nil {
			return nil, fmt.Errorf("check owner of %s: %w", name, err)
		}
		if free {
			if _, err := admin.Exec(ctx, "SELECT pg_advisory_unlock($1)", ownerKey(name)); err != nil {
				return nil, fmt.Errorf("check owner of %s: %w", name, err)
			}
			left = append(left, name)
		}
	}
	return left, nil
}

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
	id, err := register(ctx)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	templateOnce.Do(func() { templateName, templateErr = ensureTemplate(ctx) })
	if templateErr != nil {
		t.Fatalf("pgtest: %v", templateErr)
	}
	admin, err := connectAdmin(ctx)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	defer admin.Close(ctx)
	name := TestPrefix + id + "_" + randomHex(4)
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
	name := TemplatePrefix + sum[:12]
	// Use it for as long as this process lives (a reaper drops it once no process does). Taken before
	// looking at it: a reaper dropping it holds the lock exclusively until it is gone.
	if _, err := holder.Exec(ctx, "SELECT pg_advisory_lock_shared($1)", lockKey("template:"+name)); err != nil {
		return "", fmt.Errorf("lock template: %w", err)
	}
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
