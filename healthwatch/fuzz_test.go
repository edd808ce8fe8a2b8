package healthwatch

import (
	"testing"
	"time"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/consume"
	"github.com/fleetshift/fleetshift/streams"
)

// FuzzParseReport: a report message from the REPORTS stream (what a device publishes over NATS, or
// stateapi for an HTTP PATCH) is either applied with storable text only, ignored, or refused with a
// permanent error that dead-letters it; it can never be a message the consumer retries forever.
func FuzzParseReport(f *testing.F) {
	for _, s := range []string{
		`{"d1":{"apps":{"1":{"services":[{"imageName":"acme/app:1.1","status":"running","health":{"status":"healthy"}}]}}}}`,
		`{"d1":{"apps":{"1":{"services":{"web":{"imageName":"x","status":"exited"}}}}}}`,
		`{"d1":{"apps":{"1":{"services":[{"imageName":"x\u0000","status":"running"}]}}}}`,
		`{"d2":{"apps":{}}}`, `{"d1":{"apps":{"1":{"services":[{"imageName":"\ud800"}]}}}}`, `[`, `{}`, `null`,
		`{"d1":{"apps":{"1":{"services":[{"health":"healthy"}]}}}}`,
		`{"d1":{"apps":{},"version":3,"downloaded":["acme/app:2.0"],"downloadErrors":{"acme/app:2.1":"pull failed"}}}`,
		`{"d1":{"apps":{},"downloaded":"acme/app:2.0"}}`, `{"d1":{"apps":{},"downloaded":["a\u0000b"]}}`,
	} {
		f.Add("fleet.device.d1.state", []byte(s))
	}
	f.Add("fleet.device.d\x001.state", []byte(`{}`))
	f.Add("fleet.other", []byte(`{}`))
	s := &Service{subj: streams.New("fleet")}
	f.Fuzz(func(t *testing.T, subject string, data []byte) {
		rep, ok, err := s.parseReport(subject, data, time.Now())
		if err != nil {
			if _, permanent := consume.Classify(err); !permanent {
				t.Fatalf("a report that can never be stored is refused as transient: %v", err)
			}
			return
		}
		if !ok {
			return
		}
		if err := apierr.CheckText("device", rep.device); err != nil {
			t.Fatalf("accepted device %q: %v", rep.device, err)
		}
		if err := apierr.CheckJSONText(rep.raw, "report"); err != nil {
			t.Fatalf("accepted a report jsonb refuses: %v", err)
		}
		for _, img := range rep.body.Downloaded {
			if err := apierr.CheckText("downloaded", img); err != nil {
				t.Fatalf("accepted downloaded image %q: %v", img, err)
			}
		}
		for _, app := range rep.body.Apps {
			for _, svc := range app.Services {
				for _, txt := range []string{svc.ImageName, svc.Status, svc.ServiceName, svc.Error} {
					if err := apierr.CheckText("service", txt); err != nil {
						t.Fatalf("accepted service text %q: %v", txt, err)
					}
				}
			}
		}
	})
}
