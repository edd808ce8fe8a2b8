package e2e

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/fleetshift/fleetshift/agent/sim"
	"github.com/fleetshift/fleetshift/shared/wait"
)

// browser is a headless Chromium tab driven over the DevTools protocol.
type browser struct {
	t   *testing.T
	ctx context.Context
}

// newBrowser starts Debian's Chromium for the test. Without one the test is skipped, or fails with one
// line when FLEETSHIFT_REQUIRE_BROWSER=1 (make test sets it). When the test fails, a screenshot of the
// page goes to $FLEETSHIFT_SCREENSHOT_DIR, else to a fresh folder in the system's temp dir (both logged).
func newBrowser(t *testing.T) *browser {
	t.Helper()
	path := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		if os.Getenv("FLEETSHIFT_REQUIRE_BROWSER") == "1" {
			t.Fatal("console browser test: chromium not found (apt-get install -y chromium)")
		}
		t.Skip("chromium not installed; set FLEETSHIFT_REQUIRE_BROWSER=1 to make this a failure")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox,
		chromedp.WindowSize(1360, 1000), chromedp.UserDataDir(t.TempDir()))
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(allocCtx)
	t.Cleanup(func() { cancelCtx(); cancelAlloc() })
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(1360, 1000)); err != nil {
		t.Fatalf("start chromium (%s): %v", path, err)
	}
	b := &browser{t: t, ctx: ctx}
	t.Cleanup(func() {
		if t.Failed() {
			b.screenshotOnFailure()
		}
	})
	return b
}

func (b *browser) screenshotOnFailure() {
	dir := os.Getenv("FLEETSHIFT_SCREENSHOT_DIR")
	if dir == "" {
		d, err := os.MkdirTemp("", "fleetshift-console-")
		if err != nil {
			b.t.Logf("screenshot: %v", err)
			return
		}
		dir = d
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.t.Logf("screenshot: %v", err)
		return
	}
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Logf("screenshot: %v", err)
		return
	}
	file := filepath.Join(dir, filepath.Base(b.t.Name())+".png")
	if err := os.WriteFile(file, png, 0o644); err != nil {
		b.t.Logf("screenshot: %v", err)
		return
	}
	b.t.Logf("screenshot of the page at failure: %s", file)
}

// snapshot saves a screenshot of the page as <name>.png in $FLEETSHIFT_CONSOLE_SNAPSHOTS, when set (to
// look at every page the test visits).
func (b *browser) snapshot(name string) {
	dir := os.Getenv("FLEETSHIFT_CONSOLE_SNAPSHOTS")
	if dir == "" {
		return
	}
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644)
	}
	if err != nil {
		b.t.Logf("snapshot %s: %v", name, err)
	}
}

// fromRepoRoot resolves a relative path against the repository root (where go.work is), so
// FLEETSHIFT_CONSOLE_SCREENSHOT=docs/console.png means the same from any directory.
func fromRepoRoot(t *testing.T, p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for d := dir; d != filepath.Dir(d); d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.work")); err == nil {
			return filepath.Join(d, p)
		}
	}
	return filepath.Join(dir, p)
}

// do runs steps, failing the test when one does not succeed within 30 s.
func (b *browser) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
}

// eval returns the value of a JavaScript expression in the page.
func (b *browser) eval(expr string) (any, error) {
	ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
	defer cancel()
	return chromedp.Run(ctx, chromedp.Evaluate[any](expr))
}

// waitFor polls until the JavaScript expression is true.
func (b *browser) waitFor(what, expr string, timeout time.Duration) {
	b.t.Helper()
	wait.For(b.t, timeout, func() error {
		v, err := b.eval(expr)
		if err != nil {
			return fmt.Errorf("%s: %v", what, err)
		}
		if v != true {
			return fmt.Errorf("%s: not yet (%s is %v)", what, expr, v)
		}
		return nil
	})
}

// text is the text content of the first element matching a CSS selector ("" when there is none).
func (b *browser) text(sel string) string {
	v, _ := b.eval(fmt.Sprintf(`(document.querySelector(%q)||{}).textContent||""`, sel))
	s, _ := v.(string)
	return s
}

func (b *browser) signIn(url, token string) {
	b.t.Helper()
	b.do("open the console", chromedp.Navigate(url+"/ui/"))
	b.waitFor("sign-in form or console", `!!document.querySelector('#token') || !!document.querySelector('#signout')`, 20*time.Second)
	if v, _ := b.eval(`!!document.querySelector('#token')`); v != true {
		b.do("sign out", chromedp.Click(chromedp.CSS("#signout")))
	}
	b.do("sign in", chromedp.WaitVisible(chromedp.CSS("#token")), chromedp.SendKeys(chromedp.CSS("#token"), token),
		chromedp.Click(chromedp.CSS("#signin-btn")))
	b.waitFor("signed in", `!document.querySelector('#token') && document.querySelector('#who-name').textContent !== ''`, 20*time.Second)
}

// verb clicks a rollout control button and confirms it in the dialog.
func (b *browser) verb(verb string) {
	b.t.Helper()
	b.do("click "+verb, chromedp.Click(chromedp.CSS(`#controls button[data-verb="`+verb+`"]`)))
	b.do("confirm "+verb, chromedp.WaitVisible(chromedp.CSS("#modal-confirm")), chromedp.Click(chromedp.CSS("#modal-confirm")))
}

// TestConsoleInBrowser drives the web console in headless Chromium against a real server and simulated
// devices: sign in with an operate token; a staged rollout is watched to completed on its page without
// a reload (Server-Sent Events), with its batches, failures and timeline; a second rollout is paused
// with the button; a verb that does not apply shows the API's 409 message; a read token sees no
// control buttons. FLEETSHIFT_CONSOLE_SCREENSHOT=<file> also writes the screenshot the README shows.
//
// Not parallel: a browser next to the large simulated fleets of the other tests starves a 2-core machine.
func TestConsoleInBrowser(t *testing.T) {
	b := newBrowser(t)
	e := newEnv(t)
	e.start()

	// acme/app rolls out in three batches with a threshold the simulated failures stay under;
	// acme/slow waits an hour after its first batch, so it is in progress when we pause it.
	e.admin("POST", "/api/v1/image-policies", stagedPolicy(map[string]any{
		"max_failure_rate": 0.5, "min_sample_size": 5, "auto_rollback_enabled": true,
		"description": "app: 10/50/100, roll back above 50%"}), 201)
	e.admin("POST", "/api/v1/image-policies", stagedPolicy(map[string]any{"image_pattern": "acme/slow:*",
		"batch_delay_seconds": 3600, "max_failure_rate": 0.5}), 201)
	_, operate := e.operatorToken("console-operator", "operate")
	_, read := e.operatorToken("console-viewer", "read")
	s := e.runSim("plant-a", 20, []string{"acme/app:1.0", "acme/slow:1.0"}, func(c *sim.Config) {
		c.FailRates = []sim.Rate{{Glob: "acme/app:1.1", P: 0.15}}
	})
	waitSim(t, s, 60*time.Second, func(c sim.Counters) bool { return c.Healthy == c.Devices && c.Devices == 20 })

	b.signIn(e.srv.HTTPURL, operate)
	b.waitFor("rollouts page", `location.hash === '#/rollouts' && !!document.querySelector('#rollouts-body')`, 10*time.Second)
	if got := b.text("#who-scope"); got != "operate" {
		t.Fatalf("scope shown after sign-in: %q, want operate", got)
	}
	// A marker that a reload would lose: everything below must happen live.
	if _, err := b.eval(`window.__noReload = 'still here'`); err != nil {
		t.Fatal(err)
	}

	// The push appears in the list by itself; open it and watch it finish.
	e.push("acme/app", "1.1")
	id := e.latestRollout("acme/app:1.1")
	b.waitFor("the new rollout in the list", fmt.Sprintf(`!!document.querySelector('tr[data-rollout="%s"]')`, id), 20*time.Second)
	b.do("open the rollout", chromedp.Click(chromedp.CSS(fmt.Sprintf(`tr[data-rollout="%s"]`, id))))
	b.waitFor("rollout page", `!!document.querySelector('#rollout-status')`, 10*time.Second)
	b.waitFor("rollout completed on screen", `document.querySelector('#rollout-status').dataset.status === 'completed'`, 120*time.Second)
	row := e.rollout(id)
	if row.Status != "completed" || row.Failed == 0 {
		t.Fatalf("rollout after the run: %+v; the test wants it completed with some failures", row)
	}
	b.waitFor("every batch row", `document.querySelectorAll('#r-batches tr[data-batch]').length === 3`, 10*time.Second)
	b.waitFor("failed devices with their reason", `[...document.querySelectorAll('#r-devices tr')].some(tr =>
		tr.querySelector('[data-status="failed"]') && tr.querySelector('.reason').textContent.trim() !== '')`, 10*time.Second)
	b.waitFor("the completion in the timeline", `!!document.querySelector('#r-events li[data-type="image.rollout_completed"]')`, 10*time.Second)
	b.waitFor("the failure-rate chart with its threshold", `!!document.querySelector('#r-chart svg .thr')`, 10*time.Second)
	if out := os.Getenv("FLEETSHIFT_CONSOLE_SCREENSHOT"); out != "" {
		out = fromRepoRoot(t, out)
		ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
		png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
		cancel()
		if err != nil {
			t.Fatalf("screenshot for the README: %v", err)
		}
		if err := os.WriteFile(out, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s (%d bytes)", out, len(png))
	}

	// A second rollout, in progress: pause it with the button.
	e.push("acme/slow", "1.1")
	slow := e.latestRollout("acme/slow:1.1")
	e.waitStatus(slow, 30*time.Second, "in_progress")
	b.do("open the second rollout", chromedp.Navigate(e.srv.HTTPURL+"/ui/#/rollouts/"+slow))
	b.waitFor("in progress on screen", `(document.querySelector('#rollout-status')||{dataset:{}}).dataset.status === 'in_progress'`, 20*time.Second)
	b.verb("pause")
	b.waitFor("paused on screen", `document.querySelector('#rollout-status').dataset.status === 'paused'`, 20*time.Second)
	if st := e.rollout(slow).Status; st != "paused" {
		t.Fatalf("after the pause button the rollout is %s", st)
	}
	// start does not apply to a paused rollout: the API's 409 message is shown.
	b.verb("start")
	b.waitFor("the 409 message", `(document.querySelector('#ctl-msg')||{}).className === 'msg error' && !document.querySelector('#ctl-msg').hidden`, 20*time.Second)
	msg := b.text("#ctl-msg")
	reply := e.httpVerb(operate, "start", slow, "")
	if reply.Code != 409 || reply.Message == "" {
		t.Fatalf("start on a paused rollout over HTTP: %+v, want a 409 with a message", reply)
	}
	if want := "Not possible now: " + reply.Message; msg != want {
		t.Fatalf("console shows %q, want %q", msg, want)
	}
	if v, _ := b.eval(`window.__noReload`); v != "still here" {
		t.Fatalf("the page was reloaded (marker %v): updates must arrive live", v)
	}

	b.snapshot("rollout-paused")
	b.do("open the list", chromedp.Navigate(e.srv.HTTPURL+"/ui/#/rollouts"))
	b.waitFor("both rollouts listed with their batches", `document.querySelectorAll('#rollouts-body tr[data-rollout] .bar').length === 6`, 20*time.Second)
	b.waitFor("completed and failed apart in the first rollout's bars", fmt.Sprintf(`(() => {
		const row = document.querySelector('tr[data-rollout="%s"]');
		return !!row.querySelector('.bar .s-ok') && !!row.querySelector('.bar .s-fail') && row.textContent.includes('/ 50%%');
	})()`, id), 10*time.Second)
	b.snapshot("rollouts")

	// The fleet: every simulated device online, the image versions per fleet, filters by fleet and tag.
	b.do("open the fleet", chromedp.Navigate(e.srv.HTTPURL+"/ui/#/fleet"))
	b.waitFor("devices listed", `document.querySelectorAll('#fl-devices tr[data-device]').length === 20`, 20*time.Second)
	b.waitFor("devices online", `[...document.querySelectorAll('#fl-devices tr[data-device]')].every(tr => tr.textContent.includes('online'))`, 20*time.Second)
	b.waitFor("image versions per fleet", `[...document.querySelectorAll('#fl-images tr')].some(tr =>
		tr.textContent.includes('acme/app') && tr.textContent.includes('1.1') && tr.textContent.includes('plant-a'))`, 20*time.Second)
	b.snapshot("fleet")
	b.do("filter by another fleet", chromedp.SendKeys(chromedp.CSS("#f-fleet"), "elsewhere\n"), chromedp.Blur(chromedp.CSS("#f-fleet")))
	b.waitFor("no device in another fleet", `document.querySelectorAll('#fl-devices tr[data-device]').length === 0`, 20*time.Second)
	b.do("clear the filters", chromedp.Click(chromedp.CSS("#f-clear")))
	b.waitFor("all devices again", `document.querySelectorAll('#fl-devices tr[data-device]').length === 20`, 20*time.Second)
	b.do("filter by a tag no device has", chromedp.SendKeys(chromedp.CSS("#f-tag"), "no-such-tag"), chromedp.Blur(chromedp.CSS("#f-tag")))
	b.waitFor("no device with that tag", `document.querySelectorAll('#fl-devices tr[data-device]').length === 0`, 20*time.Second)

	// Policies: a new one with a validation error shown next to its field, then saved; a preview.
	b.do("new policy", chromedp.Navigate(e.srv.HTTPURL+"/ui/#/policies"))
	b.waitFor("policies listed", `document.querySelectorAll('#p-body tr[data-policy]').length === 2`, 20*time.Second)
	b.snapshot("policies")
	b.do("open the form", chromedp.Click(chromedp.CSS("#new-policy")))
	b.waitFor("policy form", `!!document.querySelector('#pf-image_pattern') && document.querySelector('#pf-batch_percentages').value !== ''`, 10*time.Second)
	b.do("fill the form", chromedp.SendKeys(chromedp.CSS("#pf-image_pattern"), "acme/edge:*"),
		chromedp.SetValue(chromedp.CSS("#pf-batch_percentages"), "10, 50"), chromedp.Click(chromedp.CSS("#p-save")))
	b.waitFor("the error next to its field", `!document.querySelector('[data-err="batch_percentages"]').hidden`, 10*time.Second)
	if got := b.text(`[data-err="batch_percentages"]`); !strings.Contains(got, "100") {
		t.Fatalf("error shown next to batch_percentages: %q", got)
	}
	b.snapshot("policy-error")
	b.do("fix and save", chromedp.SetValue(chromedp.CSS("#pf-batch_percentages"), "25, 100"), chromedp.Click(chromedp.CSS("#p-save")))
	b.waitFor("saved: the policy's own page", `/^#\/policies\/\d+$/.test(location.hash) && document.querySelector('#pf-image_pattern').value === 'acme/edge:*'`, 10*time.Second)
	type policy struct {
		ImagePattern     string `json:"image_pattern"`
		BatchPercentages []int  `json:"batch_percentages"`
	}
	var saved struct {
		Policies []policy `json:"policies"`
	}
	e.admin("GET", "/api/v1/image-policies", nil, 200).json(t, &saved)
	if n := len(saved.Policies); n != 3 || !slices.ContainsFunc(saved.Policies, func(p policy) bool {
		return p.ImagePattern == "acme/edge:*" && slices.Equal(p.BatchPercentages, []int{25, 100})
	}) {
		t.Fatalf("policies after saving the form: %+v", saved.Policies)
	}
	b.do("preview a push", chromedp.SendKeys(chromedp.CSS("#pv-image"), "acme/app:1.2"), chromedp.Click(chromedp.CSS("#pv-btn")))
	b.waitFor("the preview", `(document.querySelector('#pv-out')||{}).textContent.includes('acme/app:*')`, 10*time.Second)
	b.snapshot("policy-preview")
	b.do("replay the saved policy", chromedp.Click(chromedp.CSS("#rp-btn")))
	b.waitFor("the replay", `/\d+ push\(es\) replayed: 0 rollout\(s\)/.test((document.querySelector('#rp-out')||{}).textContent)`, 10*time.Second)

	// A read token sees the same pages and no control buttons.
	b.signIn(e.srv.HTTPURL, read)
	if got := b.text("#who-scope"); got != "read" {
		t.Fatalf("scope shown: %q, want read", got)
	}
	b.do("open the rollout read-only", chromedp.Navigate(e.srv.HTTPURL+"/ui/#/rollouts/"+slow))
	b.waitFor("rollout page read-only", `(document.querySelector('#rollout-status')||{dataset:{}}).dataset.status === 'paused'`, 20*time.Second)
	if v, _ := b.eval(`document.querySelectorAll('#controls button').length`); v != float64(0) {
		t.Fatalf("a read token sees %v control buttons, want none", v)
	}
	b.do("open policies read-only", chromedp.Navigate(e.srv.HTTPURL+"/ui/#/policies"))
	b.waitFor("policies listed read-only", `document.querySelectorAll('#p-body tr[data-policy]').length === 3`, 20*time.Second)
	if v, _ := b.eval(`!!document.querySelector('#new-policy')`); v != false {
		t.Fatal("a read token sees the New policy button")
	}
}

// TestConsoleNotificationsInBrowser drives the console's notifications pages: an admin creates a
// subscription to a local receiver through the form (a bad URL first: the API's 400 shows next to the
// URL field, nothing is created), sees it listed with the signing secret shown once, pauses a rollout
// and watches the delivery arrive as delivered (list and deliveries page, no reload); a read token sees
// the subscription, its URL cut to the host, and no create or delete controls; the admin deletes it
// (cancelling first keeps it).
func TestConsoleNotificationsInBrowser(t *testing.T) {
	b := newBrowser(t)
	e := newEnv(t)
	e.start()
	type hit struct {
		event, sig string
		body       []byte
	}
	var mu sync.Mutex
	var hits []hit
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		hits = append(hits, hit{r.Header.Get("X-Fleetshift-Event"), r.Header.Get("X-Fleetshift-Signature-256"), body})
		mu.Unlock()
	}))
	defer rcv.Close()
	_, admin := e.operatorToken("console-admin", "admin")
	_, read := e.operatorToken("console-viewer", "read")
	type subscription struct {
		ID         string   `json:"id"`
		Name       string   `json:"name"`
		URL        string   `json:"url"`
		Format     string   `json:"format"`
		EventTypes []string `json:"event_types"`
	}
	subscriptions := func() []subscription {
		var l struct {
			Notifications []subscription `json:"notifications"`
		}
		e.admin("GET", "/api/v1/notifications", nil, 200).json(t, &l)
		return l.Notifications
	}

	b.signIn(e.srv.HTTPURL, admin)
	b.do("open notifications", chromedp.Navigate(e.srv.HTTPURL+"/ui/#/notifications"))
	b.waitFor("the empty list and the form", `!!document.querySelector('#n-form') &&
		(document.querySelector('#n-body')||{textContent:''}).textContent.includes('No subscriptions')`, 20*time.Second)
	if _, err := b.eval(`window.__noReload = 'still here'`); err != nil {
		t.Fatal(err)
	}

	// A URL the API refuses: its 400 names the field, shown next to the URL input; nothing is created.
	b.do("submit a bad url", chromedp.SendKeys(chromedp.CSS("#nf-name"), "ops-hook"),
		chromedp.SendKeys(chromedp.CSS("#nf-url"), "ftp://example.test/hook"), chromedp.Click(chromedp.CSS("#nf-save")))
	b.waitFor("the error next to the URL", `!document.querySelector('[data-err="url"]').hidden`, 10*time.Second)
	if got := b.text(`[data-err="url"]`); !strings.Contains(got, "http") {
		t.Fatalf("error shown next to url: %q", got)
	}
	if v, _ := b.eval(`document.querySelector('[data-err="name"]').hidden && document.querySelector('#nf-msg').hidden`); v != true {
		t.Fatal("the url error shows elsewhere too")
	}
	if n := len(subscriptions()); n != 0 {
		t.Fatalf("%d subscriptions after a refused create", n)
	}
	b.snapshot("notification-error")

	// Fixed, and only for pauses: created, listed, the secret shown once.
	b.do("fix the url, only pauses", chromedp.SetValue(chromedp.CSS("#nf-url"), rcv.URL+"/hook"),
		chromedp.Click(chromedp.CSS(`input[name="nf-event"][value="failed"]`)),
		chromedp.Click(chromedp.CSS(`input[name="nf-event"][value="completed"]`)),
		chromedp.Click(chromedp.CSS(`input[name="nf-event"][value="rolled_back"]`)),
		chromedp.Click(chromedp.CSS("#nf-save")))
	b.waitFor("the secret", `(document.querySelector('#nf-secret')||{textContent:''}).textContent.length === 64`, 10*time.Second)
	secret := b.text("#nf-secret")
	subs := subscriptions()
	if len(subs) != 1 || subs[0].Name != "ops-hook" || subs[0].URL != rcv.URL+"/hook" || subs[0].Format != "json" ||
		!slices.Equal(subs[0].EventTypes, []string{"paused"}) {
		t.Fatalf("subscriptions after the form: %+v", subs)
	}
	sub := subs[0].ID
	row := fmt.Sprintf(`document.querySelector('#n-body tr[data-sub="%s"]')`, sub)
	b.waitFor("listed", row+` !== null && `+row+`.textContent.includes('ops-hook') && `+row+`.textContent.includes('none yet')`, 10*time.Second)
	if v, _ := b.eval(`[...document.querySelectorAll('[data-err]')].every(x => x.hidden)`); v != true {
		t.Fatal("the url error is still shown after a successful create")
	}

	// A paused rollout: the receiver gets it, signed with the secret the page showed, and the page
	// shows the delivery as delivered by itself.
	id, _, _ := e.fixture("in_progress")
	if r := e.httpVerb(admin, "pause", id, ""); r.Code != 200 || r.Status != "paused" {
		t.Fatalf("pause: %+v", r)
	}
	wait.For(t, 30*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		for _, h := range hits {
			if h.event == "image.rollout_paused" && strings.Contains(string(h.body), id) {
				m := hmac.New(sha256.New, []byte(secret))
				m.Write(h.body)
				if h.sig != "sha256="+hex.EncodeToString(m.Sum(nil)) {
					return fmt.Errorf("signature %s does not match the secret the page showed", h.sig)
				}
				return nil
			}
		}
		return fmt.Errorf("no paused notification for %s yet (%d hits)", id, len(hits))
	})
	b.waitFor("the latest delivery delivered in the list", row+`.querySelector('td.latest [data-status]').dataset.status === 'delivered'`, 20*time.Second)
	b.snapshot("notifications")
	b.do("open the subscription", chromedp.Click(chromedp.CSS(fmt.Sprintf(`#n-body tr[data-sub="%s"] td`, sub))))
	b.waitFor("its delivery, delivered at the first attempt with HTTP 200", `(() => {
		const rows = document.querySelectorAll('#nd-body tr[data-delivery]');
		return rows.length === 1 && rows[0].querySelector('[data-status]').dataset.status === 'delivered' &&
			rows[0].querySelector('.attempts').textContent === '1' && rows[0].querySelector('.code').textContent === '200' &&
			rows[0].textContent.includes('rollout paused');
	})()`, 20*time.Second)
	if v, _ := b.eval(`window.__noReload`); v != "still here" {
		t.Fatalf("the page was reloaded (marker %v): updates must arrive without one", v)
	}
	b.snapshot("notification-deliveries")

	// A read token: the list (URL cut to the host) and the deliveries, no form, no delete.
	b.signIn(e.srv.HTTPURL, read)
	b.do("open notifications read-only", chromedp.Navigate(e.srv.HTTPURL+"/ui/#/notifications"))
	b.waitFor("listed read-only", row+` !== null && `+row+`.querySelector('td.latest [data-status]').dataset.status === 'delivered'`, 20*time.Second)
	if v, _ := b.eval(`!!document.querySelector('#n-form') || document.querySelectorAll('button[data-delete]').length > 0 || !document.querySelector('#n-readonly')`); v != false {
		t.Fatal("a read token sees create or delete controls")
	}
	if txt, _ := b.eval(row + `.textContent`); !strings.Contains(fmt.Sprint(txt), strings.TrimPrefix(rcv.URL, "http://")+"/…") || strings.Contains(fmt.Sprint(txt), "/hook") {
		t.Fatalf("a read token sees the URL as %q, want it cut to the host", txt)
	}
	b.do("open the subscription read-only", chromedp.Navigate(e.srv.HTTPURL+"/ui/#/notifications/"+sub))
	b.waitFor("its delivery read-only", `document.querySelectorAll('#nd-body tr[data-delivery] [data-status="delivered"]').length === 1`, 20*time.Second)
	if v, _ := b.eval(`!!document.querySelector('#n-delete')`); v != false {
		t.Fatal("a read token sees the Delete button")
	}

	// The admin deletes it: cancelling the confirmation keeps it, confirming removes it.
	b.signIn(e.srv.HTTPURL, admin)
	b.do("open notifications", chromedp.Navigate(e.srv.HTTPURL+"/ui/#/notifications"))
	del := fmt.Sprintf(`button[data-delete="%s"]`, sub)
	b.do("delete, then cancel", chromedp.Click(chromedp.CSS(del)), chromedp.WaitVisible(chromedp.CSS("#modal-cancel")),
		chromedp.Click(chromedp.CSS("#modal-cancel")))
	b.waitFor("the dialog closed", `document.querySelector('#modal').hidden`, 10*time.Second)
	if n := len(subscriptions()); n != 1 {
		t.Fatalf("%d subscriptions after a cancelled delete", n)
	}
	b.do("delete, then confirm", chromedp.Click(chromedp.CSS(del)), chromedp.WaitVisible(chromedp.CSS("#modal-confirm")),
		chromedp.Click(chromedp.CSS("#modal-confirm")))
	b.waitFor("gone from the list", row+` === null && document.querySelector('#n-body').textContent.includes('No subscriptions')`, 10*time.Second)
	if n := len(subscriptions()); n != 0 {
		t.Fatalf("%d subscriptions after the delete", n)
	}
}
