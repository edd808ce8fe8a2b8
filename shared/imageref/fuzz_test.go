package imageref

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzParse: a reference that parses is normalised, storable, and parses back to itself from both of
// its printed forms.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"nginx", "nginx:1.25", "library/nginx", "docker.io/library/nginx:latest", "ghcr.io/Org/App:1.0",
		"localhost:5000/app:1.0", "localhost:5000/app", "acme/app:1.0@sha256:" + strings.Repeat("a", 64),
		"a/b/c/d:tag", "x\x00", "UPPER:Case", " spaced ", "@sha256:abc", "app:", ":tag",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		r, err := Parse(raw)
		if err != nil {
			return
		}
		if r.Repository == "" || r.Familiar == "" {
			t.Fatalf("Parse(%q) = %+v: empty name", raw, r)
		}
		for _, s := range []string{r.Repository, r.Familiar, r.Tag, r.Digest} {
			if !utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0 {
				t.Fatalf("Parse(%q) gave an unstorable part %q", raw, s)
			}
		}
		if r.Repository != strings.ToLower(r.Repository) {
			t.Fatalf("Parse(%q): repository %q is not lower-case", raw, r.Repository)
		}
		for _, printed := range []string{r.String(), r.Full()} {
			back, err := Parse(printed)
			if err != nil {
				t.Fatalf("Parse(%q) ok, but its printed form %q does not parse: %v", raw, printed, err)
			}
			if back != r {
				t.Fatalf("round trip of %q through %q: %+v != %+v", raw, printed, back, r)
			}
		}
	})
}
