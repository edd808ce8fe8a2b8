package imageref

import "testing"

func TestParse(t *testing.T) {
	t.Parallel()
	cases := []struct {
		in                          string
		repo, familiar, tag, digest string
	}{
		{"nginx", "docker.io/library/nginx", "nginx", "", ""},
		{"nginx:1.25", "docker.io/library/nginx", "nginx", "1.25", ""},
		{"docker.io/library/nginx:1.25", "docker.io/library/nginx", "nginx", "1.25", ""},
		{"library/nginx", "docker.io/library/nginx", "nginx", "", ""},
		{"acme/app:2.0", "docker.io/acme/app", "acme/app", "2.0", ""},
		{"ghcr.io/Octo-Org/Team/App:V1", "ghcr.io/octo-org/team/app", "ghcr.io/octo-org/team/app", "V1", ""},
		{"localhost:5000/app", "localhost:5000/app", "localhost:5000/app", "", ""},
		{"localhost:5000/app:1.0", "localhost:5000/app", "localhost:5000/app", "1.0", ""},
		{"registry.example.com:8443/group/sub/app:3@sha256:" + d64, "registry.example.com:8443/group/sub/app", "registry.example.com:8443/group/sub/app", "3", "sha256:" + d64},
		{"acme/app@sha256:" + d64, "docker.io/acme/app", "acme/app", "", "sha256:" + d64},
	}
	for _, c := range cases {
		r, err := Parse(c.in)
		if err != nil {
			t.Fatalf("Parse(%q): %v", c.in, err)
		}
		if r.Repository != c.repo || r.Familiar != c.familiar || r.Tag != c.tag || r.Digest != c.digest {
			t.Errorf("Parse(%q) = %+v, want repo %q familiar %q tag %q digest %q", c.in, r, c.repo, c.familiar, c.tag, c.digest)
		}
	}
	for _, bad := range []string{"", "  ", "UPPER:tag:extra", "a//b", "app:", "-app"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q): want error", bad)
		}
	}
}

const d64 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
