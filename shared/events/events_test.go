package events

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/fleetshift/fleetshift/streams"
)

// encode must produce exactly what encoding/json makes of the streams.EventV1, so consumers see one
// format whichever path wrote an event.
func TestEncodeMatchesEncodingJSON(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 27, 18, 0, 0, 123400000, time.UTC)
	for _, e := range []Event{
		{Type: "image.device_scheduled", RolloutID: "r1", DeviceUUID: "d1", Message: "scheduled for acme/app:1.1"},
		{Type: "image.webhook_received", Message: `quote " backslash \ <tag> & ümlaut` + "\n\ttab"},
		{Type: "image.rollout_paused", RolloutID: "r2", Actor: "healthwatch"},
	} {
		data := []byte(`{"batch":1,"new_image":"acme/app:1.1"}`)
		want, err := json.Marshal(streams.EventV1{ID: "id-1", Type: e.Type, RolloutID: e.RolloutID, DeviceUUID: e.DeviceUUID,
			Message: e.Message, Data: data, Actor: e.Actor, Timestamp: now})
		if err != nil {
			t.Fatal(err)
		}
		if got := encode("id-1", e, data, now); string(got) != string(want) {
			t.Fatalf("encode\n%s\nencoding/json\n%s", got, want)
		}
	}
}
