package compose_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fleetshift/fleetshift/agent/wire"
)

// TestFailedServiceReportsItsLogTail: an exited service is reported with its exit code as the error and
// the last 50 lines of its container's log (compose's "<container> | " prefixes removed); a running one
// without either.
func TestFailedServiceReportsItsLogTail(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	rt, _ := newRuntime(t, f, nil)
	ctx := context.Background()
	if err := rt.Apply(ctx, target(1, "", "acme/web:2.0", "postgres:15")); err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	for i := range 60 {
		fmt.Fprintf(&logs, "fs-1-web-1  | line %d\n", i)
	}
	if err := os.WriteFile(filepath.Join(f.dir, "logs"), []byte(logs.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	f.ps(t, "fs-1", `[{"Service":"web","Image":"acme/web:2.0","State":"exited","Health":"","ExitCode":3},
		{"Service":"db","Image":"postgres:15","State":"running","Health":""}]`)
	apps, err := rt.State(ctx)
	if err != nil {
		t.Fatal(err)
	}
	svcs := apps["1"].Services
	if len(svcs) != 2 {
		t.Fatalf("services: %+v", svcs)
	}
	web, db := svcs[0], svcs[1]
	if web.Error != "container exited with code 3" {
		t.Fatalf("exited service error %q", web.Error)
	}
	lines := strings.Split(web.LogTail, "\n")
	if len(lines) != wire.LogTailLines || lines[0] != "line 10" || lines[len(lines)-1] != "line 59" {
		t.Fatalf("exited service log tail (%d lines):\n%s", len(lines), web.LogTail)
	}
	if db.Error != "" || db.LogTail != "" {
		t.Fatalf("running service reported a failure: %+v", db)
	}
	var asked bool
	for _, c := range f.calls(t) {
		if strings.HasSuffix(c, "logs --no-color --tail 50 web") {
			asked = true
		}
		if strings.Contains(c, "logs") && strings.HasSuffix(c, " db") {
			t.Fatalf("logs read for a running service: %q", c)
		}
	}
	if !asked {
		t.Fatalf("no logs --tail 50 web call in %q", f.calls(t))
	}
}
