package target

import (
	"encoding/json"
	"testing"
)

// FuzzParseApps: an apps object that parses lists its images without error, and survives a JSON round
// trip with the same images (what the writers store is what readers get back).
func FuzzParseApps(f *testing.F) {
	for _, s := range []string{
		`{"1":{"appId":1,"appName":"app","services":[{"serviceId":1,"serviceName":"web","imageName":"acme/app:1.0","config":{"image":"acme/app:1.0"}}]}}`,
		`{"1":{"services":[{"config":{"image":"nginx"}}]}}`, `{"1":{"services":{}}}`, `{"1":1}`, `{}`, `null`, `[]`,
		`{"1":{"services":[{"imageName":"x\u0000"}]}}`, `{"1":{"services":[{"imageName":"ghcr.io/A/B:1"}]}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		apps, err := ParseApps(raw)
		if err != nil {
			return
		}
		imgs, err := Images(apps)
		if err != nil {
			t.Fatalf("ParseApps(%s) ok but Images fails: %v", raw, err)
		}
		enc, err := json.Marshal(apps)
		if err != nil {
			t.Fatalf("ParseApps(%s) ok but the apps do not encode: %v", raw, err)
		}
		again, err := ParseApps(enc)
		if err != nil {
			t.Fatalf("re-parse of %s: %v", enc, err)
		}
		imgs2, err := Images(again)
		if err != nil || len(imgs2) != len(imgs) {
			t.Fatalf("round trip changed the images: %v / %d vs %d", err, len(imgs2), len(imgs))
		}
		for i := range imgs {
			if imgs[i].Ref != imgs2[i].Ref || imgs[i].AppID != imgs2[i].AppID {
				t.Fatalf("round trip changed image %d: %+v vs %+v", i, imgs[i], imgs2[i])
			}
		}
	})
}
