package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// EnvCPUs names the environment variable that pins a child process to a CPU list ("0" or "0,1"): the
// child calls PinSelf with it first thing.
const EnvCPUs = "FLEETSHIFT_BENCH_CPUS"

// Child is a subprocess of the harness (the server under test, a load generator, the simulator),
// started by re-executing the bench binary with a hidden subcommand.
type Child struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	// Hello is the first line the child printed on stdout (a JSON description of itself).
	Hello []byte
	done  chan struct{}
	err   error
}

// Pid is the child's process id.
func (c *Child) Pid() int { return c.cmd.Process.Pid }

// StartChild re-executes this binary with args and extra environment, waits until it prints its hello
// line (within timeout) and returns it running. The child stops when its stdin closes (Stop).
func StartChild(ctx context.Context, name string, args, env []string, timeout time.Duration) (*Child, error) {
	return StartChildWrapped(ctx, name, nil, args, env, timeout)
}

// StartChildWrapped is StartChild with this binary run through wrapper, a command that execs its
// arguments in place (e.g. `ip netns exec NAME`): the child's pid is still this binary's.
func StartChildWrapped(ctx context.Context, name string, wrapper, args, env []string, timeout time.Duration) (*Child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("start %s: find own executable: %w", name, err)
	}
	cmd := exec.Command(exe, args...)
	if len(wrapper) > 0 {
		cmd = exec.Command(wrapper[0], append(append(wrapper[1:len(wrapper):len(wrapper)], exe), args...)...)
	}
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = &prefixWriter{prefix: name + ": ", w: os.Stderr}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &Child{name: name, cmd: cmd, stdin: stdin, done: make(chan struct{})}
	hello := make(chan []byte, 1)
	go func() {
		r := bufio.NewReader(stdout)
		line, _ := r.ReadBytes('\n')
		hello <- bytes.TrimSpace(line)
		_, _ = io.Copy(io.Discard, r)
	}()
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case c.Hello = <-hello:
		if len(c.Hello) == 0 {
			<-c.done
			return nil, fmt.Errorf("start %s: exited before it was ready: %v", name, c.err)
		}
		return c, nil
	case <-t.C:
	case <-ctx.Done():
	}
	c.Kill()
	return nil, fmt.Errorf("start %s: not ready within %s", name, timeout)
}

// Memory reads the child's current and peak resident set size.
func (c *Child) Memory() (ProcStatus, error) { return ReadProcStatus(c.Pid()) }

// Stop closes the child's stdin (its signal to shut down cleanly) and waits up to timeout before
// killing it.
func (c *Child) Stop(timeout time.Duration) error {
	_ = c.stdin.Close()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-c.done:
		return c.exitErr()
	case <-t.C:
		c.Kill()
		return fmt.Errorf("stop %s: did not exit within %s; killed", c.name, timeout)
	}
}

// Kill ends the child at once.
func (c *Child) Kill() {
	_ = c.cmd.Process.Kill()
	<-c.done
}

// Exited is closed when the child has exited.
func (c *Child) Exited() <-chan struct{} { return c.done }

func (c *Child) exitErr() error {
	if c.err != nil {
		return fmt.Errorf("%s: %w", c.name, c.err)
	}
	return nil
}

// RunChild re-executes this binary with args to completion and returns its stdout.
func RunChild(ctx context.Context, name string, args, env []string) ([]byte, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("run %s: find own executable: %w", name, err)
	}
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = &prefixWriter{prefix: name + ": ", w: os.Stderr}
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("run %s: %w", name, err)
	}
	return out, nil
}

// WaitStdinClosed blocks until the parent closes this process's stdin: how a child learns to stop.
func WaitStdinClosed() { _, _ = io.Copy(io.Discard, os.Stdin) }

// ParseCPUList reads "0", "1,3" or "0-1" into CPU numbers.
func ParseCPUList(s string) ([]int, error) {
	var cpus []int
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil || a < 0 {
			return nil, fmt.Errorf("cpu list %q: %q is not a CPU number", s, lo)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return nil, fmt.Errorf("cpu list %q: bad range %q", s, part)
			}
		}
		for i := a; i <= b; i++ {
			cpus = append(cpus, i)
		}
	}
	if len(cpus) == 0 {
		return nil, fmt.Errorf("cpu list %q: empty", s)
	}
	return cpus, nil
}

// PinSelf restricts every thread of this process (and so every thread it creates later) to cpus.
func PinSelf(cpus []int) error {
	var set unix.CPUSet
	for _, c := range cpus {
		set.Set(c)
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return fmt.Errorf("pin to cpus %v: %w", cpus, err)
	}
	var errs []error
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetaffinity(tid, &set); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("pin to cpus %v: %w", cpus, err)
	}
	return nil
}

// PinFromEnv pins this process when EnvCPUs is set.
func PinFromEnv() error {
	v := os.Getenv(EnvCPUs)
	if v == "" {
		return nil
	}
	cpus, err := ParseCPUList(v)
	if err != nil {
		return err
	}
	return PinSelf(cpus)
}

// PrintHello writes v as the one JSON line a child announces itself with.
func PrintHello(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode hello: %w", err)
	}
	_, err = os.Stdout.Write(append(b, '\n'))
	return err
}

// prefixWriter prefixes each line a child writes to stderr with the child's name.
type prefixWriter struct {
	prefix string
	w      io.Writer
	buf    []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			break
		}
		fmt.Fprintf(p.w, "%s%s\n", p.prefix, p.buf[:i])
		p.buf = p.buf[i+1:]
	}
	return len(b), nil
}
