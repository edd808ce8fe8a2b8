package compose_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fleetshift/fleetshift/agent/runtime/compose"
	"github.com/fleetshift/fleetshift/agent/wire"
)

// fakeDocker writes a `docker` executable into a fresh directory. It appends its arguments to
// <dir>/log (the compose file path shown as F), fails `pull` while <dir>/fail-pull exists (as Docker
// does for a missing tag), and answers `ps` with <dir>/ps-<project>.
const fakeDockerScript = `#!/bin/sh
dir=%DIR%
line=""
proj=""
prev=""
for a in "$@"; do
  case "$prev" in -f) a=F ;; -p) proj="$a" ;; esac
  line="$line $a"
  prev="$a"
done
echo "${line# }" >> "$dir/log"
case " $* " in
  *" pull "*)
    if [ -e "$dir/fail-pull" ]; then
      echo "Error response from daemon: manifest for acme/web:broken not found: manifest unknown" >&2
      exit 1
    fi ;;
  *" ps "*)
    [ -e "$dir/ps-$proj" ] && cat "$dir/ps-$proj" ;;
  *" logs "*)
    [ -e "$dir/logs" ] && cat "$dir/logs" ;;
esac
exit 0
`

type fake struct {
	dir    string
	docker string
}

func newFake(t *testing.T) *fake {
	t.Helper()
	dir := t.TempDir()
	docker := filepath.Join(dir, "docker")
	if err := os.WriteFile(docker, []byte(strings.ReplaceAll(fakeDockerScript, "%DIR%", dir)), 0o755); err != nil {
		t.Fatal(err)
	}
	return &fake{dir: dir, docker: docker}
}

// calls returns the docker invocations since the last reset.
func (f *fake) calls(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(f.dir, "log"))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	// The bookkeeping of kept images (which image each service runs, re-tagging one) is left out.
	var calls []string
	for _, c := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if !strings.HasPrefix(c, "ps --all --quiet ") && !strings.HasPrefix(c, "inspect ") && !strings.HasPrefix(c, "tag ") {
			calls = append(calls, c)
		}
	}
	return calls
}

func (f *fake) reset(t *testing.T) {
	t.Helper()
	if err := os.Remove(filepath.Join(f.dir, "log")); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
}

func (f *fake) ps(t *testing.T, project, out string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(f.dir, "ps-"+project), []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
}

func target(version int64, strategy string, images ...string) wire.DeviceTarget {
	app := wire.App{AppID: json.RawMessage("1"), AppName: "shop"}
	names := []string{"web", "db", "cache"}
	for i, img := range images {
		app.Services = append(app.Services, wire.Service{ServiceName: names[i], ImageName: img, UpdateStrategy: strategy,
			Config: map[string]any{"environment": map[string]any{"MODE": "prod"}}})
	}
	return wire.DeviceTarget{Version: version, Apps: map[string]wire.App{"1": app}}
}

func newRuntime(t *testing.T, f *fake, mutate func(*compose.Config)) (*compose.Runtime, string) {
	t.Helper()
	state := t.TempDir()
	cfg := compose.Config{StateDir: state, Docker: f.docker, LockPoll: 5 * time.Millisecond}
	if mutate != nil {
		mutate(&cfg)
	}
	rt, err := compose.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return rt, state
}

const p = "compose -p fs-1 -f F "

func TestDownloadThenKillOrder(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	rt, state := newRuntime(t, f, nil)
	ctx := context.Background()
	if err := rt.Apply(ctx, target(1, "", "acme/web:1.0", "postgres:15")); err != nil {
		t.Fatal(err)
	}
	want := []string{p + "pull web db", p + "up -d --remove-orphans"}
	if got := f.calls(t); !slices.Equal(got, want) {
		t.Fatalf("first apply ran\n%q\nwant\n%q", got, want)
	}
	var doc struct {
		Services map[string]map[string]any `json:"services"`
	}
	b, err := os.ReadFile(filepath.Join(state, "apps", "1", "docker-compose.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("compose file is not JSON: %v", err)
	}
	if doc.Services["web"]["image"] != "acme/web:1.0" || doc.Services["web"]["environment"] == nil {
		t.Fatalf("compose file services: %v", doc.Services)
	}

	f.reset(t)
	if err := rt.Apply(ctx, target(2, "", "acme/web:2.0", "postgres:15")); err != nil {
		t.Fatal(err)
	}
	want = []string{p + "pull web", p + "up -d --remove-orphans"}
	if got := f.calls(t); !slices.Equal(got, want) {
		t.Fatalf("update ran\n%q\nwant\n%q", got, want)
	}
	prev, err := os.ReadFile(filepath.Join(state, "apps", "1", "docker-compose.previous.json"))
	if err != nil || !strings.Contains(string(prev), "acme/web:1.0") {
		t.Fatalf("previous project not kept for rollback: %v", err)
	}

	f.reset(t)
	if err := rt.Apply(ctx, target(3, "", "acme/web:2.0", "postgres:15")); err != nil {
		t.Fatal(err)
	}
	if got := f.calls(t); len(got) != 0 {
		t.Fatalf("re-applying the same target ran %q", got)
	}
}

func TestKillThenDownloadOrder(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	rt, _ := newRuntime(t, f, nil)
	ctx := context.Background()
	if err := rt.Apply(ctx, target(1, wire.KillThenDownload, "acme/web:1.0")); err != nil {
		t.Fatal(err)
	}
	f.reset(t)
	if err := rt.Apply(ctx, target(2, wire.KillThenDownload, "acme/web:2.0")); err != nil {
		t.Fatal(err)
	}
	want := []string{p + "stop web", p + "pull web", p + "up -d --remove-orphans"}
	if got := f.calls(t); !slices.Equal(got, want) {
		t.Fatalf("kill-then-download ran\n%q\nwant\n%q", got, want)
	}
	// The label form selects the strategy too.
	f.reset(t)
	tg := target(3, "", "acme/web:3.0")
	tg.Apps["1"].Services[0].Config["labels"] = map[string]any{"io.balena.update.strategy": "kill-then-download"}
	if err := rt.Apply(ctx, tg); err != nil {
		t.Fatal(err)
	}
	if got := f.calls(t); len(got) == 0 || got[0] != p+"stop web" {
		t.Fatalf("label strategy ran %q, want a stop first", got)
	}
}

func TestHeldLockDefersUntilReleased(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	deferred := make(chan string, 1)
	rt, _ := newRuntime(t, f, func(c *compose.Config) {
		c.LockTimeout = time.Hour
		c.OnDefer = func(app string) { deferred <- app }
	})
	ctx := context.Background()
	if err := rt.Apply(ctx, target(1, "", "acme/web:1.0")); err != nil {
		t.Fatal(err)
	}
	lock := rt.LockPath("1")
	if err := os.MkdirAll(filepath.Dir(lock), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(lock, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	f.reset(t)
	done := make(chan error, 1)
	go func() { done <- rt.Apply(ctx, target(2, "", "acme/web:2.0")) }()
	if app := <-deferred; app != "1" {
		t.Fatalf("deferred app %q", app)
	}
	// The update now waits on the lock: nothing has touched the containers.
	if got := f.calls(t); len(got) != 0 {
		t.Fatalf("docker ran %q while the update lock was held", got)
	}
	select {
	case err := <-done:
		t.Fatalf("apply returned (%v) while the lock was held", err)
	default:
	}
	if err := os.Remove(lock); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	want := []string{p + "pull web", p + "up -d --remove-orphans"}
	if got := f.calls(t); !slices.Equal(got, want) {
		t.Fatalf("after release ran %q, want %q", got, want)
	}
}

func TestHeldLockTimesOut(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	rt, _ := newRuntime(t, f, func(c *compose.Config) { c.LockTimeout = 100 * time.Millisecond })
	ctx := context.Background()
	if err := rt.Apply(ctx, target(1, "", "acme/web:1.0")); err != nil {
		t.Fatal(err)
	}
	lock := rt.LockPath("1")
	_ = os.MkdirAll(filepath.Dir(lock), 0o755)
	if err := os.WriteFile(lock, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	f.reset(t)
	start := time.Now()
	if err := rt.Apply(ctx, target(2, "", "acme/web:2.0")); err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(start); waited < 100*time.Millisecond {
		t.Fatalf("update went ahead after %s, before the lock timeout", waited)
	}
	want := []string{p + "pull web", p + "up -d --remove-orphans"}
	if got := f.calls(t); !slices.Equal(got, want) {
		t.Fatalf("after timeout ran %q, want %q", got, want)
	}
}

func TestStaleLockIsNotHeld(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	rt, _ := newRuntime(t, f, func(c *compose.Config) { c.LockTimeout = time.Hour; c.LockStale = time.Minute })
	ctx := context.Background()
	if err := rt.Apply(ctx, target(1, "", "acme/web:1.0")); err != nil {
		t.Fatal(err)
	}
	lock := rt.LockPath("1")
	_ = os.MkdirAll(filepath.Dir(lock), 0o755)
	if err := os.WriteFile(lock, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-2 * time.Minute)
	if err := os.Chtimes(lock, old, old); err != nil {
		t.Fatal(err)
	}
	if err := rt.Apply(ctx, target(2, "", "acme/web:2.0")); err != nil {
		t.Fatal(err)
	}
}

func TestFailedPullKeepsOldContainersAndReportsError(t *testing.T) {
	t.Parallel()
	for _, strategy := range []string{wire.DownloadThenKill, wire.KillThenDownload} {
		t.Run(strategy, func(t *testing.T) {
			t.Parallel()
			f := newFake(t)
			rt, state := newRuntime(t, f, nil)
			ctx := context.Background()
			if err := rt.Apply(ctx, target(1, strategy, "acme/web:1.0")); err != nil {
				t.Fatal(err)
			}
			f.ps(t, "fs-1", `[{"Service":"web","Image":"acme/web:1.0","State":"running","Health":""}]`)
			if err := os.WriteFile(filepath.Join(f.dir, "fail-pull"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
			f.reset(t)
			err := rt.Apply(ctx, target(2, strategy, "acme/web:broken"))
			if err == nil || !strings.Contains(err.Error(), "manifest unknown") {
				t.Fatalf("apply with a failing pull: err %v", err)
			}
			got := f.calls(t)
			want := []string{p + "pull web"}
			if strategy == wire.KillThenDownload {
				// stopped first, so it is started again on the old image
				want = []string{p + "stop web", p + "pull web", p + "up -d --remove-orphans"}
			}
			if !slices.Equal(got, want) {
				t.Fatalf("failing update ran\n%q\nwant\n%q", got, want)
			}
			b, _ := os.ReadFile(filepath.Join(state, "apps", "1", "docker-compose.json"))
			if !strings.Contains(string(b), "acme/web:1.0") {
				t.Fatalf("compose file no longer describes the old containers:\n%s", b)
			}
			apps, err := rt.State(ctx)
			if err != nil {
				t.Fatal(err)
			}
			svc := apps["1"].Services[0]
			if svc.ImageName != "acme/web:1.0" || svc.Status != "running" || !strings.Contains(svc.Error, "manifest unknown") {
				t.Fatalf("state after failed pull: %+v", svc)
			}
			// The registry recovers: the same target is retried and the error clears.
			_ = os.Remove(filepath.Join(f.dir, "fail-pull"))
			f.ps(t, "fs-1", `{"Service":"web","Image":"acme/web:broken","State":"running","Health":"healthy"}`)
			if err := rt.Apply(ctx, target(2, strategy, "acme/web:broken")); err != nil {
				t.Fatal(err)
			}
			apps, _ = rt.State(ctx)
			if svc := apps["1"].Services[0]; svc.Error != "" || svc.ImageName != "acme/web:broken" {
				t.Fatalf("state after retry: %+v", svc)
			}
		})
	}
}

func TestStateReadsBothPSFormats(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	rt, _ := newRuntime(t, f, nil)
	ctx := context.Background()
	if err := rt.Apply(ctx, target(1, "", "acme/web:1.0", "postgres:15")); err != nil {
		t.Fatal(err)
	}
	for name, out := range map[string]string{
		"array": `[{"Service":"web","Image":"acme/web:1.0","State":"running","Health":"healthy"},{"Service":"db","Image":"postgres:15","State":"exited","ExitCode":1}]`,
		"lines": "{\"Service\":\"web\",\"Image\":\"acme/web:1.0\",\"State\":\"running\",\"Health\":\"healthy\"}\n{\"Service\":\"db\",\"Image\":\"postgres:15\",\"State\":\"exited\",\"ExitCode\":1}\n",
	} {
		f.ps(t, "fs-1", out)
		apps, err := rt.State(ctx)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		s := apps["1"].Services
		if len(s) != 2 || s[0].Status != "running" || s[0].Health == nil || s[0].Health.Status != "healthy" || s[1].Status != "exited" || s[1].Health != nil {
			t.Fatalf("%s: state %+v", name, s)
		}
	}
	if got := f.calls(t); !slices.Contains(got, p+"ps --all --format json") {
		t.Fatalf("state did not ask compose ps: %q", got)
	}
}

func TestRemovedAppIsTakenDownAndRuntimeRemembersApps(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	rt, state := newRuntime(t, f, nil)
	ctx := context.Background()
	if err := rt.Apply(ctx, target(1, "", "acme/web:1.0")); err != nil {
		t.Fatal(err)
	}
	// A new runtime over the same state dir (agent restart) knows the app.
	rt2, err := compose.New(compose.Config{StateDir: state, Docker: f.docker})
	if err != nil {
		t.Fatal(err)
	}
	f.reset(t)
	if err := rt2.Apply(ctx, wire.DeviceTarget{Version: 2, Apps: map[string]wire.App{}}); err != nil {
		t.Fatal(err)
	}
	if got := f.calls(t); !slices.Equal(got, []string{p + "down --remove-orphans"}) {
		t.Fatalf("removal ran %q", got)
	}
	if _, err := os.Stat(filepath.Join(state, "apps", "1")); !os.IsNotExist(err) {
		t.Fatalf("app dir left behind: %v", err)
	}
}

// TestDockerFromPATH runs the runtime with its default executable name, found first on PATH.
func TestDockerFromPATH(t *testing.T) {
	f := newFake(t)
	t.Setenv("PATH", f.dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	rt, err := compose.New(compose.Config{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.Apply(context.Background(), target(1, "", "acme/web:1.0")); err != nil {
		t.Fatal(err)
	}
	if got := f.calls(t); len(got) != 2 {
		t.Fatalf("docker on PATH not used: %q", got)
	}
}

// TestComposeV1: with docker-compose (v1) the file has no top-level "name" (v1 refuses it), every
// command carries the device's project prefix, and the state comes from `docker ps` by project label,
// health and exit code read from the status column.
func TestComposeV1(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	v1 := filepath.Join(f.dir, "docker-compose")
	if err := os.Symlink(f.docker, v1); err != nil {
		t.Fatal(err)
	}
	rt, state := newRuntime(t, f, func(c *compose.Config) {
		c.Compose = []string{v1}
		c.ProjectPrefix = "dev7-"
	})
	ctx := context.Background()
	if err := rt.Apply(ctx, target(1, "", "acme/web:1.0", "postgres:15")); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(state, "apps", "1", "docker-compose.json"))
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	if _, ok := doc["name"]; ok {
		t.Fatalf("v1 file has a top-level name: %s", b)
	}
	got := f.calls(t)
	if !slices.Contains(got, "-p dev7-1 -f F up -d --remove-orphans") {
		t.Fatalf("v1 calls: %q", got)
	}
	f.ps(t, "", "web\tacme/web:1.0\trunning\tUp 3 seconds (healthy)\ndb\tpostgres:15\texited\tExited (1) 2 seconds ago\n")
	apps, err := rt.State(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s := apps["1"].Services
	if len(s) != 2 || s[0].Status != "running" || s[0].Health == nil || s[0].Health.Status != "healthy" || s[1].Status != "exited" || s[1].Health != nil {
		t.Fatalf("state %+v", s)
	}
	want := `ps --all --no-trunc --filter label=com.docker.compose.project=dev7-1 --format {{.Label "com.docker.compose.service"}}` + "\t{{.Image}}\t{{.State}}\t{{.Status}}"
	if got := f.calls(t); !slices.Contains(got, want) {
		t.Fatalf("state did not ask docker ps by label: %q", got)
	}
}
