package control

import (
	"testing"

	"github.com/fleetshift/fleetshift/shared/apierr"
)

// FuzzDecodeRequest: a control body (HTTP or NATS) is decoded or refused with a 400; what is accepted
// carries no text PostgreSQL cannot store.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{``, `{}`, `{"device_uuid":"d1"}`, `{"device_uuid":1}`, `{"device_uuid":"\u0000"}`, `[`, `null`, `{"device_uuids":["a","b"]}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := decodeRequest(body)
		if err != nil {
			if apierr.Status(err) != 400 {
				t.Fatalf("refusal is not a 400: %v", err)
			}
			return
		}
		for _, s := range append([]string{req.DeviceUUID}, req.DeviceUUIDs...) {
			if err := apierr.CheckText("device_uuid", s); err != nil {
				t.Fatalf("accepted unstorable text %q: %v", s, err)
			}
		}
	})
}
