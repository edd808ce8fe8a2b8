package planner

import (
	"context"
	"testing"

	"github.com/fleetshift/fleetshift/shared/pgtest"
	policies "github.com/fleetshift/fleetshift/shared/policy"
)

// TestOverridePolicyCompetesAsIfStored: a replayed policy without an id ranks after every stored policy on
// ties (as its id would once created), one with a stored id replaces that policy, and a disabled one never wins.
func TestOverridePolicyCompetesAsIfStored(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	stored := policy(t, db, map[string]string{"image_pattern": "'acme/*'", "priority": "1"})
	override := func(id int64, pattern string, priority int32, enabled bool) *Policy {
		p := policies.Defaults()
		p.ID, p.ImagePattern, p.Priority, p.Enabled = id, pattern, priority, enabled
		return &p
	}
	cases := []struct {
		name string
		over *Policy
		want int64 // policy id that wins; -1: none
	}{
		{"new, same specificity and priority: the stored one (lower id) wins", override(0, "acme/*", 1, true), stored},
		{"new, higher priority wins", override(0, "acme/*", 2, true), 0},
		{"new, more specific wins", override(0, "acme/app:*", 0, true), 0},
		{"new but disabled", override(0, "acme/app:*", 9, false), stored},
		{"replacing the stored one with a pattern that misses", override(stored, "other/*", 1, true), -1},
		{"replacing the stored one", override(stored, "acme/app", 0, true), stored},
	}
	for _, c := range cases {
		pl, err := plan(ctx, db.Pool, push("e", "acme/app:2"), c.over)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		got := int64(-1)
		if pl.Policy != nil {
			got = pl.Policy.ID
		}
		if got != c.want {
			t.Errorf("%s: policy %d wins, want %d", c.name, got, c.want)
		}
		if c.want == stored && c.over.ID == stored && pl.Policy.ImagePattern != "acme/app" {
			t.Errorf("%s: planned with the stored row %q, not the replayed policy", c.name, pl.Policy.ImagePattern)
		}
	}
	if _, err := Replay(ctx, db.Pool, *override(0, "acme/*", 0, true), 0); err == nil {
		t.Fatal("days 0 accepted")
	}
}
