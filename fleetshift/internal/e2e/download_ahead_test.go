package e2e

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/fleetshift/fleetshift/agent/sim"
	"github.com/fleetshift/fleetshift/shared/wait"
)

// TestDownloadAheadPullsBeforeTheWindowAndSwitchesInside: a scheduled download_ahead rollout pushed
// outside its maintenance window has every simulated device pull the new image at once (each row gets
// downloaded_at, downloaded_devices counts them, image.device_downloaded names them) while their targets
// still run the old image and nothing is dispatched; inside the window the devices switch and the
// rollout completes, with no prefetch entry left. The API and the CLI show the download; download_ahead
// on another strategy is refused and stores nothing. A device registering before the window joins and
// downloads ahead as well.
func TestDownloadAheadPullsBeforeTheWindowAndSwitchesInside(t *testing.T) {
	t.Parallel()
	berlin, clock := berlinClock(t, 12)
	e := newEnv(t)
	e.startClocked(clock, 0)
	r := e.admin("POST", "/api/v1/image-policies", stagedPolicy(map[string]any{"download_ahead": true}), 400)
	if !strings.Contains(string(r.body), `"download_ahead"`) || e.countRows(`SELECT count(*) FROM image_update_policies`) != 0 {
		t.Fatalf("download_ahead on a staged policy: %s", r.body)
	}
	e.admin("POST", "/api/v1/image-policies", scheduledPolicy(map[string]any{"download_ahead": true, "batch_delay_seconds": 0}), 201)
	const n = 6
	// Pulls take long enough that a switch from an image already there is visibly not a pull.
	s := e.runSim("ahead", n, []string{"acme/app:1.0"}, func(c *sim.Config) { c.PullMin, c.PullMax = 300*time.Millisecond, 600*time.Millisecond })
	waitSim(t, s, 60*time.Second, func(c sim.Counters) bool { return c.ByImage["acme/app:1.0"] == n })

	e.push("acme/app", "2.0")
	id := e.latestRollout("acme/app:2.0")
	wait.For(t, 60*time.Second, func() error {
		if got := e.countRows(`SELECT count(*) FROM device_rollout_status WHERE rollout_id = $1 AND downloaded_at IS NOT NULL`, id); got != n {
			return fmt.Errorf("%d of %d devices downloaded", got, n)
		}
		if got := e.countRows(`SELECT downloaded_devices FROM image_rollouts WHERE rollout_id = $1`, id); got != n {
			return fmt.Errorf("downloaded_devices %d, want %d", got, n)
		}
		return nil
	})
	if c := s.Counters(); c.PulledAhead["acme/app:2.0"] != n || c.ByImage["acme/app:1.0"] != n {
		t.Fatalf("simulator after the download: %s, pulled ahead %v", c, c.PulledAhead)
	}
	if ro := e.rollout(id); ro.Status != "scheduled" || ro.CurrentBatch != 0 || e.movedTargets("acme/app:2.0") != 0 ||
		e.deviceStatuses(id)["pending"] != n {
		t.Fatalf("dispatched before the window: %+v, %d targets moved, %v", ro, e.movedTargets("acme/app:2.0"), e.deviceStatuses(id))
	}
	if got := e.countRows(`SELECT count(*) FROM device_target_state WHERE prefetch @> jsonb_build_array(jsonb_build_object(
		'image', 'acme/app:2.0', 'rollout_id', $1::text))`, id); got != n {
		t.Fatalf("%d targets carry the prefetch entry, want %d", got, n)
	}
	if got := e.countRows(`SELECT coalesce(sum((data->>'count')::int), 0) FROM rollout_events
		WHERE rollout_id = $1 AND event_type = 'image.device_downloaded'`, id); got != n {
		t.Fatalf("image.device_downloaded events name %d devices, want %d", got, n)
	}
	var view struct {
		Downloaded int `json:"downloaded_devices"`
	}
	e.admin("GET", "/api/v1/rollouts/"+id, nil, 200).json(t, &view)
	var devs struct {
		Devices []struct {
			UUID         string     `json:"device_uuid"`
			DownloadedAt *time.Time `json:"downloaded_at"`
		} `json:"devices"`
	}
	e.admin("GET", "/api/v1/rollouts/"+id+"/devices", nil, 200).json(t, &devs)
	if view.Downloaded != n || len(devs.Devices) != n {
		t.Fatalf("API: downloaded_devices %d, %d device rows", view.Downloaded, len(devs.Devices))
	}
	for _, d := range devs.Devices {
		if d.DownloadedAt == nil {
			t.Fatalf("API: device %s has no downloaded_at", d.UUID)
		}
	}
	var tgt struct {
		Apps     map[string]any `json:"apps"`
		Prefetch []struct {
			Image     string `json:"image"`
			RolloutID string `json:"rollout_id"`
		} `json:"prefetch"`
	}
	e.admin("GET", "/api/v1/devices/"+devs.Devices[0].UUID+"/target-state", nil, 200).json(t, &tgt)
	if len(tgt.Prefetch) != 1 || tgt.Prefetch[0].Image != "acme/app:2.0" || tgt.Prefetch[0].RolloutID != id {
		t.Fatalf("API target-state prefetch %+v", tgt.Prefetch)
	}
	var out syncBuffer
	if err := e.fleetshift(context.Background(), &out, e.srv.AdminToken, "rollouts", "devices", id); err != nil {
		t.Fatalf("rollouts devices: %v\n%s", err, out.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != n+1 || !strings.Contains(lines[0], "DOWNLOADED") || !strings.Contains(lines[1], time.Now().UTC().Format("2006-")) {
		t.Fatalf("rollouts devices table:\n%s", out.String())
	}

	// A device registering now, still before the window, joins the rollout and downloads ahead too.
	late := e.runSim("late", 1, []string{"acme/app:1.0"}, nil)
	wait.For(t, 60*time.Second, func() error {
		if got := e.countRows(`SELECT count(*) FROM device_rollout_status WHERE rollout_id = $1 AND downloaded_at IS NOT NULL`, id); got != n+1 {
			return fmt.Errorf("%d of %d devices downloaded (the late joiner too)", got, n+1)
		}
		return nil
	})
	if c := late.Counters(); c.PulledAhead["acme/app:2.0"] != 1 || c.ByImage["acme/app:1.0"] != 1 {
		t.Fatalf("late joiner: %s, pulled ahead %v", c, c.PulledAhead)
	}

	// 23:30 Berlin: inside the window. Every device switches; the rollout completes; no entry is left.
	clock.Set(time.Date(2030, 1, 15, 23, 30, 0, 0, berlin))
	e.waitStatus(id, 90*time.Second, "completed")
	waitSim(t, s, 30*time.Second, func(c sim.Counters) bool { return c.ByImage["acme/app:2.0"] == n })
	waitSim(t, late, 30*time.Second, func(c sim.Counters) bool { return c.ByImage["acme/app:2.0"] == 1 })
	if got := e.countRows(`SELECT count(*) FROM device_target_state WHERE prefetch <> '[]'::jsonb`); got != 0 {
		t.Fatalf("%d targets still carry a prefetch entry after the rollout", got)
	}
	if ro := e.rollout(id); ro.Updated != n+1 || e.countRows(`SELECT downloaded_devices FROM image_rollouts WHERE rollout_id = $1`, id) != n+1 {
		t.Fatalf("completed rollout: %+v", ro)
	}
}

// TestCancelledDownloadAheadRolloutClearsPrefetch: devices polling over HTTP get the prefetch entry and
// download; cancelling the rollout while it waits for its window removes the prefetch entries of its devices (a new target version each), the devices stop
// reporting the image downloaded, and nothing ever moves to the new image.
func TestCancelledDownloadAheadRolloutClearsPrefetch(t *testing.T) {
	t.Parallel()
	berlin, clock := berlinClock(t, 12)
	e := newEnv(t)
	e.startClocked(clock, 0)
	e.admin("POST", "/api/v1/image-policies", scheduledPolicy(map[string]any{"download_ahead": true}), 201)
	const n = 3
	// Over HTTP polling: the prefetch entry reaches devices in the polled document too.
	s := e.runSim("cancel-ahead", n, []string{"acme/app:1.0"}, func(c *sim.Config) { c.Transport = sim.TransportHTTP })
	waitSim(t, s, 60*time.Second, func(c sim.Counters) bool { return c.ByImage["acme/app:1.0"] == n })
	e.push("acme/app", "2.0")
	id := e.latestRollout("acme/app:2.0")
	wait.For(t, 60*time.Second, func() error {
		if got := e.countRows(`SELECT downloaded_devices FROM image_rollouts WHERE rollout_id = $1`, id); got != n {
			return fmt.Errorf("downloaded_devices %d, want %d", got, n)
		}
		return nil
	})
	versions := e.countRows(`SELECT sum(version)::int FROM device_target_state`)

	_, op := e.operatorToken("canceller", "operate")
	if r := e.httpVerb(op, "cancel", id, ""); r.Code != 200 || r.Status != "cancelled" {
		t.Fatalf("cancel: %+v", r)
	}
	if got := e.countRows(`SELECT count(*) FROM device_target_state WHERE prefetch <> '[]'::jsonb`); got != 0 {
		t.Fatalf("%d targets still carry a prefetch entry after the cancel", got)
	}
	if got := e.countRows(`SELECT sum(version)::int FROM device_target_state`); got != versions+n {
		t.Fatalf("target versions sum %d after the cancel, want %d (one new version per device)", got, versions+n)
	}
	// The devices hear of it: their current state no longer lists the image downloaded.
	wait.For(t, 30*time.Second, func() error {
		if got := e.countRows(`SELECT count(*) FROM device_current_state WHERE report ? 'downloaded'`); got != 0 {
			return fmt.Errorf("%d devices still report downloaded", got)
		}
		return nil
	})
	// Inside the window nothing moves: the rollout is over.
	clock.Set(time.Date(2030, 1, 15, 23, 30, 0, 0, berlin))
	time.Sleep(2 * time.Second)
	if e.movedTargets("acme/app:2.0") != 0 || s.Counters().ByImage["acme/app:1.0"] != n {
		t.Fatalf("a cancelled rollout moved devices: %s", s.Counters())
	}
}

// reportOverHTTP sends device dev's report (key: its API key) over HTTP: its web service running image,
// plus the fields of extra; it fails the test unless the report is taken.
func (e *env) reportOverHTTP(dev, key, image string, extra map[string]any) {
	e.t.Helper()
	body := map[string]any{"apps": map[string]any{"1": map[string]any{"services": []any{
		map[string]any{"serviceName": "web", "imageName": image, "status": "running"}}}}}
	maps.Copy(body, extra)
	if r := e.call("PATCH", "/api/v1/device/state", map[string]any{dev: body}, map[string]string{"Authorization": "Bearer " + key}); r.status != 200 {
		e.t.Fatalf("report of %s: %d %s", dev, r.status, r.body)
	}
}

// TestDownloadErrorsShowUntilTheDownload: a device of a download-ahead rollout whose pull fails says
// why in its report (downloadErrors); the rollout's device row carries it (download_error, the CLI's
// REASON) while the device retries, and the download that follows replaces it. The error moves nothing.
func TestDownloadErrorsShowUntilTheDownload(t *testing.T) {
	t.Parallel()
	_, clock := berlinClock(t, 12)
	e := newEnv(t)
	e.startClocked(clock, 0)
	e.admin("POST", "/api/v1/image-policies", scheduledPolicy(map[string]any{"download_ahead": true}), 201)
	const dev = "dl-err-1"
	key := e.addDevice(dev, "plant-dl", "acme/app:1.0")
	e.push("acme/app", "2.0")
	id := e.latestRollout("acme/app:2.0")
	report := func(extra map[string]any) { e.reportOverHTTP(dev, key, "acme/app:1.0", extra) }
	type row struct {
		Status        string     `json:"status"`
		DownloadError *string    `json:"download_error"`
		DownloadedAt  *time.Time `json:"downloaded_at"`
	}
	read := func() row {
		var r row
		e.admin("GET", "/api/v1/rollouts/"+id+"/devices/"+dev, nil, 200).json(t, &r)
		return r
	}
	const why = "pull access denied for acme/app, repository does not exist or may require 'docker login'"
	report(map[string]any{"downloadErrors": map[string]any{"acme/app:2.0": why}})
	wait.For(t, 30*time.Second, func() error {
		if r := read(); r.DownloadError == nil || *r.DownloadError != why {
			return fmt.Errorf("device row %+v: no download error yet", r)
		}
		return nil
	})
	if r := read(); r.Status != "pending" || r.DownloadedAt != nil {
		t.Fatalf("after a failed download: %+v", r)
	}
	if ro := e.rollout(id); ro.Status != "scheduled" || e.countRows(`SELECT downloaded_devices FROM image_rollouts WHERE rollout_id = $1`, id) != 0 {
		t.Fatalf("a failed download moved the rollout: %+v", ro)
	}
	var out syncBuffer
	if err := e.fleetshift(context.Background(), &out, e.srv.AdminToken, "rollouts", "devices", id); err != nil {
		t.Fatalf("rollouts devices: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "download failed: pull access denied") {
		t.Fatalf("rollouts devices does not say why the download failed:\n%s", out.String())
	}

	report(map[string]any{"downloaded": []string{"acme/app:2.0"}})
	wait.For(t, 30*time.Second, func() error {
		if r := read(); r.DownloadedAt == nil || r.DownloadError != nil {
			return fmt.Errorf("device row %+v: want downloaded, no error", r)
		}
		return nil
	})
}

// TestConsoleShowsDownloadAheadInBrowser: a download-ahead rollout waiting for its window shows, live on
// its console page, how many of its devices have the new image already; each device's row says when it
// downloaded, or why its download failed.
//
// Not parallel: a browser next to the large simulated fleets of the other tests starves a 2-core machine.
func TestConsoleShowsDownloadAheadInBrowser(t *testing.T) {
	b := newBrowser(t)
	_, clock := berlinClock(t, 12)
	e := newEnv(t)
	e.startClocked(clock, 0)
	e.admin("POST", "/api/v1/image-policies", scheduledPolicy(map[string]any{"download_ahead": true}), 201)
	_, read := e.operatorToken("console-viewer", "read")
	const n = 3
	s := e.runSim("ahead", n, []string{"acme/app:1.0"}, func(c *sim.Config) { c.PullMin, c.PullMax = 2*time.Second, 3*time.Second })
	waitSim(t, s, 60*time.Second, func(c sim.Counters) bool { return c.ByImage["acme/app:1.0"] == n })

	// One more device, whose pull fails (it says so in its report).
	key := e.addDevice("dl-fails", "ahead", "acme/app:1.0")

	e.push("acme/app", "2.0")
	id := e.latestRollout("acme/app:2.0")
	e.reportOverHTTP("dl-fails", key, "acme/app:1.0", map[string]any{"downloadErrors": map[string]any{"acme/app:2.0": "no space left on device"}})
	b.signIn(e.srv.HTTPURL, read)
	b.do("open the rollout", chromedp.Navigate(e.srv.HTTPURL+"/ui/#/rollouts/"+id))
	b.waitFor("rollout page", `!!document.querySelector('#r-downloaded')`, 20*time.Second)
	// The pulls take seconds: the page is open before they end and follows them without a reload.
	if _, err := b.eval(`window.__noReload = 'still here'`); err != nil {
		t.Fatal(err)
	}
	b.waitFor("every download on screen", fmt.Sprintf(`document.querySelector('#r-downloaded').textContent === '%d of %d downloaded ahead'
		&& document.querySelectorAll('#r-devices [data-downloaded]').length === %d`, n, n+1, n), 60*time.Second)
	b.waitFor("the failed download with its reason", `[...document.querySelectorAll('#r-devices [data-download-error]')].some(x =>
		x.textContent === 'download failed: no space left on device')`, 20*time.Second)
	if v, _ := b.eval(`window.__noReload`); v != "still here" {
		t.Fatal("the page reloaded")
	}
	if ro := e.rollout(id); ro.Status != "scheduled" || e.movedTargets("acme/app:2.0") != 0 {
		t.Fatalf("rollout %+v with %d targets moved: the window has not opened", ro, e.movedTargets("acme/app:2.0"))
	}
}
