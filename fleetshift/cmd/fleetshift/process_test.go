package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fleetshift/fleetshift/shared/wait"
)

// bin is the fleetshift binary built once for the tests that run it as a subprocess.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "fleetshift-cmd-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "fleetshift")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build fleetshift: %v\n%s", err, out)
		_ = os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// processEnv is a clean environment for the binary: nothing of the caller's fleetshift, database or NATS
// settings, a data dir of the test's own, free ports, and extra on top (an empty value unsets).
func processEnv(t *testing.T, extra map[string]string) []string {
	t.Helper()
	vars := map[string]string{
		"PATH":                 os.Getenv("PATH"),
		"HOME":                 os.Getenv("HOME"),
		"FLEETSHIFT_DATA_DIR":  t.TempDir(),
		"FLEETSHIFT_HTTP_ADDR": "127.0.0.1:0",
		"FLEETSHIFT_NATS_ADDR": "127.0.0.1:0",
		"FLEETSHIFT_LOG_LEVEL": "info",
	}
	for k, v := range extra {
		vars[k] = v
	}
	var env []string
	for k, v := range vars {
		if v != "" {
			env = append(env, k+"="+v)
		}
	}
	return env
}

type result struct {
	stdout, stderr string
	code           int
}

// run runs the binary to its end (a start-up failure ends it quickly).
func run(t *testing.T, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	require.NoError(t, ctx.Err(), "fleetshift %v did not end: stdout %q stderr %q", args, stdout.String(), stderr.String())
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else {
		require.NoError(t, err)
	}
	return result{stdout: stdout.String(), stderr: stderr.String(), code: code}
}

// requireOneLineFailure checks a start-up failure: a non-zero exit and exactly one human line on stderr
// (no panic, no stack, no JSON log) containing each of want.
func requireOneLineFailure(t *testing.T, r result, want ...string) {
	t.Helper()
	require.NotZero(t, r.code, "exit code; stderr %q", r.stderr)
	var lines []string
	for _, l := range strings.Split(r.stderr, "\n") {
		if strings.TrimSpace(l) != "" {
			lines = append(lines, l)
		}
	}
	require.Len(t, lines, 1, "stderr must be one line, got %q", r.stderr)
	line := lines[0]
	require.True(t, strings.HasPrefix(line, "fleetshift: "), "line %q", line)
	all := r.stdout + r.stderr
	for _, bad := range []string{"panic", "goroutine", `"level"`} {
		require.NotContains(t, all, bad)
	}
	for _, w := range want {
		require.Contains(t, line, w)
	}
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return addr
}

// busyAddr is a loopback address the test listens on until it ends.
func busyAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = l.Close() })
	return l.Addr().String()
}

// started is a fleetshift process that reached "fleetshift is up".
type started struct {
	cmd     *exec.Cmd
	httpURL string
	banner  string
	stderr  *bytes.Buffer
	exited  chan struct{}
	waitErr error
}

// start runs the binary and waits for its banner; the process is killed when the test ends if still running.
func start(t *testing.T, env []string, args ...string) *started {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	p := &started{cmd: cmd, stderr: &bytes.Buffer{}, exited: make(chan struct{})}
	cmd.Stderr = p.stderr
	require.NoError(t, cmd.Start())
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		for range lines { // let the reader finish
		}
		<-p.exited
	})
	var banner strings.Builder
	deadline := time.After(2 * time.Minute)
	for p.httpURL == "" || !strings.Contains(banner.String(), "database") {
		select {
		case l, ok := <-lines:
			require.True(t, ok, "fleetshift %v ended before it was up: stdout %q stderr %q", args, banner.String(), p.stderr.String())
			banner.WriteString(l + "\n")
			if f := strings.Fields(l); len(f) == 3 && f[0] == "HTTP" && f[1] == "API" {
				p.httpURL = f[2]
			}
		case <-deadline:
			t.Fatalf("fleetshift %v not up within 2m: stdout %q stderr %q", args, banner.String(), p.stderr.String())
		}
	}
	p.banner = banner.String()
	go func() {
		for range lines { // keep draining so the process never blocks on stdout
		}
	}()
	return p
}

// stop sends SIGTERM and waits for a clean exit.
func (p *started) stop(t *testing.T) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-p.exited:
	case <-time.After(2 * time.Minute):
		t.Fatalf("fleetshift did not stop within 2m of SIGTERM; stderr %q", p.stderr.String())
	}
	require.NoError(t, p.waitErr, "exit after SIGTERM; stderr %q", p.stderr.String())
}

// get returns the status and body of GET url.
func get(t *testing.T, url string, header ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	require.NoError(t, err)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// eventually polls f until it is true or the deadline passes (wait.For with a message).
func eventually(t *testing.T, within time.Duration, f func() bool, msg string) {
	t.Helper()
	wait.For(t, within, func() error {
		if f() {
			return nil
		}
		return errors.New(msg)
	})
}
