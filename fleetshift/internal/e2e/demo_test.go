package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/fleetshift/fleetshift/fleetshift/internal/demo"
	"github.com/fleetshift/fleetshift/shared/pgtest"
)

// TestDemo: the demo ends by itself within a minute, shows the healthy rollout completing and the failing
// one auto-pausing with its failed devices rolled back, and leaves no database behind.
func TestDemo(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out syncBuffer
	var name string
	if err := demo.Run(ctx, demo.Options{ServerURL: pgtest.ServerURL(), Out: &out, OnDatabase: func(n string) { name = n }}); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	text := out.String()
	for _, want := range []string{"200 simulated devices", "completed batch 3/3", "auto-paused", "rolled back to their old image"} {
		if !strings.Contains(text, want) {
			t.Fatalf("demo output lacks %q:\n%s", want, text)
		}
	}
	db := pgtest.New(t) // any connection to the same server
	var left int
	if err := db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_database WHERE datname = $1`, name).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if name == "" || left != 0 {
		t.Fatalf("demo database %q still exists", name)
	}
}
