// Package compose is the Docker Compose runtime of a real device: each target app becomes a compose
// project whose file lives in the agent's state directory, updated with `docker compose pull` and
// `docker compose up -d --remove-orphans` and read back with `docker compose ps --format json`.
//
// Layout under the state directory:
//
//	apps/<app>/docker-compose.json           the project as last applied (JSON is valid compose YAML)
//	apps/<app>/docker-compose.previous.json  the one before it (its images are kept: a rollback re-applies it)
//	apps/<app>/app.json                      the target app last applied
//	locks/<app>/updates.lock                 held by the application to defer updates (see Config.LockTimeout)
//
// Update strategies per service: download-then-kill (default: pull while the old container runs, then
// up) and kill-then-download (stop the service, pull, up). A failed pull leaves the old containers
// running (a stopped kill-then-download service is started again on its old image) and the error is
// reported on the services concerned.
package compose

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/fleetshift/fleetshift/agent/wire"
)

// Config configures the runtime.
type Config struct {
	// StateDir holds compose files and lock files (required).
	StateDir string
	// Docker is the docker executable (default "docker", found on PATH).
	Docker string
	// Compose is the command that runs Docker Compose, with any leading arguments (default: Docker
	// "compose", the v2 plugin). A command whose name is docker-compose is Compose v1: its files carry no
	// top-level "name" and the state is read with `docker ps` (v1 has no `ps --format json`).
	Compose []string
	// ProjectPrefix starts every compose project name (default "fs-"); devices sharing one Docker
	// engine each need their own.
	ProjectPrefix string
	// LockTimeout is the longest an update waits for a held update lock before going ahead (default 10m).
	LockTimeout time.Duration
	// LockStale: a lock file not modified for this long is not held (default 1h; negative: never stale).
	LockStale time.Duration
	// LockPoll is how often a held lock is checked again (default 1s).
	LockPoll time.Duration
	// OnDefer, when set, is called when an update of appID starts waiting for its held lock.
	OnDefer func(appID string)
	Log     zerolog.Logger
}

// Runtime is the Docker Compose runtime. It is safe for concurrent use; applies are serialised.
type Runtime struct {
	cfg  Config
	mu   sync.Mutex // serialises Apply; guards apps and errs
	apps map[string]wire.App
	errs map[string]map[string]string // app -> service -> last update error
}

// New returns a runtime over cfg.StateDir, picking up the apps applied by an earlier run.
func New(cfg Config) (*Runtime, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("compose runtime: StateDir is required")
	}
	cfg.Docker = cmp.Or(cfg.Docker, "docker")
	if len(cfg.Compose) == 0 {
		cfg.Compose = []string{cfg.Docker, "compose"}
	}
	cfg.ProjectPrefix = cmp.Or(cfg.ProjectPrefix, "fs-")
	cfg.LockTimeout = cmp.Or(cfg.LockTimeout, 10*time.Minute)
	cfg.LockStale = cmp.Or(cfg.LockStale, time.Hour)
	cfg.LockPoll = cmp.Or(cfg.LockPoll, time.Second)
	r := &Runtime{cfg: cfg, apps: map[string]wire.App{}, errs: map[string]map[string]string{}}
	entries, err := os.ReadDir(filepath.Join(cfg.StateDir, "apps"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("compose runtime: read apps: %w", err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(cfg.StateDir, "apps", e.Name(), "app.json"))
		if err != nil {
			continue
		}
		var app wire.App
		if err := json.Unmarshal(b, &app); err == nil {
			r.apps[e.Name()] = app
		}
	}
	return r, nil
}

var unsafeChars = regexp.MustCompile(`[^a-z0-9_-]+`)

func safeName(appID string) string {
	s := unsafeChars.ReplaceAllString(strings.ToLower(appID), "_")
	if s == "" {
		s = "app"
	}
	return s
}

// Project returns the compose project name of an app with the default prefix.
func Project(appID string) string { return "fs-" + safeName(appID) }

func (r *Runtime) project(appID string) string {
	return strings.ToLower(r.cfg.ProjectPrefix) + safeName(appID)
}

// legacy reports whether Compose is v1 (docker-compose), which knows neither a top-level "name" nor
// `ps --format json`.
func (r *Runtime) legacy() bool {
	return filepath.Base(r.cfg.Compose[0]) == "docker-compose"
}

func (r *Runtime) appDir(appID string) string {
	return filepath.Join(r.cfg.StateDir, "apps", safeName(appID))
}

func (r *Runtime) composeFile(appID string) string {
	return filepath.Join(r.appDir(appID), "docker-compose.json")
}

// LockPath returns the update lock file of an app: while it exists (and is fresh) updates wait.
func (r *Runtime) LockPath(appID string) string {
	return filepath.Join(r.cfg.StateDir, "locks", safeName(appID), "updates.lock")
}

// Apply implements runtime.Runtime.
func (r *Runtime) Apply(ctx context.Context, t wire.DeviceTarget) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	for _, id := range slices.Sorted(maps.Keys(r.apps)) {
		if _, keep := t.Apps[id]; keep {
			continue
		}
		if err := r.removeApp(ctx, id); err != nil {
			errs = append(errs, err)
		}
	}
	for _, id := range slices.Sorted(maps.Keys(t.Apps)) {
		if err := r.applyApp(ctx, id, t.Apps[id]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Pull implements runtime.Puller: `docker pull image`, beside whatever runs (no container is created,
// stopped or changed, and applies are not held up). A later Apply naming the image finds it locally.
func (r *Runtime) Pull(ctx context.Context, image string) error {
	if image == "" || strings.HasPrefix(image, "-") {
		return fmt.Errorf("pull %q: not an image reference", image)
	}
	args := []string{"pull", "--quiet", image}
	if _, err := r.run(ctx, r.cfg.Docker, args, args[:1]); err != nil {
		return fmt.Errorf("pull %s ahead: %w", image, err)
	}
	return nil
}

func (r *Runtime) removeApp(ctx context.Context, id string) error {
	if _, err := r.compose(ctx, id, "down", "--remove-orphans"); err != nil {
		return fmt.Errorf("remove app %s: %w", id, err)
	}
	if err := os.RemoveAll(r.appDir(id)); err != nil {
		return fmt.Errorf("remove app %s: %w", id, err)
	}
	delete(r.apps, id)
	delete(r.errs, id)
	return nil
}

func (r *Runtime) applyApp(ctx context.Context, id string, app wire.App) error {
	doc, err := composeDoc(r.project(id), id, app, !r.legacy())
	if err != nil {
		return fmt.Errorf("apply app %s: %w", id, err)
	}
	file := r.composeFile(id)
	oldDoc, _ := os.ReadFile(file)
	prev, hadPrev := r.apps[id]
	prevImages := map[string]string{}
	for _, s := range prev.Services {
		prevImages[s.ServiceName] = s.Image()
	}
	var changed, killFirst []string
	for _, s := range app.Services {
		old, ok := prevImages[s.ServiceName]
		if ok && old == s.Image() {
			continue
		}
		changed = append(changed, s.ServiceName)
		if ok && s.Strategy() == wire.KillThenDownload {
			killFirst = append(killFirst, s.ServiceName)
		}
	}
	if hadPrev && len(changed) == 0 && bytes.Equal(oldDoc, doc) && len(r.errs[id]) == 0 {
		return nil // nothing to do
	}
	if len(changed) > 0 {
		if err := r.waitLock(ctx, id); err != nil {
			return fmt.Errorf("apply app %s: %w", id, err)
		}
	}
	if err := os.MkdirAll(r.appDir(id), 0o755); err != nil {
		return fmt.Errorf("apply app %s: %w", id, err)
	}
	kept := r.loadKept(id)
	running := map[string]string{} // service -> image ID it runs before this update
	if len(changed) > 0 && hadPrev {
		running = r.serviceImageIDs(ctx, id)
	}
	if len(killFirst) > 0 && len(oldDoc) > 0 {
		if _, err := r.compose(ctx, id, append([]string{"stop"}, killFirst...)...); err != nil {
			return r.fail(id, changed, fmt.Errorf("apply app %s: stop %v: %w", id, killFirst, err))
		}
	}
	if err := writeFile(file, doc); err != nil {
		return fmt.Errorf("apply app %s: %w", id, err)
	}
	// A service going back to the image it ran before gets that exact image again (kept locally, by
	// image ID), even when its tag has moved in the registry since or the registry is unreachable.
	toPull := changed
	if len(changed) > 0 && hadPrev {
		toPull = nil
		for _, s := range app.Services {
			if !slices.Contains(changed, s.ServiceName) {
				continue
			}
			if k, ok := kept[s.ServiceName]; ok && k.Ref == s.Image() && r.restoreImage(ctx, id, s.ServiceName, k) {
				continue
			}
			toPull = append(toPull, s.ServiceName)
		}
	}
	if len(toPull) > 0 {
		if _, err := r.compose(ctx, id, append([]string{"pull"}, toPull...)...); err != nil {
			pullErr := fmt.Errorf("apply app %s: pull %v: %w", id, toPull, err)
			if len(oldDoc) > 0 {
				if werr := writeFile(file, oldDoc); werr != nil {
					pullErr = errors.Join(pullErr, werr)
				}
				if len(killFirst) > 0 {
					if _, uerr := r.compose(ctx, id, "up", "-d", "--remove-orphans"); uerr != nil {
						pullErr = errors.Join(pullErr, fmt.Errorf("restart old services: %w", uerr))
					}
				}
			}
			return r.fail(id, changed, pullErr)
		}
	}
	if _, err := r.compose(ctx, id, "up", "-d", "--remove-orphans"); err != nil {
		return r.fail(id, changed, fmt.Errorf("apply app %s: up: %w", id, err))
	}
	if len(oldDoc) > 0 && !bytes.Equal(oldDoc, doc) {
		_ = writeFile(filepath.Join(r.appDir(id), "docker-compose.previous.json"), oldDoc)
	}
	b, err := json.Marshal(app)
	if err != nil {
		return fmt.Errorf("apply app %s: %w", id, err)
	}
	if err := writeFile(filepath.Join(r.appDir(id), "app.json"), b); err != nil {
		return fmt.Errorf("apply app %s: %w", id, err)
	}
	r.apps[id] = app
	delete(r.errs, id)
	// Keep what each updated service ran before, for a rollback to it.
	for _, name := range changed {
		if imageID := running[name]; imageID != "" && prevImages[name] != "" {
			kept[name] = keptImage{Ref: prevImages[name], ID: imageID}
		}
	}
	if err := r.saveKept(id, kept); err != nil {
		r.cfg.Log.Warn().Err(err).Str("app", id).Msg("keep previous images")
	}
	return nil
}

// keptImage is the image a service ran before its last update: its reference then and its image ID.
type keptImage struct {
	Ref string `json:"ref"`
	ID  string `json:"id"`
}

func (r *Runtime) keptFile(appID string) string {
	return filepath.Join(r.appDir(appID), "previous-images.json")
}

func (r *Runtime) loadKept(appID string) map[string]keptImage {
	kept := map[string]keptImage{}
	if b, err := os.ReadFile(r.keptFile(appID)); err == nil {
		_ = json.Unmarshal(b, &kept)
	}
	return kept
}

func (r *Runtime) saveKept(appID string, kept map[string]keptImage) error {
	b, err := json.Marshal(kept)
	if err != nil {
		return fmt.Errorf("encode previous images: %w", err)
	}
	return writeFile(r.keptFile(appID), b)
}

// restoreImage points k.Ref at the kept image k.ID again (docker tag) and says whether it could.
func (r *Runtime) restoreImage(ctx context.Context, appID, service string, k keptImage) bool {
	args := []string{"tag", k.ID, k.Ref}
	if _, err := r.run(ctx, r.cfg.Docker, args, args); err != nil {
		r.cfg.Log.Info().Err(err).Str("app", appID).Str("service", service).Msg("previous image not kept; pulling it")
		return false
	}
	r.cfg.Log.Info().Str("app", appID).Str("service", service).Str("image", k.Ref).Str("id", k.ID).
		Msg("back to the previous image: using the kept image")
	return true
}

// serviceImageIDs returns the image ID each of an app's service containers runs (by the compose labels,
// which v1 and v2 both set); a failure leaves the map empty (nothing is kept then).
func (r *Runtime) serviceImageIDs(ctx context.Context, appID string) map[string]string {
	ids := map[string]string{}
	args := []string{"ps", "--all", "--quiet", "--no-trunc", "--filter", "label=com.docker.compose.project=" + r.project(appID)}
	out, err := r.run(ctx, r.cfg.Docker, args, args[:1])
	if err != nil || len(bytes.TrimSpace(out)) == 0 {
		return ids
	}
	args = append([]string{"inspect", "--format", `{{index .Config.Labels "com.docker.compose.service"}} {{.Image}}`},
		strings.Fields(string(out))...)
	out, err = r.run(ctx, r.cfg.Docker, args, args[:1])
	if err != nil {
		return ids
	}
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		if service, imageID, ok := strings.Cut(strings.TrimSpace(line), " "); ok {
			ids[service] = imageID
		}
	}
	return ids
}

// fail records err on services and returns it. An app that never ran is remembered so that State
// reports its services with the error.
func (r *Runtime) fail(id string, services []string, err error) error {
	m := r.errs[id]
	if m == nil {
		m = map[string]string{}
		r.errs[id] = m
	}
	for _, s := range services {
		m[s] = err.Error()
	}
	r.cfg.Log.Warn().Err(err).Str("app", id).Msg("update failed; old containers left running")
	return err
}

// waitLock returns once the app's update lock is not held, or LockTimeout has passed.
func (r *Runtime) waitLock(ctx context.Context, id string) error {
	path := r.LockPath(id)
	if !r.lockHeld(path) {
		return nil
	}
	r.cfg.Log.Info().Str("app", id).Str("lock", path).Msg("update lock held; deferring update")
	if r.cfg.OnDefer != nil {
		r.cfg.OnDefer(id)
	}
	deadline := time.NewTimer(r.cfg.LockTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(r.cfg.LockPoll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for update lock %s: %w", path, ctx.Err())
		case <-deadline.C:
			r.cfg.Log.Warn().Str("app", id).Str("lock", path).Msg("update lock timed out; updating anyway")
			return nil
		case <-tick.C:
			if !r.lockHeld(path) {
				return nil
			}
		}
	}
}

func (r *Runtime) lockHeld(path string) bool {
	fi, err := os.Stat(path)
	if err != nil {
		return false
	}
	return r.cfg.LockStale < 0 || time.Since(fi.ModTime()) < r.cfg.LockStale
}

func (r *Runtime) compose(ctx context.Context, appID string, args ...string) ([]byte, error) {
	full := append(slices.Clone(r.cfg.Compose[1:]), "-p", r.project(appID), "-f", r.composeFile(appID))
	full = append(full, args...)
	return r.run(ctx, r.cfg.Compose[0], full, args)
}

// run runs name with args; what names the command in an error.
func (r *Runtime) run(ctx context.Context, name string, full, what []string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, full...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 300 {
			msg = msg[len(msg)-300:]
		}
		return out, fmt.Errorf("docker %s: %w: %s", strings.Join(what, " "), err, msg)
	}
	return out, nil
}

// logTail returns the last lines of a failed service's container log (`logs --tail`), bounded by
// wire.TailLog; "" when they cannot be read (the report goes out without them).
func (r *Runtime) logTail(ctx context.Context, appID, service string) string {
	out, err := r.compose(ctx, appID, "logs", "--no-color", "--tail", strconv.Itoa(wire.LogTailLines), service)
	if err != nil {
		return ""
	}
	// Compose prefixes each line with "<container> | ".
	var b strings.Builder
	for line := range strings.SplitSeq(strings.TrimRight(string(out), "\n"), "\n") {
		if _, rest, ok := strings.Cut(line, " | "); ok {
			line = rest
		}
		b.WriteString(line)
		b.WriteByte('\n')
	}
	return wire.TailLog(b.String())
}

// composeDoc renders an app as a compose project (JSON, which compose reads as YAML); withName adds the
// top-level "name" (Compose v2; v1 refuses it).
func composeDoc(project, appID string, app wire.App, withName bool) ([]byte, error) {
	services := map[string]any{}
	for _, s := range app.Services {
		if s.ServiceName == "" {
			return nil, errors.New("service without serviceName")
		}
		if s.Image() == "" {
			return nil, fmt.Errorf("service %s has no image", s.ServiceName)
		}
		svc := map[string]any{}
		for k, v := range s.Config {
			switch k {
			case "image", "healthCheck", "updateStrategy":
				continue
			}
			svc[k] = v
		}
		svc["image"] = s.Image()
		labels := map[string]any{}
		if l, ok := s.Config["labels"].(map[string]any); ok {
			maps.Copy(labels, l)
		}
		labels["io.fleetshift.app-id"] = appID
		labels["io.fleetshift.service-name"] = s.ServiceName
		if s.Retry > 0 {
			// A retry changes the container's configuration, so compose recreates it.
			labels["io.fleetshift.retry"] = strconv.Itoa(s.Retry)
		}
		svc["labels"] = labels
		if _, ok := svc["restart"]; !ok {
			svc["restart"] = "unless-stopped"
		}
		services[s.ServiceName] = svc
	}
	doc := map[string]any{"services": services}
	if withName {
		doc["name"] = project
	}
	return json.MarshalIndent(doc, "", "  ")
}

func writeFile(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// psEntry is one container of `docker compose ps --format json`.
type psEntry struct {
	Service  string `json:"Service"`
	Image    string `json:"Image"`
	State    string `json:"State"`
	Health   string `json:"Health"`
	ExitCode int    `json:"ExitCode"`
}

// parsePS reads `docker compose ps --format json`: a JSON array (compose < 2.21) or one object per line.
func parsePS(out []byte) ([]psEntry, error) {
	out = bytes.TrimSpace(out)
	if len(out) == 0 {
		return nil, nil
	}
	if out[0] == '[' {
		var list []psEntry
		if err := json.Unmarshal(out, &list); err != nil {
			return nil, fmt.Errorf("decode compose ps: %w", err)
		}
		return list, nil
	}
	var list []psEntry
	for line := range bytes.SplitSeq(out, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		var e psEntry
		if err := json.Unmarshal(line, &e); err != nil {
			return nil, fmt.Errorf("decode compose ps line: %w", err)
		}
		list = append(list, e)
	}
	return list, nil
}

// ps lists an app's containers: `compose ps --format json` on v2, `docker ps` by project label on v1.
func (r *Runtime) ps(ctx context.Context, id string) ([]psEntry, error) {
	if !r.legacy() {
		raw, err := r.compose(ctx, id, "ps", "--all", "--format", "json")
		if err != nil {
			return nil, err
		}
		return parsePS(raw)
	}
	args := []string{"ps", "--all", "--no-trunc", "--filter", "label=com.docker.compose.project=" + r.project(id),
		"--format", `{{.Label "com.docker.compose.service"}}` + "\t{{.Image}}\t{{.State}}\t{{.Status}}"}
	raw, err := r.run(ctx, r.cfg.Docker, args, args[:2])
	if err != nil {
		return nil, err
	}
	return parseDockerPS(raw), nil
}

// parseDockerPS reads lines of service, image, state and status (`Up 3 seconds (healthy)`,
// `Exited (1) 2 seconds ago`) as printed by ps.
func parseDockerPS(out []byte) []psEntry {
	var list []psEntry
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		f := strings.Split(strings.TrimSpace(line), "\t")
		if len(f) < 4 {
			continue
		}
		e := psEntry{Service: f[0], Image: f[1], State: f[2]}
		switch status := f[3]; {
		case strings.Contains(status, "(healthy)"):
			e.Health = "healthy"
		case strings.Contains(status, "(unhealthy)"):
			e.Health = "unhealthy"
		case strings.Contains(status, "(health: starting)"):
			e.Health = "starting"
		}
		if m := exitCode.FindStringSubmatch(f[3]); m != nil {
			fmt.Sscan(m[1], &e.ExitCode)
		}
		list = append(list, e)
	}
	return list
}

var exitCode = regexp.MustCompile(`^Exited \((\d+)\)`)

// State implements runtime.Runtime.
func (r *Runtime) State(ctx context.Context) (map[string]wire.ReportedApp, error) {
	r.mu.Lock()
	apps := maps.Clone(r.apps)
	errs := map[string]map[string]string{}
	for k, v := range r.errs {
		errs[k] = maps.Clone(v)
	}
	r.mu.Unlock()
	out := map[string]wire.ReportedApp{}
	for id, app := range apps {
		entries, err := r.ps(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("read state of app %s: %w", id, err)
		}
		byService := map[string]psEntry{}
		for _, e := range entries {
			byService[e.Service] = e
		}
		ra := wire.ReportedApp{AppID: app.AppID, AppName: app.AppName}
		for _, s := range app.Services {
			rs := wire.ReportedService{ServiceName: s.ServiceName, ImageName: s.Image(), Status: "missing",
				Error: errs[id][s.ServiceName]}
			if e, ok := byService[s.ServiceName]; ok {
				rs.ImageName = cmp.Or(e.Image, rs.ImageName)
				rs.Status = e.State
				if e.Health != "" {
					rs.Health = &wire.Health{Status: e.Health}
				}
				if e.State == "exited" || e.State == "dead" || e.Health == "unhealthy" {
					rs.LogTail = r.logTail(ctx, id, s.ServiceName)
					if rs.Error == "" && e.ExitCode != 0 {
						rs.Error = fmt.Sprintf("container exited with code %d", e.ExitCode)
					}
				}
			}
			ra.Services = append(ra.Services, rs)
		}
		out[id] = ra
	}
	// Apps whose first apply failed have no containers yet: report them with their errors.
	for id, m := range errs {
		if _, ok := out[id]; ok {
			continue
		}
		ra := wire.ReportedApp{}
		for _, s := range slices.Sorted(maps.Keys(m)) {
			ra.Services = append(ra.Services, wire.ReportedService{ServiceName: s, Status: "missing", Error: m[s]})
		}
		out[id] = ra
	}
	return out, nil
}
