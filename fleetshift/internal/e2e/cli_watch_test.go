package e2e

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/creack/pty"
	"github.com/spf13/cobra"

	"github.com/fleetshift/fleetshift/agent/sim"
	"github.com/fleetshift/fleetshift/fleetshift/internal/cli"
	"github.com/fleetshift/fleetshift/fleetshift/internal/server"
	"github.com/fleetshift/fleetshift/shared/wait"
)

// fleetshiftTo runs an operator verb in-process writing to w (a terminal in the pty tests), against server.
func fleetshiftTo(ctx context.Context, w io.Writer, server, token string, args ...string) error {
	root := &cobra.Command{Use: "fleetshift", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(cli.CommandsTo(w)...)
	root.SetArgs(append(args, "--server", server, "--token", token))
	root.SetOut(io.Discard)
	root.SetErr(io.Discard)
	return root.ExecuteContext(ctx)
}

// terminal is a pseudo-terminal: the CLI writes to tty, the test reads everything from the other side.
type terminal struct {
	tty  *os.File
	ptmx *os.File
	mu   sync.Mutex
	buf  bytes.Buffer
	done chan struct{}
}

func newTerminal(t *testing.T, cols int) *terminal {
	t.Helper()
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatalf("open pty: %v", err)
	}
	term := &terminal{tty: tty, ptmx: ptmx, done: make(chan struct{})}
	term.resize(t, cols)
	go func() {
		defer close(term.done)
		b := make([]byte, 4096)
		for {
			n, err := ptmx.Read(b)
			term.mu.Lock()
			term.buf.Write(b[:n])
			term.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { _ = tty.Close(); _ = ptmx.Close(); <-term.done })
	return term
}

func (term *terminal) resize(t *testing.T, cols int) {
	t.Helper()
	if err := pty.Setsize(term.ptmx, &pty.Winsize{Rows: 40, Cols: uint16(cols)}); err != nil {
		t.Fatalf("resize pty: %v", err)
	}
}

func (term *terminal) String() string {
	term.mu.Lock()
	defer term.mu.Unlock()
	return term.buf.String()
}

var ansi = regexp.MustCompile(`\x1b\[[0-9;]*[A-Za-z]`)

// screenLines are the printed lines of out with escape sequences removed.
func screenLines(out string) []string {
	var lines []string
	for _, l := range strings.Split(ansi.ReplaceAllString(out, ""), "\n") {
		if l = strings.TrimRight(l, "\r"); l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

// TestCLIWatchOnTerminal drives `rollouts watch` on a pseudo-terminal against a real server: per-batch
// bars from the devices' statuses with failed devices drawn apart (red X, never a full bar), every line
// within the terminal's width, a clean redraw when the terminal narrows, exit 0 on completion, and no
// colour with NO_COLOR. (Not parallel: it sets NO_COLOR.)
func TestCLIWatchOnTerminal(t *testing.T) {
	e := newEnv(t)
	e.start()
	e.admin("POST", "/api/v1/image-policies", stagedPolicy(map[string]any{"update_strategy": "manual",
		"batch_percentages": []int{25, 100}, "health_check_timeout_seconds": 30, "max_failure_rate": 0.95,
		"min_sample_size": 1000, "auto_rollback_enabled": false}), 201)
	s := e.runSim("tty", 12, []string{"acme/app:1.0"}, func(c *sim.Config) {
		c.FailRates = []sim.Rate{mustRate(t, "acme/app:2.*=0.5")}
	})
	waitSim(t, s, 60*time.Second, func(c sim.Counters) bool { return c.Healthy == 12 })
	e.push("acme/app", "2.0")
	id := e.latestRollout("acme/app:2.0")
	e.waitStatus(id, 30*time.Second, "pending")

	term := newTerminal(t, 72)
	done := make(chan error, 1)
	go func() {
		done <- fleetshiftTo(context.Background(), term.tty, e.srv.HTTPURL, e.srv.AdminToken, "rollouts", "watch", id[:8], "--interval", "100ms")
	}()
	wait.For(t, 20*time.Second, func() error {
		if !strings.Contains(term.String(), "batch 2") {
			return fmt.Errorf("no bars yet:\n%s", term.String())
		}
		return nil
	})
	for _, l := range screenLines(term.String()) {
		if utf8.RuneCountInString(l) > 71 {
			t.Fatalf("line wider than the 72-column terminal: %q", l)
		}
	}
	// The terminal narrows: the watch starts again on a clean screen and keeps every line within 40 columns.
	term.resize(t, 40)
	wait.For(t, 20*time.Second, func() error {
		if !strings.Contains(term.String(), "\x1b[2J") {
			return fmt.Errorf("no clean redraw after the resize")
		}
		return nil
	})
	var out syncBuffer
	if err := e.fleetshift(context.Background(), &out, e.srv.AdminToken, "rollouts", "start", id[:8]); err != nil {
		t.Fatalf("start: %v", err)
	}
	select {
	case err := <-done:
		if code := cli.ExitCode(err); code != cli.ExitOK {
			t.Fatalf("watch of a completed rollout: exit %d (%v)\n%s", code, err, term.String())
		}
	case <-time.After(90 * time.Second):
		t.Fatalf("watch did not end:\n%s", term.String())
	}
	r := e.waitStatus(id, time.Second, "completed")
	if r.Failed == 0 {
		t.Fatalf("the rollout was meant to have failed devices: %+v", r)
	}
	all := term.String()
	if testing.Verbose() {
		t.Logf("terminal output:\n%s", all)
	}
	narrow := all[strings.LastIndex(all, "\x1b[2J"):]
	for _, l := range screenLines(narrow) {
		if utf8.RuneCountInString(l) > 39 {
			t.Fatalf("line wider than the 40-column terminal after the resize: %q", l)
		}
	}
	if !strings.Contains(all, "\x1b[31mX") {
		t.Fatalf("failed devices are not drawn in red:\n%q", all)
	}
	last := screenLines(all)
	final := strings.Join(last[max(0, len(last)-3):], "\n")
	if !strings.Contains(final, "X") || !strings.Contains(final, "failed") {
		t.Fatalf("final bars do not show the failed devices:\n%s", final)
	}
	for _, l := range last[max(0, len(last)-2):] { // a batch with failures is never a full bar of completed cells
		if i, j := strings.Index(l, "["), strings.Index(l, "]"); i >= 0 && j > i && strings.Count(l[i+1:j], "#") == j-i-1 && strings.Contains(l, "failed") {
			t.Fatalf("batch with failures drawn as a full bar: %q", l)
		}
	}

	// NO_COLOR: the same bars without colour.
	t.Setenv("NO_COLOR", "1")
	plain := newTerminal(t, 72)
	if err := fleetshiftTo(context.Background(), plain.tty, e.srv.HTTPURL, e.srv.AdminToken, "rollouts", "watch", id); err != nil {
		t.Fatalf("watch (NO_COLOR): %v", err)
	}
	wait.For(t, 10*time.Second, func() error {
		if !strings.Contains(plain.String(), "batch 2") {
			return fmt.Errorf("no bars:\n%s", plain.String())
		}
		return nil
	})
	if strings.Contains(plain.String(), "\x1b[3") || !strings.Contains(plain.String(), "X") {
		t.Fatalf("NO_COLOR output:\n%q", plain.String())
	}
}

// countingProxy forwards to target and counts requests for path.
func countingProxy(t *testing.T, target, path string) (string, *atomic.Int32, func()) {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int32
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ErrorLog = log.New(io.Discard, "", 0) // the watch is cancelled mid-request on purpose
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == path {
			n.Add(1)
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, &n, srv.Close
}

// TestCLIWatchExitCodesAndChanges: watch prints only when the rollout changes (many polls of an unchanged
// rollout, one line; with -o json one object), and its exit code tells completed (0), failed / rolled
// back / cancelled (2), paused (3) and a lost server (4) apart.
func TestCLIWatchExitCodesAndChanges(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start()

	pending, _, _ := e.fixture("pending")
	path := "/api/v1/rollouts/" + pending
	for _, format := range []string{"table", "json"} {
		proxy, polls, _ := countingProxy(t, e.srv.HTTPURL, path)
		ctx, cancel := context.WithCancel(context.Background())
		var out syncBuffer
		done := make(chan error, 1)
		go func() {
			done <- fleetshiftTo(ctx, &out, proxy, e.srv.AdminToken, "rollouts", "watch", pending, "--interval", "20ms", "-o", format)
		}()
		wait.For(t, 20*time.Second, func() error {
			if polls.Load() < 10 {
				return fmt.Errorf("%d polls so far", polls.Load())
			}
			return nil
		})
		cancel()
		<-done
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		if len(lines) != 1 {
			t.Fatalf("-o %s: %d polls of an unchanged rollout printed %d lines:\n%s", format, polls.Load(), len(lines), out.String())
		}
		if format == "json" {
			var obj map[string]any
			if err := json.Unmarshal([]byte(lines[0]), &obj); err != nil || obj["status"] != "pending" || obj["batches"] == nil {
				t.Fatalf("-o json line: %v %s", err, lines[0])
			}
		}
	}

	for status, want := range map[string]int{"completed": cli.ExitOK, "failed": cli.ExitRolloutFailed,
		"cancelled": cli.ExitRolloutFailed, "rolled_back": cli.ExitRolloutFailed, "paused": cli.ExitRolloutPaused} {
		id, _, _ := e.fixture(status)
		var out syncBuffer
		err := e.fleetshift(context.Background(), &out, e.srv.AdminToken, "rollouts", "watch", id, "--interval", "50ms")
		if got := cli.ExitCode(err); got != want {
			t.Fatalf("watch of a %s rollout: exit %d (%v), want %d", status, got, err, want)
		}
		if err != nil && strings.Contains(err.Error(), "\n") {
			t.Fatalf("error is not one line: %q", err)
		}
	}

	// -o json streams one object per change while a rollout moves.
	var jsonOut syncBuffer
	paused, _, _ := e.fixture("paused")
	jsonDone := make(chan error, 1)
	go func() {
		jsonDone <- e.fleetshift(context.Background(), &jsonOut, e.srv.AdminToken, "rollouts", "watch", paused, "--follow-paused", "--interval", "50ms", "-o", "json")
	}()
	wait.For(t, 10*time.Second, func() error {
		if !strings.Contains(jsonOut.String(), `"status":"paused"`) {
			return fmt.Errorf("no first object yet")
		}
		return nil
	})
	var ctl syncBuffer
	if err := e.fleetshift(context.Background(), &ctl, e.srv.AdminToken, "rollouts", "cancel", paused); err != nil {
		t.Fatalf("cancel: %v", err)
	}
	if code := cli.ExitCode(<-jsonDone); code != cli.ExitRolloutFailed {
		t.Fatalf("watch -o json of a cancelled rollout: exit %d", code)
	}
	var statuses []string
	for _, l := range strings.Split(strings.TrimSpace(jsonOut.String()), "\n") {
		var obj struct {
			Status string `json:"status"`
			Time   string `json:"time"`
		}
		if err := json.Unmarshal([]byte(l), &obj); err != nil || obj.Time == "" {
			t.Fatalf("not a JSON object per line: %q (%v)", l, err)
		}
		statuses = append(statuses, obj.Status)
	}
	if len(statuses) != 2 || statuses[0] != "paused" || statuses[1] != "cancelled" {
		t.Fatalf("-o json objects: %v", statuses)
	}

	// The server goes away: exit 4 once it has been unreachable for --reconnect-timeout.
	var lost syncBuffer
	lostDone := make(chan error, 1)
	go func() {
		lostDone <- e.fleetshift(context.Background(), &lost, e.srv.AdminToken, "rollouts", "watch", pending, "--interval", "50ms", "--reconnect-timeout", "1s")
	}()
	wait.For(t, 10*time.Second, func() error {
		if !strings.Contains(lost.String(), "status=pending") {
			return fmt.Errorf("watch has not drawn yet")
		}
		return nil
	})
	e.stop()
	select {
	case err := <-lostDone:
		if code := cli.ExitCode(err); code != cli.ExitConnectionLost {
			t.Fatalf("watch with the server gone: exit %d (%v)", code, err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("watch did not give up on a server that went away")
	}
}

// TestCLIListsPrefixesAndTables: rollout id prefixes (unique accepted, ambiguous and unknown one-line
// errors), rollouts devices --status failed, rollouts events, devices revoke|set-target|current, tables
// without raw JSON or endless lines, kebab-case flags only.
func TestCLIListsPrefixesAndTables(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start()
	ctx := context.Background()
	for _, id := range []string{"abcdef01-1111-4000-8000-000000000001", "abcdef01-2222-4000-8000-000000000002"} {
		if _, err := e.db.Pool.Exec(ctx, `INSERT INTO image_rollouts (rollout_id, image_name, repository, new_tag, new_image, strategy, status)
			VALUES ($1, 'acme/x', 'docker.io/acme/x', '1', 'acme/x:1', 'auto', 'completed')`, id); err != nil {
			t.Fatal(err)
		}
	}
	var shown map[string]any
	e.cliJSON(&shown, "rollouts", "show", "ABCDEF01-1")
	if shown["rollout_id"] != "abcdef01-1111-4000-8000-000000000001" {
		t.Fatalf("unique prefix: %v", shown["rollout_id"])
	}
	var out syncBuffer
	err := e.fleetshift(ctx, &out, e.srv.AdminToken, "rollouts", "show", "abcdef")
	if err == nil || !strings.Contains(err.Error(), "ambiguous") || strings.Contains(err.Error(), "\n") || cli.ExitCode(err) != cli.ExitError {
		t.Fatalf("ambiguous prefix: %v", err)
	}
	err = e.fleetshift(ctx, &out, e.srv.AdminToken, "rollouts", "pause", "0000")
	if err == nil || !strings.Contains(err.Error(), `no rollout id starts with "0000"`) {
		t.Fatalf("unknown prefix: %v", err)
	}

	// A rollout with failed devices.
	e.admin("POST", "/api/v1/image-policies", stagedPolicy(map[string]any{"batch_percentages": []int{100},
		"max_failure_rate": 0.95, "min_sample_size": 1000, "auto_rollback_enabled": false}), 201)
	s := e.runSim("lists", 10, []string{"acme/app:1.0"}, func(c *sim.Config) {
		c.FailRates = []sim.Rate{mustRate(t, "acme/app:2.*=0.5")}
	})
	waitSim(t, s, 60*time.Second, func(c sim.Counters) bool { return c.Healthy == 10 })
	e.push("acme/app", "2.0")
	id := e.latestRollout("acme/app:2.0")
	r := e.waitStatus(id, 60*time.Second, "completed")
	if r.Failed == 0 || r.Failed == r.Total {
		t.Fatalf("want some failed devices: %+v", r)
	}
	var devs struct {
		RolloutID string           `json:"rollout_id"`
		Devices   []map[string]any `json:"devices"`
	}
	e.cliJSON(&devs, "rollouts", "devices", id[:13], "--status", "failed")
	if devs.RolloutID != id || len(devs.Devices) != r.Failed {
		t.Fatalf("rollouts devices --status failed: %d devices, want %d", len(devs.Devices), r.Failed)
	}
	for _, d := range devs.Devices {
		if d["status"] != "failed" {
			t.Fatalf("not failed: %v", d)
		}
	}
	out = syncBuffer{}
	if err := e.fleetshift(ctx, &out, e.srv.AdminToken, "rollouts", "devices", id, "--status", "failed"); err != nil {
		t.Fatal(err)
	}
	if rows := strings.Split(strings.TrimSpace(out.String()), "\n"); len(rows) != r.Failed+1 || !strings.HasPrefix(rows[0], "BATCH") {
		t.Fatalf("devices table:\n%s", out.String())
	}
	var evs struct {
		Events []map[string]any `json:"events"`
	}
	e.cliJSON(&evs, "rollouts", "events", id)
	types := map[string]bool{}
	for _, ev := range evs.Events {
		types[fmt.Sprint(ev["event_type"])] = true
	}
	for _, want := range []string{"image.rollout_created", "image.device_failed", "image.rollout_completed"} {
		if !types[want] {
			t.Fatalf("rollouts events lacks %s: %v", want, types)
		}
	}

	out = syncBuffer{}
	if err := e.fleetshift(ctx, &out, e.srv.AdminToken, "events", "tail", "--rollout", id[:8], "--follow=false", "-o", "json"); err != nil {
		t.Fatalf("events tail --rollout <prefix>: %v", err)
	}
	if !strings.Contains(out.String(), `"rollout_id":"`+id+`"`) || !strings.Contains(out.String(), "image.rollout_completed") {
		t.Fatalf("events tail --rollout <prefix>:\n%s", out.String())
	}

	// Tables: never raw JSON, never a line longer than a screen's worth of columns.
	failedDevice := fmt.Sprint(devs.Devices[0]["device_uuid"])
	for _, args := range [][]string{
		{"rollouts", "plan", "acme/app:3.0"}, {"rollouts", "show", id}, {"rollouts", "list"}, {"policies", "list"},
		{"policies", "show", "1"}, {"devices", "list"}, {"rollouts", "events", id}, {"devices", "current", failedDevice}, {"devices", "show", failedDevice},
	} {
		out = syncBuffer{}
		if err := e.fleetshift(ctx, &out, e.srv.AdminToken, args...); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		for _, l := range strings.Split(out.String(), "\n") {
			if strings.Contains(l, `{"`) || strings.Contains(l, `":`) || strings.Contains(l, `[{`) || len(l) > 250 {
				t.Fatalf("%v: table line shows raw JSON or is too long (%d): %q", args, len(l), l)
			}
		}
	}
	out = syncBuffer{}
	_ = e.fleetshift(ctx, &out, e.srv.AdminToken, "rollouts", "plan", "acme/app:3.0")
	if testing.Verbose() {
		t.Logf("rollouts plan:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "BATCH") || !strings.Contains(out.String(), "acme/app:*") {
		t.Fatalf("plan table:\n%s", out.String())
	}

	// devices set-target, current, revoke.
	var dev map[string]any
	e.cliJSON(&dev, "devices", "register", "cli-target", "--uuid", "cli-target-1", "--fleet", "cli")
	var set map[string]any
	e.cliJSON(&set, "devices", "set-target", "cli-target-1", "--image", "acme/tool:1.5")
	if set["version"] == nil {
		t.Fatalf("set-target: %v", set)
	}
	var tgt struct {
		Apps map[string]struct {
			Services []struct {
				ImageName string `json:"imageName"`
			} `json:"services"`
		} `json:"apps"`
	}
	e.admin("GET", "/api/v1/devices/cli-target-1/target-state", nil, 200).json(t, &tgt)
	if len(tgt.Apps["1"].Services) != 1 || tgt.Apps["1"].Services[0].ImageName != "acme/tool:1.5" {
		t.Fatalf("target after set-target: %+v", tgt)
	}
	var cur map[string]any
	e.cliJSON(&cur, "devices", "current", "cli-target-1")
	if cur["uuid"] != "cli-target-1" {
		t.Fatalf("devices current: %v", cur)
	}
	out = syncBuffer{}
	if err := e.fleetshift(ctx, &out, e.srv.AdminToken, "devices", "revoke", "cli-target-1"); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	var revoked map[string]any
	e.cliJSON(&revoked, "devices", "show", "cli-target-1")
	if revoked["revoked_at"] == nil {
		t.Fatalf("device not revoked: %v", revoked)
	}
	err = e.fleetshift(ctx, &out, e.srv.AdminToken, "devices", "set-target", "cli-target-1")
	if err == nil || !strings.Contains(err.Error(), "--image") {
		t.Fatalf("set-target without a target: %v", err)
	}

	// Old snake_case flags are gone; kebab-case ones work.
	if err := e.fleetshift(ctx, &out, e.srv.AdminToken, "rollouts", "list", "--image_name", "acme/app"); err == nil {
		t.Fatal("--image_name still accepted")
	}
	var list struct {
		Rollouts []map[string]any `json:"rollouts"`
	}
	e.cliJSON(&list, "rollouts", "list", "--image-name", "acme/app")
	if len(list.Rollouts) != 1 {
		t.Fatalf("--image-name: %d rollouts", len(list.Rollouts))
	}
}

// TestCLINotifications: a subscription made with the CLI receives the completed rollout's notification,
// signed with the secret shown at creation; deliveries and list show it delivered; delete removes it.
func TestCLINotifications(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start()
	type hit struct {
		sig, event string
		body       []byte
	}
	var mu sync.Mutex
	var hits []hit
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		hits = append(hits, hit{r.Header.Get("X-Fleetshift-Signature-256"), r.Header.Get("X-Fleetshift-Event"), b})
		mu.Unlock()
	}))
	defer rcv.Close()

	var sub map[string]any
	e.cliJSON(&sub, "notifications", "create", "--name", "ci", "--url", rcv.URL+"/hook", "--events", "completed,paused")
	secret, _ := sub["secret"].(string)
	subID, _ := sub["id"].(string)
	if secret == "" || subID == "" {
		t.Fatalf("create: %v", sub)
	}
	var out syncBuffer
	err := e.fleetshift(context.Background(), &out, e.srv.AdminToken, "notifications", "create", "--name", "x", "--url", "mailto:me")
	if err == nil || !strings.Contains(err.Error(), "url") {
		t.Fatalf("bad url: %v", err)
	}

	e.admin("POST", "/api/v1/image-policies", stagedPolicy(map[string]any{"batch_percentages": []int{100}}), 201)
	sm := e.runSim("notify", 3, []string{"acme/app:1.0"}, nil)
	waitSim(t, sm, 60*time.Second, func(c sim.Counters) bool { return c.Healthy == 3 })
	e.push("acme/app", "2.0")
	id3 := e.latestRollout("acme/app:2.0")
	e.waitStatus(id3, 60*time.Second, "completed")

	wait.For(t, 30*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		for _, h := range hits {
			if h.event == "image.rollout_completed" && strings.Contains(string(h.body), id3) {
				m := hmac.New(sha256.New, []byte(secret))
				m.Write(h.body)
				if h.sig != "sha256="+hex.EncodeToString(m.Sum(nil)) {
					return fmt.Errorf("bad signature %s", h.sig)
				}
				return nil
			}
		}
		return fmt.Errorf("no completed notification for %s yet (%d hits)", id3, len(hits))
	})
	var dels struct {
		Deliveries []map[string]any `json:"deliveries"`
	}
	wait.For(t, 10*time.Second, func() error {
		e.cliJSON(&dels, "notifications", "deliveries", subID)
		for _, d := range dels.Deliveries {
			if d["rollout_id"] == id3 && d["status"] == "delivered" && d["attempts"] == float64(1) && d["last_status_code"] == float64(200) {
				return nil
			}
		}
		return fmt.Errorf("deliveries: %v", dels.Deliveries)
	})
	out = syncBuffer{}
	if err := e.fleetshift(context.Background(), &out, e.srv.AdminToken, "notifications", "list"); err != nil || !strings.Contains(out.String(), "completed,paused") {
		t.Fatalf("list: %v\n%s", err, out.String())
	}
	if err := e.fleetshift(context.Background(), &out, e.srv.AdminToken, "notifications", "delete", subID); err != nil {
		t.Fatalf("delete: %v", err)
	}
	var lst struct {
		Notifications []any `json:"notifications"`
	}
	e.cliJSON(&lst, "notifications", "list")
	if len(lst.Notifications) != 0 {
		t.Fatalf("after delete: %v", lst.Notifications)
	}
}

// TestNotifierAsItsOwnService: `fleetshift notifier` alone (its own process, the API served by stateapi
// elsewhere) delivers an operator's pause to a subscriber.
func TestNotifierAsItsOwnService(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start(server.RoleIngest, server.RolePlanner, server.RoleDispatcher, server.RoleHealthwatch, server.RoleStateAPI)
	got := make(chan string, 4)
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Get("X-Fleetshift-Event")
	}))
	defer rcv.Close()
	var sub map[string]any
	e.cliJSON(&sub, "notifications", "create", "--name", "pauses", "--url", rcv.URL, "--events", "paused")
	id, _, _ := e.fixture("in_progress")
	var out syncBuffer
	if err := e.fleetshift(context.Background(), &out, e.srv.AdminToken, "rollouts", "pause", id); err != nil {
		t.Fatalf("pause: %v", err)
	}
	e.startWorker(server.RoleNotifier)
	select {
	case ev := <-got:
		if ev != "image.rollout_paused" {
			t.Fatalf("notified %q", ev)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the notifier service delivered nothing")
	}
}
