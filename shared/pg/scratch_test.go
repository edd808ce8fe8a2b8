package pg_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/fleetshift/fleetshift/shared/pg"
	"github.com/fleetshift/fleetshift/shared/pgtest"
)

func TestWithDatabase(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"postgres://u:p@h:5433/app?sslmode=require&application_name=x": "postgres://u:p@h:5433/other?sslmode=require&application_name=x",
		"postgresql://u@h/app":                               "postgresql://u@h/other",
		"host=h port=5433 user=u dbname=app sslmode=disable": "host=h port=5433 user=u dbname=app sslmode=disable dbname=other",
	} {
		got, err := pg.WithDatabase(in, "other")
		if err != nil || got != want {
			t.Errorf("WithDatabase(%q) = %q, %v; want %q", in, got, err, want)
		}
		cfg, err := pgx.ParseConfig(got)
		if err != nil || cfg.Database != "other" {
			t.Errorf("%q parses to database %q (%v)", got, cfg.Database, err)
		}
	}
	if _, err := pg.WithDatabase("postgres://u@h:badport/x", "y"); err == nil {
		t.Error("a bad URL must be refused")
	}
}

func TestScratchIsCreatedAndDropped(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, err := pg.CreateScratch(ctx, pgtest.ServerURL(), "fleetshift_scratch_")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, s.URL)
	if err != nil {
		t.Fatalf("connect to the scratch database: %v", err)
	}
	var name string
	_ = conn.QueryRow(ctx, "SELECT current_database()").Scan(&name)
	conn.Close(ctx)
	if name != s.Name {
		t.Fatalf("connected to %q, want %q", name, s.Name)
	}
	if err := s.Drop(ctx); err != nil {
		t.Fatal(err)
	}
	admin := pgtest.New(t)
	var left int
	_ = admin.Pool.QueryRow(ctx, "SELECT count(*) FROM pg_database WHERE datname = $1", s.Name).Scan(&left)
	if left != 0 {
		t.Fatalf("%s still exists", s.Name)
	}
}
