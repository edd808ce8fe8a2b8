package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetshift/fleetshift/agent/internal/fleettest"
)

func execute(t *testing.T, args ...string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	cmd := rootCmd()
	cmd.SetArgs(args)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("fleetshift-agent %s: %v", strings.Join(args, " "), err)
		}
	}
	t.Cleanup(stop)
}

// TestRunFollowsTargetWithCompose drives `run` end to end: registration with the provisioning key, an
// HTTP-polled target, the compose runtime (fake docker) and the report.
func TestRunFollowsTargetWithCompose(t *testing.T) {
	t.Parallel()
	srv := fleettest.New(t, fleettest.Options{NoNATS: true})
	dir := t.TempDir()
	docker := filepath.Join(dir, "docker")
	script := "#!/bin/sh\necho \"$*\" >> " + dir + "/log\ncase \" $* \" in *\" ps \"*) echo '[{\"Service\":\"s0\",\"Image\":\"acme/app:1.0\",\"State\":\"running\"}]';; esac\n"
	if err := os.WriteFile(docker, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	execute(t, "run", "--server", srv.HTTP.URL, "--provisioning-key", fleettest.ProvisioningKey, "--name", "edge-1",
		"--state-dir", state, "--docker", docker, "--transport", "http", "--poll-interval", "20ms", "--log-level", "error")
	var uuid string
	fleettest.Eventually(t, 10*time.Second, func() error {
		b, err := os.ReadFile(filepath.Join(state, "identity.json"))
		if err != nil {
			return err
		}
		_, rest, _ := strings.Cut(string(b), `"uuid": "`)
		uuid, _, _ = strings.Cut(rest, `"`)
		return nil
	})
	srv.SetTarget(uuid, fleettest.Images("acme/app:1.0"))
	fleettest.Eventually(t, 10*time.Second, func() error {
		r, ok := srv.LastReport(uuid)
		if !ok || r.Report.Version != 1 {
			return errors.New("no report of version 1")
		}
		if s := r.Report.Apps["1"].Services; len(s) != 1 || s[0].ImageName != "acme/app:1.0" || s[0].Status != "running" {
			return fmt.Errorf("report %+v", r.Report)
		}
		return nil
	})
	log, _ := os.ReadFile(filepath.Join(dir, "log"))
	if !strings.Contains(string(log), "compose -p fs-1 -f "+filepath.Join(state, "apps", "1", "docker-compose.json")+" pull s0") {
		t.Fatalf("docker calls:\n%s", log)
	}
}

func TestSimCommand(t *testing.T) {
	t.Parallel()
	srv := fleettest.New(t, fleettest.Options{NoNATS: true})
	execute(t, "sim", "--server", srv.HTTP.URL, "--provisioning-key", fleettest.ProvisioningKey, "--devices", "4",
		"--transport", "http", "--image", "acme/app:1.0", "--image", "acme/side:2", "--admin-token", fleettest.AdminToken,
		"--pull-time", "1ms-5ms", "--poll-interval", "20ms", "--fail-rate", "acme/x:*=1", "--seed", "3", "--summary-every", "1h")
	fleettest.Eventually(t, 10*time.Second, func() error {
		if n := srv.Registrations.Load(); n != 4 {
			return fmt.Errorf("%d registrations", n)
		}
		return nil
	})
}

// TestRunWithoutComposeSaysSoBeforeRegistering: with neither `docker compose` nor docker-compose on
// PATH, `run` stops with one line naming both, and never registers the device.
func TestRunWithoutComposeSaysSoBeforeRegistering(t *testing.T) {
	srv := fleettest.New(t, fleettest.Options{NoNATS: true})
	t.Setenv("PATH", t.TempDir()) // neither docker nor docker-compose
	cmd := rootCmd()
	cmd.SetArgs([]string{"run", "--server", srv.HTTP.URL, "--provisioning-key", fleettest.ProvisioningKey,
		"--state-dir", t.TempDir(), "--transport", "http", "--log-level", "error"})
	err := cmd.ExecuteContext(context.Background())
	if err == nil {
		t.Fatal("run without Docker Compose succeeded")
	}
	msg := err.Error()
	if strings.Contains(msg, "\n") || !strings.Contains(msg, "docker compose") || !strings.Contains(msg, "docker-compose") {
		t.Fatalf("error is not one line naming both commands: %q", msg)
	}
	if n := srv.Registrations.Load(); n != 0 {
		t.Fatalf("%d registrations before the compose check", n)
	}
}
