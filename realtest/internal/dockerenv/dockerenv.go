// Package dockerenv is what the Docker-backed tests share: an engine check, the images built once per
// test binary (make images), the docker CLI with readable errors, and a Distribution registry container
// started with testcontainers-go on a free host port.
//
// Without an engine the tests skip, unless FLEETSHIFT_REQUIRE_DOCKER=1 (set by make test-docker and by
// make test when `docker info` answers), where they fail with one line. testcontainers-go runs without
// its reaper container (TESTCONTAINERS_RYUK_DISABLED=true: no image can be pulled here); every container
// is terminated by t.Cleanup instead.
package dockerenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Image tags built by make images.
const (
	FleetshiftImage = "fleetshift/fleetshift:dev"
	AgentImage      = "fleetshift/agent:dev"
	NATSImage       = "fleetshift/nats-server:dev"
	RegistryImage   = "fleetshift/registry:dev"
	DemoappV1       = "fleetshift/demoapp:v1"
	DemoappV2       = "fleetshift/demoapp:v2"
	DemoappBroken   = "fleetshift/demoapp:broken"
)

// RequireEnv names the variable that turns a missing engine from a skip into a failure.
const RequireEnv = "FLEETSHIFT_REQUIRE_DOCKER"

// PrebuiltEnv, when "1", says make images already ran for this test run (make test-docker sets it).
const PrebuiltEnv = "FLEETSHIFT_IMAGES_PREBUILT"

// Require returns when a Docker engine answers. Otherwise it fails the test with one line when
// FLEETSHIFT_REQUIRE_DOCKER=1, and skips it when not. It also configures testcontainers-go (no reaper).
func Require(t testing.TB) {
	t.Helper()
	if os.Getenv("TESTCONTAINERS_RYUK_DISABLED") == "" {
		os.Setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
	}
	if err := EngineAnswers(); err != nil {
		if os.Getenv(RequireEnv) == "1" {
			t.Fatalf("no Docker engine answers (%v) and %s=1", err, RequireEnv)
		}
		t.Skipf("no Docker engine answers (%v); set %s=1 to fail instead", err, RequireEnv)
	}
}

// EngineAnswers runs `docker info` and says why it failed.
func EngineAnswers() error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput()
	if err != nil {
		return fmt.Errorf("docker info: %w: %s", err, oneLine(out))
	}
	if strings.TrimSpace(string(out)) == "" {
		return errors.New("docker info: no server version")
	}
	return nil
}

// imagesBuilt makes make images run once per test binary; the lock file keeps test binaries running
// at the same time from building at once (the second one then finds everything cached).
var imagesBuilt = sync.OnceValue(buildImages)

// Images makes sure the images exist (Require first): it runs `make images` once per test binary
// unless FLEETSHIFT_IMAGES_PREBUILT=1.
func Images(t testing.TB) {
	t.Helper()
	Require(t)
	if os.Getenv(PrebuiltEnv) == "1" {
		return
	}
	if err := imagesBuilt(); err != nil {
		t.Fatalf("make images: %v", err)
	}
}

func buildImages() error {
	root, err := RepoRoot()
	if err != nil {
		return err
	}
	lock, err := os.OpenFile(filepath.Join(os.TempDir(), "fleetshift-build-images.lock"), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return fmt.Errorf("open build lock: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("take build lock %s: %w", lock.Name(), err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(root, "scripts", "build-images"))
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("scripts/build-images: %w\n%s", err, out)
	}
	return nil
}

// RepoRoot returns the repository root: the nearest directory above the working directory holding go.work.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find repository root: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("find repository root: no go.work above the working directory")
		}
		dir = parent
	}
}

// Docker runs the docker CLI and returns its trimmed stdout; a failure fails the test naming the
// command and its stderr.
func Docker(t testing.TB, args ...string) string {
	t.Helper()
	out, err := DockerErr(context.Background(), args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// DockerErr runs the docker CLI and returns its trimmed stdout, or an error naming the command and its stderr.
func DockerErr(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, oneLine(stderr.Bytes()))
	}
	return strings.TrimSpace(string(out)), nil
}

func oneLine(b []byte) string {
	s := strings.Join(strings.Fields(string(b)), " ")
	if len(s) > 400 {
		s = s[len(s)-400:]
	}
	return s
}
