package device_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/fleetshift/fleetshift/agent/device"
	"github.com/fleetshift/fleetshift/agent/internal/fleettest"
)

// pullRuntime is memRuntime that can also pull ahead; its first failFirst pulls fail.
type pullRuntime struct {
	*memRuntime
	pmu       sync.Mutex
	failFirst int
	pulls     []string
}

func (p *pullRuntime) Pull(_ context.Context, image string) error {
	p.pmu.Lock()
	defer p.pmu.Unlock()
	p.pulls = append(p.pulls, image)
	if len(p.pulls) <= p.failFirst {
		return errors.New("registry unreachable")
	}
	return nil
}

func (p *pullRuntime) Pulls() []string {
	p.pmu.Lock()
	defer p.pmu.Unlock()
	return slices.Clone(p.pulls)
}

// TestPrefetchPullsWithoutApplyingAndReportsDownloaded: a target whose only change is a prefetch entry
// makes the agent pull that image and nothing else: the services keep running their image, the failed
// first pull is reported (downloadErrors) and retried, and then the report says downloaded. When the
// image is then dispatched (in services, the entry gone) the report no longer lists it.
func TestPrefetchPullsWithoutApplyingAndReportsDownloaded(t *testing.T) {
	t.Parallel()
	srv := fleettest.New(t, fleettest.Options{NoNATS: true})
	rt := &pullRuntime{failFirst: 1}
	s := start(t, srv, func(c *device.Config) {
		c.DisableNATS = true
		rt.memRuntime = c.Runtime.(*memRuntime)
		c.Runtime = rt
	})
	apps := fleettest.Images("acme/app:1.0")
	srv.SetTarget(s.uuid, apps)
	fleettest.Eventually(t, 10*time.Second, func() error { return reportedImage(srv, s.uuid, 1, "acme/app:1.0") })

	srv.SetTargetPrefetch(s.uuid, apps, "acme/app:2.0")
	fleettest.Eventually(t, 10*time.Second, func() error {
		for _, r := range srv.Reports(s.uuid) {
			if r.Report.Version == 2 && r.Report.DownloadErrors["acme/app:2.0"] != "" && len(r.Report.Downloaded) == 0 {
				return nil
			}
		}
		return errors.New("no report of the failed pull")
	})
	fleettest.Eventually(t, 10*time.Second, func() error {
		if err := reportedImage(srv, s.uuid, 2, "acme/app:1.0"); err != nil {
			return err
		}
		r, _ := srv.LastReport(s.uuid)
		if !slices.Equal(r.Report.Downloaded, []string{"acme/app:2.0"}) || len(r.Report.DownloadErrors) != 0 {
			return fmt.Errorf("last report downloaded %v errors %v", r.Report.Downloaded, r.Report.DownloadErrors)
		}
		return nil
	})
	if got := rt.Pulls(); len(got) != 2 || got[0] != "acme/app:2.0" || got[1] != "acme/app:2.0" {
		t.Fatalf("pulls %v, want the prefetch image twice (failed, retried)", got)
	}
	// The containers were never touched: every apply ran acme/app:1.0.
	if st, _ := rt.State(context.Background()); st["1"].Services[0].ImageName != "acme/app:1.0" {
		t.Fatalf("running %+v after the prefetch", st)
	}

	srv.SetTarget(s.uuid, fleettest.Images("acme/app:2.0"))
	fleettest.Eventually(t, 10*time.Second, func() error {
		if err := reportedImage(srv, s.uuid, 3, "acme/app:2.0"); err != nil {
			return err
		}
		if r, _ := srv.LastReport(s.uuid); len(r.Report.Downloaded) != 0 {
			return fmt.Errorf("still reports downloaded %v without a prefetch entry", r.Report.Downloaded)
		}
		return nil
	})
	if n := len(rt.Pulls()); n != 2 {
		t.Fatalf("%d pulls, want 2: nothing more to pull ahead", n)
	}
}
