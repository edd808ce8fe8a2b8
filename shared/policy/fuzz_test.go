package policy

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/fleetshift/fleetshift/shared/apierr"
)

// FuzzDecode: any body is either a valid policy whose batches split any fleet sensibly and whose text is
// storable, or a 400 naming a field in JSON terms, never a Go type.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"image_pattern":"acme/app:*","update_strategy":"staged","batch_percentages":[10,50,100]}`,
		`{"image_pattern":"acme/*","staged_batches":5,"batch_delay_seconds":0,"max_failure_rate":1}`,
		`{"image_pattern":"x","priority":99999999999}`, `{"image_pattern":"x\u0000"}`, `{"image_pattern":""}`,
		`{"image_pattern":"a","batch_percentages":[50,10]}`, `{"image_pattern":"a","timezone":"Europe/Berlin",
		"update_strategy":"scheduled","maintenance_window_start":"22:00","maintenance_window_end":"02:00"}`, `[]`, `{}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		p, err := Decode(body)
		if err != nil {
			if apierr.Status(err) != 400 {
				t.Fatalf("refusal is not a 400: %v", err)
			}
			var e *apierr.Error
			if !errors.As(err, &e) {
				t.Fatalf("refusal is not an *apierr.Error: %v", err)
			}
			for _, goWord := range []string{"int32", "int64", "float64", "struct", "policy.", "json.RawMessage"} {
				if strings.Contains(e.Message, goWord) {
					t.Fatalf("message names a Go type (%s): %s", goWord, e.Message)
				}
			}
			return
		}
		for _, s := range []string{p.ImagePattern, p.UpdateStrategy} {
			if !utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0 {
				t.Fatalf("accepted unstorable text %q", s)
			}
		}
		if p.ImagePattern == "" {
			t.Fatal("accepted an empty image_pattern")
		}
		for _, n := range []int{0, 1, 2, 5, 20, 1000} {
			sizes := p.BatchSizes(n)
			sum := 0
			for _, s := range sizes {
				if s <= 0 {
					t.Fatalf("BatchSizes(%d) of %s has an empty batch: %v", n, body, sizes)
				}
				sum += s
			}
			if sum != n {
				t.Fatalf("BatchSizes(%d) of %s covers %d devices: %v", n, body, sum, sizes)
			}
		}
	})
}
