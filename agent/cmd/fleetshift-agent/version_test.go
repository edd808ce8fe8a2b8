package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestVersionFlag: --version prints the version set with -ldflags; without it, a default from the build
// info (never empty).
func TestVersionFlag(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "fleetshift-agent")
	build := exec.Command("go", "build", "-ldflags", "-X main.version=v9.8.7-test", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil {
		t.Fatalf("fleetshift-agent --version: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != "fleetshift-agent version v9.8.7-test" {
		t.Fatalf("--version printed %q", got)
	}
	if v := buildVersion(""); v == "" || strings.Contains(v, "(devel)") {
		t.Fatalf("default version %q", v)
	}
	if v := buildVersion("v1.2.3"); v != "v1.2.3" {
		t.Fatalf("buildVersion(v1.2.3) = %q", v)
	}
}
