// Package testbin holds what the end-to-end tests on real parts share: building the fleetshift binaries,
// running commands with their output, free ports and polling with a deadline.
package testbin

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetshift/fleetshift/realtest/internal/dockerenv"
)

// RepoRoot is the repository root (dockerenv.RepoRoot), failing the test when there is none.
func RepoRoot(t testing.TB) string {
	t.Helper()
	root, err := dockerenv.RepoRoot()
	if err != nil {
		t.Fatalf("testbin: %v", err)
	}
	return root
}

// Build builds fleetshift and fleetshift-agent into a temporary directory and returns it.
func Build(t testing.TB) string {
	t.Helper()
	root := RepoRoot(t)
	bin := t.TempDir()
	for _, b := range []struct{ mod, pkg string }{{"fleetshift", "./cmd/fleetshift"}, {"agent", "./cmd/fleetshift-agent"}} {
		if out, err := Run(filepath.Join(root, b.mod), nil, "go", "build", "-o", filepath.Join(bin, filepath.Base(b.pkg)), b.pkg); err != nil {
			t.Fatalf("testbin: %v\n%s", err, out)
		}
	}
	return bin
}

// Run runs a command (at most 4 minutes) in dir with env (nil: this process's) and returns its combined
// output; the error names the command.
func Run(dir string, env []string, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir, cmd.Env = dir, env
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return string(out), nil
}

// FreePort returns a TCP port free on all interfaces at the time of the call.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatalf("testbin: free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Poll calls check every 500 ms until it returns nil; after timeout it fails the test with the last error.
func Poll(t testing.TB, timeout time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// Buffer is a bytes.Buffer safe for a process's stdout and stderr at once.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// Tail returns the last n bytes written.
func (b *Buffer) Tail(n int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.buf.String()
	if len(s) > n {
		s = s[len(s)-n:]
	}
	return s
}
