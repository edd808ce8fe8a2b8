// Package imageref normalises container image references the way Docker does, so that "nginx",
// "library/nginx" and "docker.io/library/nginx" are one repository.
package imageref

import (
	"fmt"
	"strings"

	"github.com/distribution/reference"
)

// Ref is a normalised image reference.
type Ref struct {
	// Repository is the full normalised name: docker.io/library/nginx, ghcr.io/org/app, localhost:5000/app.
	Repository string
	// Familiar is the short form operators write: nginx, acme/app, ghcr.io/org/app.
	Familiar string
	// Tag is empty when the reference has none.
	Tag string
	// Digest is "sha256:..." or empty.
	Digest string
}

// Parse normalises raw. Upper-case letters in the name are lower-cased first (GHCR owners may be
// upper-case in payloads; image references are lower-case); the tag keeps its case.
func Parse(raw string) (Ref, error) {
	s := strings.TrimSpace(raw)
	if s == "" {
		return Ref{}, fmt.Errorf("image reference is empty")
	}
	name, rest := splitNameRest(s)
	named, err := reference.ParseNormalizedNamed(strings.ToLower(name) + rest)
	if err != nil {
		return Ref{}, fmt.Errorf("image reference %q: %w", raw, err)
	}
	r := Ref{Repository: named.Name(), Familiar: reference.FamiliarName(named)}
	if t, ok := named.(reference.Tagged); ok {
		r.Tag = t.Tag()
	}
	if d, ok := named.(reference.Digested); ok {
		r.Digest = d.Digest().String()
	}
	return r, nil
}

// ParseRepository normalises a repository name that carries no tag or digest.
func ParseRepository(raw string) (Ref, error) {
	r, err := Parse(raw)
	if err != nil {
		return Ref{}, err
	}
	if r.Tag != "" || r.Digest != "" {
		return Ref{}, fmt.Errorf("repository %q: must not carry a tag or digest", raw)
	}
	return r, nil
}

// splitNameRest splits s into the name and the ":tag" / "@digest" suffix. The tag separator is the
// last ':' after the last '/', so "localhost:5000/app" has no tag.
func splitNameRest(s string) (string, string) {
	end := len(s)
	if i := strings.IndexByte(s, '@'); i >= 0 {
		end = i
	}
	slash := strings.LastIndexByte(s[:end], '/')
	if c := strings.LastIndexByte(s[:end], ':'); c > slash {
		end = c
	}
	return s[:end], s[end:]
}

// String renders the reference as repo[:tag][@digest] using the familiar repository name.
func (r Ref) String() string { return r.Familiar + r.suffix() }

// Full renders the reference with the full repository name.
func (r Ref) Full() string { return r.Repository + r.suffix() }

func (r Ref) suffix() string {
	s := ""
	if r.Tag != "" {
		s += ":" + r.Tag
	}
	if r.Digest != "" {
		s += "@" + r.Digest
	}
	return s
}

// WithTag returns r with tag and digest replaced.
func (r Ref) WithTag(tag, digest string) Ref {
	r.Tag, r.Digest = tag, digest
	return r
}
