package agentengine_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/fleetshift/fleetshift/agent/runtime/compose"
	"github.com/fleetshift/fleetshift/agent/wire"
	"github.com/fleetshift/fleetshift/realtest/internal/dockerenv"
)

// env is one test's device: a registry container, the compose runtime over a fresh state directory and
// a compose project prefix of its own. Its containers, networks and pulled tags are removed at the end.
type env struct {
	t        *testing.T
	reg      *dockerenv.Registry
	rt       *compose.Runtime
	stateDir string
	prefix   string
	argv     []string
	deferred chan string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	reg := dockerenv.StartRegistry(t)
	argv, err := compose.DetectCommand(context.Background(), "docker")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, reg: reg, stateDir: t.TempDir(), prefix: fmt.Sprintf("fsrt%06d-", rand.IntN(1_000_000)), argv: argv,
		deferred: make(chan string, 8)}
	e.rt = e.newRuntime()
	t.Cleanup(e.cleanup)
	return e
}

// newRuntime starts a compose runtime over the env's state directory (a restarted agent is a new one).
func (e *env) newRuntime() *compose.Runtime {
	e.t.Helper()
	rt, err := compose.New(compose.Config{StateDir: e.stateDir, Compose: e.argv, ProjectPrefix: e.prefix,
		LockTimeout: 10 * time.Minute, LockPoll: 50 * time.Millisecond,
		OnDefer: func(app string) { e.deferred <- app },
		Log:     zerolog.New(zerolog.NewTestWriter(e.t)).Level(zerolog.InfoLevel)})
	if err != nil {
		e.t.Fatal(err)
	}
	return rt
}

func (e *env) project() string { return e.prefix + "1" }

func (e *env) cleanup() {
	ctx := context.Background()
	label := "label=com.docker.compose.project=" + e.project()
	if ids, _ := dockerenv.DockerErr(ctx, "ps", "-aq", "--filter", label); ids != "" {
		_, _ = dockerenv.DockerErr(ctx, append([]string{"rm", "-f", "-v"}, strings.Fields(ids)...)...)
	}
	if ids, _ := dockerenv.DockerErr(ctx, "network", "ls", "-q", "--filter", label); ids != "" {
		_, _ = dockerenv.DockerErr(ctx, append([]string{"network", "rm"}, strings.Fields(ids)...)...)
	}
	if refs, _ := dockerenv.DockerErr(ctx, "image", "ls", "--format", "{{.Repository}}:{{.Tag}}", e.reg.Host+"/*/*"); refs != "" {
		_, _ = dockerenv.DockerErr(ctx, append([]string{"image", "rm"}, strings.Fields(refs)...)...)
	}
}

// push pushes a local image to the env's registry as repoTag and returns the reference.
func (e *env) push(local, repoTag string) string {
	e.t.Helper()
	ref, _ := e.reg.Push(e.t, local, repoTag)
	return ref
}

// apply applies target and fails the test on an error.
func (e *env) apply(target wire.DeviceTarget) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := e.rt.Apply(ctx, target); err != nil {
		e.t.Fatalf("apply target %d: %v", target.Version, err)
	}
}

// container is one container of the env's project as docker inspect sees it.
type container struct {
	ID, Name, ImageID, ImageRef, Status, Health, IP string
}

// containers returns the project's containers by service name (all states).
func (e *env) containers() map[string]container {
	e.t.Helper()
	out := map[string]container{}
	ids := dockerenv.Docker(e.t, "ps", "-aq", "--no-trunc", "--filter", "label=com.docker.compose.project="+e.project())
	if ids == "" {
		return out
	}
	format := `{{index .Config.Labels "com.docker.compose.service"}}|{{.Id}}|{{.Name}}|{{.Image}}|{{.Config.Image}}|{{.State.Status}}|` +
		`{{if .State.Health}}{{.State.Health.Status}}{{end}}|{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}`
	lines := dockerenv.Docker(e.t, append([]string{"inspect", "--format", format}, strings.Fields(ids)...)...)
	for line := range strings.SplitSeq(lines, "\n") {
		f := strings.Split(line, "|")
		if len(f) != 8 {
			e.t.Fatalf("docker inspect line %q", line)
		}
		if _, dup := out[f[0]]; dup {
			e.t.Fatalf("two containers for service %s in project %s", f[0], e.project())
		}
		out[f[0]] = container{ID: f[1], Name: strings.TrimPrefix(f[2], "/"), ImageID: f[3], ImageRef: f[4], Status: f[5], Health: f[6], IP: f[7]}
	}
	return out
}

// eventually polls f until it returns nil or timeout passes.
func eventually(t *testing.T, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %v", timeout, err)
		}
		<-tick.C
	}
}

// waitHealth waits until the service's container reports the Docker health want.
func (e *env) waitHealth(service, want string) container {
	e.t.Helper()
	var c container
	eventually(e.t, 5*time.Minute, func() error {
		var ok bool
		c, ok = e.containers()[service]
		if !ok {
			return fmt.Errorf("no container for %s", service)
		}
		if c.Health != want {
			return fmt.Errorf("%s is %s/%s, want health %s", service, c.Status, c.Health, want)
		}
		return nil
	})
	return c
}

// svc is a target service running image; strategy "" is the default (download-then-kill).
func svc(name, image, strategy string) wire.Service {
	return wire.Service{ServiceName: name, ImageName: image, UpdateStrategy: strategy, Config: map[string]any{"image": image}}
}

// target is a device target of version holding app "1" with services (no services: no app).
func target(version int64, services ...wire.Service) wire.DeviceTarget {
	t := wire.DeviceTarget{Version: version, Apps: map[string]wire.App{}}
	if len(services) > 0 {
		t.Apps["1"] = wire.App{AppID: json.RawMessage("1"), AppName: "demo", Services: services}
	}
	return t
}

// state returns the runtime's report of app "1" by service.
func (e *env) state() map[string]wire.ReportedService {
	e.t.Helper()
	apps, err := e.rt.State(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]wire.ReportedService{}
	for _, s := range apps["1"].Services {
		out[s.ServiceName] = s
	}
	return out
}
