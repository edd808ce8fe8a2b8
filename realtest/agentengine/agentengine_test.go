// Package agentengine_test runs the device agent's compose runtime and health checks against the real
// Docker engine: images pushed to a Distribution registry container and pulled from it by compose
// (the v2 plugin when present, else docker-compose v1).
package agentengine_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetshift/fleetshift/agent/health"
	"github.com/fleetshift/fleetshift/agent/wire"
	"github.com/fleetshift/fleetshift/realtest/internal/dockerenv"
)

// eventLog follows the engine's pull and die events from its start ("type action actorID" lines). The
// engine keeps only its last 256 events (health probes fill that in seconds), so they are followed live.
type eventLog struct {
	mu    sync.Mutex
	lines []string
	cmd   *exec.Cmd
}

func followEvents(t *testing.T) *eventLog {
	t.Helper()
	since := time.Now()
	l := &eventLog{}
	l.cmd = exec.Command("docker", "events", "--since", fmt.Sprintf("%d.%09d", since.Unix(), since.Nanosecond()),
		"--filter", "event=pull", "--filter", "event=die", "--format", "{{.Type}} {{.Action}} {{.Actor.ID}}")
	out, err := l.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := l.cmd.Start(); err != nil {
		t.Fatalf("docker events: %v", err)
	}
	t.Cleanup(func() { _ = l.cmd.Process.Kill(); _ = l.cmd.Wait() })
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			l.mu.Lock()
			l.lines = append(l.lines, sc.Text())
			l.mu.Unlock()
		}
	}()
	return l
}

// waitFor waits until every one of want has been seen and returns the lines so far.
func (l *eventLog) waitFor(t *testing.T, want ...string) []string {
	t.Helper()
	var lines []string
	eventually(t, 5*time.Minute, func() error {
		l.mu.Lock()
		lines = slices.Clone(l.lines)
		l.mu.Unlock()
		for _, w := range want {
			if !slices.Contains(lines, w) {
				return fmt.Errorf("no event %q among:\n%s", w, strings.Join(lines, "\n"))
			}
		}
		return nil
	})
	return lines
}

// TestApplyPullsStartsUpdatesAndRemoves: the runtime pulls from the registry and starts every service;
// an update replaces a download-then-kill service only after its new image is pulled and a
// kill-then-download one before, leaves an unchanged service's container alone; a service dropped from
// the target and then the whole app are removed.
func TestApplyPullsStartsUpdatesAndRemoves(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	web1, web2 := e.push(dockerenv.DemoappV1, "demo/web:1"), e.push(dockerenv.DemoappV2, "demo/web:2")
	wrk1, wrk2 := e.push(dockerenv.DemoappV1, "demo/worker:1"), e.push(dockerenv.DemoappV2, "demo/worker:2")
	v1ID, v2ID := dockerenv.ImageID(t, dockerenv.DemoappV1), dockerenv.ImageID(t, dockerenv.DemoappV2)

	e.apply(target(1, svc("web", web1, ""), svc("worker", wrk1, wire.KillThenDownload), svc("extra", web1, "")))
	before := e.containers()
	for _, name := range []string{"web", "worker", "extra"} {
		c, ok := before[name]
		if !ok || c.Status != "running" || c.ImageID != v1ID {
			t.Fatalf("%s after the first apply: %+v (want running image %s)", name, c, v1ID)
		}
	}
	dockerenv.Docker(t, "image", "inspect", web1) // pulled from the registry: the push left no local tag
	st := e.state()
	if st["web"].ImageName != web1 || st["web"].Status != "running" || st["worker"].ImageName != wrk1 {
		t.Fatalf("state after the first apply: %+v", st)
	}

	ev := followEvents(t)
	e.apply(target(2, svc("web", web2, ""), svc("worker", wrk2, wire.KillThenDownload), svc("extra", web1, "")))
	after := e.containers()
	for _, name := range []string{"web", "worker"} {
		if c := after[name]; c.Status != "running" || c.ImageID != v2ID || c.ID == before[name].ID || c.ImageRef != strings.ReplaceAll(before[name].ImageRef, ":1", ":2") {
			t.Fatalf("%s after the update: %+v (before %+v)", name, c, before[name])
		}
	}
	if after["extra"].ID != before["extra"].ID {
		t.Fatal("the unchanged service extra was recreated")
	}
	webPull, webDie := "image pull "+web2, "container die "+before["web"].ID
	wrkPull, wrkDie := "image pull "+wrk2, "container die "+before["worker"].ID
	lines := ev.waitFor(t, webPull, webDie, wrkPull, wrkDie)
	if slices.Index(lines, webPull) > slices.Index(lines, webDie) {
		t.Errorf("download-then-kill: web's old container died before its new image was pulled:\n%s", strings.Join(lines, "\n"))
	}
	if slices.Index(lines, wrkDie) > slices.Index(lines, wrkPull) {
		t.Errorf("kill-then-download: worker's new image was pulled before its old container died:\n%s", strings.Join(lines, "\n"))
	}

	e.apply(target(3, svc("web", web2, ""), svc("worker", wrk2, wire.KillThenDownload)))
	dropped := e.containers()
	if _, ok := dropped["extra"]; ok || len(dropped) != 2 || dropped["web"].ID != after["web"].ID {
		t.Fatalf("after dropping extra: %+v", dropped)
	}
	if _, ok := e.state()["extra"]; ok {
		t.Fatal("state still reports the dropped service")
	}

	e.apply(target(4))
	if left := e.containers(); len(left) != 0 {
		t.Fatalf("after dropping the app: %+v", left)
	}
	if apps, err := e.rt.State(context.Background()); err != nil || len(apps) != 0 {
		t.Fatalf("state after dropping the app: %+v, %v", apps, err)
	}
}

// check parses a health-check document and runs it against probe.
func check(t *testing.T, doc string, probe health.ContainerProbe) health.Result {
	t.Helper()
	c, err := health.Parse(json.RawMessage(doc))
	if err != nil {
		t.Fatal(err)
	}
	return health.Run(context.Background(), c, probe)
}

// TestHealthChecksAgainstRealContainers: http, tcp, container and command checks pass on the healthy
// demo app and fail on the broken one (its /healthz answers 503, so its Docker health turns unhealthy).
func TestHealthChecksAgainstRealContainers(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	good, bad := e.push(dockerenv.DemoappV1, "demo/app:1"), e.push(dockerenv.DemoappBroken, "demo/app:broken")
	e.apply(target(1, svc("good", good, ""), svc("bad", bad, "")))
	cs := e.containers()
	g, b := cs["good"], cs["bad"]
	if g.IP == "" || b.IP == "" {
		t.Fatalf("containers without an address: %+v", cs)
	}
	probe := func(service string) health.ContainerProbe {
		return func(ctx context.Context) (string, string, error) {
			apps, err := e.rt.State(ctx)
			if err != nil {
				return "", "", err
			}
			for _, s := range apps["1"].Services {
				if s.ServiceName == service {
					h := ""
					if s.Health != nil {
						h = s.Health.Status
					}
					return s.Status, h, nil
				}
			}
			return "missing", "", nil
		}
	}
	// Attempt timeouts are generous: docker exec alone can take seconds on a busy machine.
	patient := `"interval_seconds":0.3,"retries":100,"timeout_seconds":20,"deadline_seconds":240`
	brief := `"interval_seconds":0.3,"retries":2,"timeout_seconds":20`
	e.waitHealth("bad", "unhealthy") // Docker's own probe of the broken app has failed twice
	cases := []struct {
		name, doc string
		probe     health.ContainerProbe
		want      string
		detail    string
	}{
		{"http good", `{"type":"http","url":"http://` + g.IP + `:8080/healthz","expected_status":200,"body_contains":"ok",` + patient + `}`, nil, wire.Healthy, ""},
		{"http bad", `{"type":"http","url":"http://` + b.IP + `:8080/healthz",` + brief + `}`, nil, wire.Unhealthy, "status 503"},
		{"tcp good", `{"type":"tcp","address":"` + g.IP + `:8080",` + patient + `}`, nil, wire.Healthy, ""},
		{"tcp closed port", `{"type":"tcp","address":"` + g.IP + `:9",` + brief + `}`, nil, wire.Unhealthy, "refused"},
		{"container good", `{"type":"container",` + patient + `}`, probe("good"), wire.Healthy, ""},
		{"container bad", `{"type":"container",` + brief + `}`, probe("bad"), wire.Unhealthy, "health is unhealthy"},
		{"command good", `{"type":"command","command":["docker","exec","` + g.Name + `","/demoapp","healthcheck"],` + patient + `}`, nil, wire.Healthy, ""},
		{"command bad", `{"type":"command","command":["docker","exec","` + b.Name + `","/demoapp","healthcheck"],` + brief + `}`, nil, wire.Unhealthy, "exit status 1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := check(t, c.doc, c.probe)
			if r.Status != c.want || !strings.Contains(r.Detail, c.detail) {
				t.Fatalf("%s: %+v, want %s with detail containing %q", c.doc, r, c.want, c.detail)
			}
		})
	}
	// A check on a container that ran once but exited: the container check says so.
	e.apply(target(2, svc("good", good, ""), wire.Service{ServiceName: "bad", ImageName: bad,
		Config: map[string]any{"image": bad, "environment": map[string]any{"DEMOAPP_FAIL": "exit"}, "restart": "no"}}))
	eventually(t, 5*time.Minute, func() error {
		if c := e.containers()["bad"]; c.Status != "exited" {
			return fmt.Errorf("bad is %s", c.Status)
		}
		return nil
	})
	if r := check(t, `{"type":"container",`+brief+`}`, probe("bad")); r.Status != wire.Unhealthy || !strings.Contains(r.Detail, "container is exited") {
		t.Fatalf("container check on an exited container: %+v", r)
	}
}

// TestRollbackRestoresExactPreviousImage: after an update to a broken image, the target naming the
// previous image again brings back exactly the image that ran before (same image ID, the digest that
// was pushed), although the tag has since been pushed again with other content, and the service is
// healthy again.
func TestRollbackRestoresExactPreviousImage(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ref1, digest1 := e.reg.Push(t, dockerenv.DemoappV1, "demo/app:1.0")
	broken := e.push(dockerenv.DemoappBroken, "demo/app:1.1")
	v1ID := dockerenv.ImageID(t, dockerenv.DemoappV1)

	e.apply(target(1, svc("web", ref1, "")))
	if c := e.waitHealth("web", "healthy"); c.ImageID != v1ID {
		t.Fatalf("web runs %s, want %s", c.ImageID, v1ID)
	}
	e.apply(target(2, svc("web", broken, "")))
	e.waitHealth("web", "unhealthy")
	// The tag 1.0 is pushed again with other content: pulling it now would not give back what ran.
	e.push(dockerenv.DemoappV2, "demo/app:1.0")

	e.apply(target(3, svc("web", ref1, "")))
	c := e.waitHealth("web", "healthy")
	if c.ImageID != v1ID || c.ImageRef != ref1 {
		t.Fatalf("after rollback web runs %s (%s), want %s (%s)", c.ImageID, c.ImageRef, v1ID, ref1)
	}
	digests := dockerenv.Docker(t, "image", "inspect", "--format", "{{range .RepoDigests}}{{println .}}{{end}}", c.ImageID)
	if !slices.Contains(strings.Fields(digests), digest1) {
		t.Fatalf("the image web runs after rollback has digests %q, want %s among them", digests, digest1)
	}
	out, err := dockerenv.DockerErr(context.Background(), "exec", c.Name, "/demoapp", "healthcheck")
	if err != nil {
		t.Fatalf("healthcheck in the rolled-back container: %v %s", err, out)
	}
	if st := e.state()["web"]; st.ImageName != ref1 || st.Status != "running" || st.Health == nil || st.Health.Status != wire.Healthy {
		t.Fatalf("state after rollback: %+v", st)
	}
}

// TestUpdateLockHoldsUpdateBack: while the app's update lock file is held, an update waits with the old
// container running; removing the lock lets it proceed.
func TestUpdateLockHoldsUpdateBack(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ref1, ref2 := e.push(dockerenv.DemoappV1, "demo/app:1"), e.push(dockerenv.DemoappV2, "demo/app:2")
	e.apply(target(1, svc("web", ref1, "")))
	old := e.containers()["web"]

	lock := e.rt.LockPath("1")
	if err := os.MkdirAll(filepath.Dir(lock), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(lock, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- e.rt.Apply(context.Background(), target(2, svc("web", ref2, ""))) }()
	select {
	case app := <-e.deferred:
		if app != "1" {
			t.Fatalf("deferred app %q", app)
		}
	case err := <-done:
		t.Fatalf("update went ahead under a held lock: %v", err)
	case <-time.After(10 * time.Minute):
		t.Fatal("update neither deferred nor done")
	}
	if c := e.containers()["web"]; c.ID != old.ID || c.Status != "running" || c.ImageRef != ref1 {
		t.Fatalf("while the lock is held web is %+v, want the old container %s running", c, old.ID)
	}
	if err := os.Remove(lock); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Minute):
		t.Fatal("update did not finish after the lock was released")
	}
	if c := e.containers()["web"]; c.ID == old.ID || c.ImageRef != ref2 || c.Status != "running" {
		t.Fatalf("after release web is %+v", c)
	}
}

// TestRestartMidUpdateAdoptsAndConverges: an agent stopped in the middle of an update (the registry
// hangs the pull, the kill-then-download service is already stopped) leaves containers behind; the
// agent started again over the same state directory reports them as they are and converges to the
// target with one container per service.
func TestRestartMidUpdateAdoptsAndConverges(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	web1, web2 := e.push(dockerenv.DemoappV1, "demo/web:1"), e.push(dockerenv.DemoappV2, "demo/web:2")
	api1, api2 := e.push(dockerenv.DemoappV1, "demo/api:1"), e.push(dockerenv.DemoappV2, "demo/api:2")
	e.apply(target(1, svc("web", web1, wire.KillThenDownload), svc("api", api1, "")))
	before := e.containers()

	// The registry stops answering: the update's pull hangs after web was stopped.
	regID := e.reg.Container.GetContainerID()
	dockerenv.Docker(t, "pause", regID)
	t.Cleanup(func() { _, _ = dockerenv.DockerErr(context.Background(), "unpause", regID) })
	ctx, kill := context.WithCancel(context.Background())
	done := make(chan error, 1)
	v2 := target(2, svc("web", web2, wire.KillThenDownload), svc("api", api2, ""))
	go func() { done <- e.rt.Apply(ctx, v2) }()
	// The runtime writes the new compose file after stopping web and before pulling.
	file := filepath.Join(e.stateDir, "apps", "1", "docker-compose.json")
	eventually(t, 5*time.Minute, func() error {
		if c := e.containers()["web"]; c.Status != "exited" {
			return fmt.Errorf("web is %s, waiting for the update to stop it", c.Status)
		}
		if b, _ := os.ReadFile(file); !strings.Contains(string(b), web2) {
			return errors.New("waiting for the update to reach its pull")
		}
		return nil
	})
	kill() // the agent dies mid-update
	if err := <-done; err == nil {
		t.Fatal("the interrupted update reported success")
	}
	dockerenv.Docker(t, "unpause", regID)

	e.rt = e.newRuntime() // the agent starts again
	st := e.state()
	if st["web"].Status != "exited" || st["web"].ImageName != web1 || st["api"].Status != "running" || st["api"].ImageName != api1 {
		t.Fatalf("the restarted agent reports %+v, want web exited on %s and api running on %s", st, web1, api1)
	}
	if left := e.containers(); left["api"].ID != before["api"].ID || left["web"].ID != before["web"].ID {
		t.Fatalf("containers changed before the restarted agent applied anything: %+v", left)
	}
	e.apply(v2)
	after := e.containers()
	if len(after) != 2 {
		t.Fatalf("after converging: %+v", after)
	}
	for name, ref := range map[string]string{"web": web2, "api": api2} {
		if c := after[name]; c.Status != "running" || c.ImageRef != ref || c.ID == before[name].ID {
			t.Fatalf("%s after converging: %+v", name, c)
		}
	}
}

// TestPullAheadLeavesTheRunningContainer: the runtime's Pull (download ahead) brings a new image from
// the registry into the engine while the service's container keeps running its old image untouched; an
// apply naming the image then switches to it.
func TestPullAheadLeavesTheRunningContainer(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	web1, web2 := e.push(dockerenv.DemoappV1, "demo/ahead:1"), e.push(dockerenv.DemoappV2, "demo/ahead:2")
	v1ID, v2ID := dockerenv.ImageID(t, dockerenv.DemoappV1), dockerenv.ImageID(t, dockerenv.DemoappV2)
	e.apply(target(1, svc("web", web1, "")))
	before := e.containers()["web"]
	if before.Status != "running" || before.ImageID != v1ID {
		t.Fatalf("web after the first apply: %+v", before)
	}
	if _, err := dockerenv.DockerErr(context.Background(), "image", "inspect", web2); err == nil {
		t.Fatalf("%s is local before the pull ahead: the test would prove nothing", web2)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := e.rt.Pull(ctx, web2); err != nil {
		t.Fatalf("pull ahead: %v", err)
	}
	if id := strings.TrimSpace(dockerenv.Docker(t, "image", "inspect", "--format", "{{.Id}}", web2)); id != v2ID {
		t.Fatalf("%s is %s locally after the pull ahead, want %s", web2, id, v2ID)
	}
	if after := e.containers(); len(after) != 1 || after["web"].ID != before.ID || after["web"].ImageID != v1ID ||
		after["web"].Status != "running" {
		t.Fatalf("containers changed by the pull ahead: %+v, before %+v", after, before)
	}
	if st := e.state()["web"]; st.ImageName != web1 || st.Status != "running" {
		t.Fatalf("state after the pull ahead: %+v", st)
	}

	e.apply(target(2, svc("web", web2, "")))
	if c := e.containers()["web"]; c.Status != "running" || c.ImageID != v2ID || c.ID == before.ID {
		t.Fatalf("web after the switch: %+v", c)
	}
}
