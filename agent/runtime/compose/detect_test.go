package compose_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/fleetshift/fleetshift/agent/runtime/compose"
)

// writeExe writes an executable shell script named name into dir.
func writeExe(t *testing.T, dir, name, script string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDetectCommandPrefersThePlugin(t *testing.T) {
	dir := t.TempDir()
	docker := writeExe(t, dir, "docker", `[ "$1 $2" = "compose version" ] && exit 0; exit 1`+"\n")
	writeExe(t, dir, "docker-compose", "exit 0\n")
	t.Setenv("PATH", dir)
	got, err := compose.DetectCommand(context.Background(), docker)
	if err != nil || !slices.Equal(got, []string{docker, "compose"}) {
		t.Fatalf("DetectCommand = %q, %v; want [%s compose]", got, err, docker)
	}
}

func TestDetectCommandFallsBackToV1(t *testing.T) {
	dir := t.TempDir()
	docker := writeExe(t, dir, "docker", "echo \"docker: 'compose' is not a docker command.\" >&2; exit 1\n")
	v1 := writeExe(t, dir, "docker-compose", "exit 0\n")
	t.Setenv("PATH", dir)
	got, err := compose.DetectCommand(context.Background(), docker)
	if err != nil || !slices.Equal(got, []string{v1}) {
		t.Fatalf("DetectCommand = %q, %v; want [%s]", got, err, v1)
	}
}

func TestDetectCommandWithNeither(t *testing.T) {
	dir := t.TempDir() // PATH holds neither docker nor docker-compose
	t.Setenv("PATH", dir)
	got, err := compose.DetectCommand(context.Background(), "docker")
	if !errors.Is(err, compose.ErrNoCompose) {
		t.Fatalf("DetectCommand = %q, %v; want ErrNoCompose", got, err)
	}
}
