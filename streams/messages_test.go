package streams

import (
	"encoding/json"
	"testing"
)

// TestDownloadErrorsOfAnotherShapeAreDropped: "downloadErrors" is informational; a value of another
// shape loses its entries but never makes the report unreadable.
func TestDownloadErrorsOfAnotherShapeAreDropped(t *testing.T) {
	for _, tc := range []struct {
		body string
		want map[string]string
	}{
		{`{"downloadErrors": {"acme/app:2.0": "pull access denied"}}`, map[string]string{"acme/app:2.0": "pull access denied"}},
		{`{"downloadErrors": {"acme/app:2.0": 42, "acme/db:2": "timeout"}}`, map[string]string{"acme/db:2": "timeout"}},
		{`{"downloadErrors": ["acme/app:2.0"]}`, nil},
		{`{"downloadErrors": "x"}`, nil},
		{`{"other": 1}`, nil},
	} {
		var r DeviceReport
		if err := json.Unmarshal([]byte(`{"apps": {}, "version": 3, `+tc.body[1:]), &r); err != nil {
			t.Fatalf("%s: %v", tc.body, err)
		}
		if r.TargetVersion != 3 || len(r.DownloadErrors) != len(tc.want) {
			t.Fatalf("%s: version %d, errors %v, want %v", tc.body, r.TargetVersion, r.DownloadErrors, tc.want)
		}
		for k, v := range tc.want {
			if r.DownloadErrors[k] != v {
				t.Fatalf("%s: errors %v, want %v", tc.body, r.DownloadErrors, tc.want)
			}
		}
	}
}
