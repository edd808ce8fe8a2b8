package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/fleetshift/fleetshift/agent/sim"
	"github.com/fleetshift/fleetshift/fleetshift/internal/cli"
	"github.com/fleetshift/fleetshift/shared/wait"
)

// syncBuffer is a bytes.Buffer safe for a command writing while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// fleetshift runs an operator verb in-process against the env's server, as the CLI binary would.
func (e *env) fleetshift(ctx context.Context, out *syncBuffer, token string, args ...string) error {
	root := &cobra.Command{Use: "fleetshift", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(cli.CommandsTo(out)...)
	root.SetArgs(append(args, "--server", e.srv.HTTPURL, "--token", token))
	root.SetOut(out)
	root.SetErr(out)
	return root.ExecuteContext(ctx)
}

func (e *env) cliJSON(v any, args ...string) {
	e.t.Helper()
	var out syncBuffer
	if err := e.fleetshift(context.Background(), &out, e.srv.AdminToken, append(args, "-o", "json")...); err != nil {
		e.t.Fatalf("fleetshift %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	if err := json.Unmarshal([]byte(out.String()), v); err != nil {
		e.t.Fatalf("fleetshift %s -o json: %v\n%s", strings.Join(args, " "), err, out.String())
	}
}

// TestCLIEndToEnd drives a rollout from the CLI: policies, devices and tokens with -o json, a dry-run plan,
// watch in non-terminal mode to completion, events tail following the rollout, and clear API errors.
func TestCLIEndToEnd(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start()

	var pol map[string]any
	e.cliJSON(&pol, "policies", "create", "--image-pattern", "acme/app:*", "--update-strategy", "staged",
		"--batch-percentages", "10,50,100", "--batch-delay-seconds", "1", "--health-check-timeout-seconds", "30",
		"--max-failure-rate", "0.5", "--description", "from the CLI")
	if pol["image_pattern"] != "acme/app:*" || pol["update_strategy"] != "staged" {
		t.Fatalf("policy created: %v", pol)
	}
	var pols map[string]any
	e.cliJSON(&pols, "policies", "list")
	if list, _ := pols["policies"].([]any); len(list) != 1 {
		t.Fatalf("policies list: %v", pols)
	}
	var dev map[string]any
	e.cliJSON(&dev, "devices", "register", "cli-device", "--uuid", "cli-dev-1", "--fleet", "cli")
	if dev["uuid"] != "cli-dev-1" || dev["api_key"] == "" {
		t.Fatalf("device registered: %v", dev)
	}
	var tok map[string]any
	e.cliJSON(&tok, "tokens", "create", "reader", "--scope", "read")
	readToken, _ := tok["token"].(string)
	if readToken == "" {
		t.Fatalf("token: %v", tok)
	}

	// An API error is one clear line and a failure; a read token cannot create policies.
	var errOut syncBuffer
	err := e.fleetshift(context.Background(), &errOut, readToken, "policies", "create", "--image-pattern", "x/y")
	if err == nil || !strings.Contains(err.Error(), "403") || strings.Count(strings.TrimSpace(err.Error()), "\n") != 0 {
		t.Fatalf("read token creating a policy: err=%v", err)
	}
	err = e.fleetshift(context.Background(), &errOut, e.srv.AdminToken, "policies", "create", "--image-pattern", "acme/[")
	if err == nil || !strings.Contains(err.Error(), "image_pattern") {
		t.Fatalf("bad pattern: err=%v", err)
	}

	s := e.runSim("cli", 50, []string{"acme/app:1.0"}, nil)
	waitSim(t, s, 60*time.Second, func(c sim.Counters) bool { return c.Healthy == 50 })

	var plan map[string]any
	e.cliJSON(&plan, "rollouts", "plan", "acme/app:2.0")
	if batches, _ := plan["batches"].([]any); len(batches) != 3 {
		t.Fatalf("plan: %v", plan)
	}

	// Tail events from now on while the rollout runs.
	tailCtx, stopTail := context.WithCancel(context.Background())
	defer stopTail()
	var tail syncBuffer
	tailDone := make(chan error, 1)
	go func() { tailDone <- e.fleetshift(tailCtx, &tail, readToken, "events", "tail") }()

	e.push("acme/app", "2.0")
	id := e.latestRollout("acme/app:2.0")
	var watched syncBuffer
	if err := e.fleetshift(context.Background(), &watched, readToken, "rollouts", "watch", id, "--interval", "200ms"); err != nil {
		t.Fatalf("watch: %v\n%s", err, watched.String())
	}
	lines := strings.Split(strings.TrimSpace(watched.String()), "\n")
	if len(lines) < 2 || !strings.Contains(lines[len(lines)-1], "status=completed") || strings.Contains(watched.String(), "\x1b[") {
		t.Fatalf("watch (non-terminal) output:\n%s", watched.String())
	}
	wait.For(t, 20*time.Second, func() error {
		out := tail.String()
		for _, ev := range []string{"image.rollout_created", "image.batch_started", "image.batch_completed", "image.rollout_completed"} {
			if !strings.Contains(out, ev) || !strings.Contains(out, id) {
				return fmt.Errorf("events tail lacks %s:\n%s", ev, out)
			}
		}
		return nil
	})
	stopTail()
	if err := <-tailDone; err != nil {
		t.Fatalf("events tail: %v", err)
	}

	var list map[string]any
	e.cliJSON(&list, "rollouts", "list", "--status", "completed")
	if rs, _ := list["rollouts"].([]any); len(rs) != 1 {
		t.Fatalf("rollouts list: %v", list)
	}
	var shown map[string]any
	e.cliJSON(&shown, "rollouts", "show", id)
	if shown["status"] != "completed" || shown["rollout_id"] != id {
		t.Fatalf("rollouts show: %v", shown)
	}
	var yamlOut syncBuffer
	if err := e.fleetshift(context.Background(), &yamlOut, readToken, "rollouts", "show", id, "-o", "yaml"); err != nil || !strings.Contains(yamlOut.String(), "status: completed") {
		t.Fatalf("yaml: %v\n%s", err, yamlOut.String())
	}
}
