package match_test

import (
	"testing"

	"github.com/fleetshift/fleetshift/shared/imageref"
	"github.com/fleetshift/fleetshift/shared/match"
)

func ref(t *testing.T, s string) imageref.Ref {
	t.Helper()
	r, err := imageref.Parse(s)
	if err != nil {
		t.Fatalf("parse %q: %v", s, err)
	}
	return r
}

func TestMatch(t *testing.T) {
	t.Parallel()
	cases := []struct {
		pattern, image string
		want           bool
	}{
		// Anchored, one segment per *.
		{"acme/*", "acme/app:1.0", true},
		{"acme/*", "evilacme/x:1", false},
		{"acme/*", "acme/a/b:1", false},
		{"acme/*", "acmex/app:1", false},
		{"acme/*", "docker.io/acme/app:1", true},
		{"acme/*", "ghcr.io/acme/app:1", false},
		// Tag part.
		{"myapp:*", "myapp:1", true},
		{"myapp:*", "myapp-evil:1", false},
		{"myapp", "myapp-evil:1", false},
		{"iotistic/myapp:*", "iotistic/myapp:2.0", true},
		{"acme/app:1.*", "acme/app:1.4", true},
		{"acme/app:1.*", "acme/app:2.0", false},
		{"acme/app:v1.2", "acme/app:v1.2", true},
		{"acme/app:v1.2", "acme/app:v1.20", false},
		{"acme/app:*-rc*", "acme/app:2.0-rc1", true},
		// Docker normalisation.
		{"nginx", "docker.io/library/nginx:1.25", true},
		{"nginx", "nginx:1.25", true},
		{"library/nginx", "nginx:1.25", true},
		{"docker.io/library/nginx", "nginx:latest", true},
		{"docker.io/nginx", "nginx:latest", true},
		{"index.docker.io/library/nginx", "nginx:latest", true},
		{"docker.io/library/nginx:1.25", "nginx:1.25", true},
		{"nginx", "acme/nginx:1", false},
		{"NGINX", "nginx:1", true},
		{"*", "nginx:1", true},
		{"*", "acme/app:1", false},
		// Registries.
		{"ghcr.io/org/*", "ghcr.io/org/app:1", true},
		{"ghcr.io/org/*", "ghcr.io/Org/app:1", true},
		{"ghcr.io/org/*", "docker.io/org/app:1", false},
		{"localhost:5000/app", "localhost:5000/app:1", true},
		{"localhost:5000/*", "localhost:5000/app:1", true},
		{"localhost:5000/app", "localhost:5001/app:1", false},
		{"*.gcr.io/proj/*", "eu.gcr.io/proj/app:1", true},
		// ** crosses '/'.
		{"acme/**", "acme/a/b:1", true},
		{"acme/**", "acme/app:1", true},
		{"acme/**", "evilacme/app:1", false},
		{"ghcr.io/org/**", "ghcr.io/org/team/app:1", true},
		{"**", "ghcr.io/org/team/app:1", true},
		{"**/app", "ghcr.io/org/app:1", true},
		{"**/app", "ghcr.io/org/myapp:1", false},
		{"**:1.0", "quay.io/x/y:1.0", true},
		{"**:1.0", "quay.io/x/y:1.1", false},
	}
	for _, c := range cases {
		p, err := match.Compile(c.pattern)
		if err != nil {
			t.Fatalf("compile %q: %v", c.pattern, err)
		}
		if got := p.Match(ref(t, c.image)); got != c.want {
			t.Errorf("%q matches %q = %v, want %v (normalised pattern %q)", c.pattern, c.image, got, c.want, p.Normalised())
		}
	}
}

func TestMatchRepositoryAndTag(t *testing.T) {
	t.Parallel()
	p, err := match.Compile("acme/app:1.*")
	if err != nil {
		t.Fatal(err)
	}
	if !p.MatchRepository("docker.io/acme/app") || p.MatchRepository("docker.io/acme/app2") {
		t.Fatal("MatchRepository")
	}
	if !p.MatchTag("1.9") || p.MatchTag("2.0") {
		t.Fatal("MatchTag")
	}
	all, _ := match.Compile("acme/app")
	if !all.MatchTag("anything") || !all.MatchTag("") || all.HasTag() {
		t.Fatal("a pattern without a tag part admits every tag")
	}
}

func TestCompileRejects(t *testing.T) {
	t.Parallel()
	for _, bad := range []string{"", "  ", "acme//app", "acme/app:", "acme/app@sha256:abc", "acme/a b", "acme/app:ta/g",
		"acme/***", "acme/ap$p", "acme/app:" + string(make([]byte, 129)), "/acme", "acme/"} {
		if _, err := match.Compile(bad); err == nil {
			t.Errorf("Compile(%q) accepted a bad pattern", bad)
		}
	}
}

func TestSpecificity(t *testing.T) {
	t.Parallel()
	// Each pattern is strictly more specific than the next, and all match acme/app:1.2.
	order := []string{
		"acme/app:1.2",
		"acme/app:1.*",
		"acme/app:*",
		"acme/app",
		"acme/ap*",
		"acme/*",
		"acme/**",
		"**",
	}
	img := ref(t, "acme/app:1.2")
	var prev match.Pattern
	for i, s := range order {
		p, err := match.Compile(s)
		if err != nil {
			t.Fatal(err)
		}
		if !p.Match(img) {
			t.Fatalf("%q should match %s", s, img)
		}
		if i > 0 && !match.MoreSpecific(prev, p) {
			t.Errorf("%q (%d) should be more specific than %q (%d)", prev, prev.Specificity(), s, p.Specificity())
		}
		prev = p
	}
	a, _ := match.Compile("nginx")
	b, _ := match.Compile("docker.io/library/nginx")
	if a.Specificity() != b.Specificity() {
		t.Fatal("equivalent patterns must rank the same")
	}
}

func TestSemver(t *testing.T) {
	t.Parallel()
	cases := []struct {
		rng, tag string
		want     bool
	}{
		{"", "1.2.3", true},
		{"", "v1.2.3", true},
		{"", "latest", false},
		{"", "1.2.3-rc.1", false}, // pre-releases only when the range names one
		{">=2.0.0 <3.0.0", "2.5.0", true},
		{">=2.0.0 <3.0.0", "v2.5.0", true},
		{">=2.0.0 <3.0.0", "3.0.0", false},
		{">=2.0.0 <3.0.0", "1.9.9", false},
		{">=2.0.0 <3.0.0", "2.1.0-beta.1", false},
		{">=2.0.0-0 <3.0.0", "2.1.0-beta.1", true},
		{">=2.1.0-rc.1", "2.1.0-rc.2", true},
		{"~1.4", "1.4.9", true},
		{"~1.4", "1.5.0", false},
		{"^2", "2.9.1", true},
		{"^2", "3.0.0", false},
		{"^2", "v2.0.0", true},
		{"v2.x", "2.3.4", true},
		{">=1.0.0", "main", false},
	}
	for _, c := range cases {
		s, err := match.CompileSemver(c.rng)
		if err != nil {
			t.Fatalf("range %q: %v", c.rng, err)
		}
		if got := s.Admits(c.tag); got != c.want {
			t.Errorf("range %q admits %q = %v, want %v", c.rng, c.tag, got, c.want)
		}
	}
	for _, bad := range []string{">=foo", "~>>1", "not a range"} {
		if err := match.ValidateSemverRange(bad); err == nil {
			t.Errorf("ValidateSemverRange(%q) accepted a bad range", bad)
		}
	}
	if err := match.ValidateSemverRange(">=2.0.0 <3.0.0"); err != nil {
		t.Fatal(err)
	}
}

func TestUpgrade(t *testing.T) {
	t.Parallel()
	cases := []struct{ current, pushed, want string }{
		{"1.0.0", "1.1.0", ""},
		{"v1.0.0", "1.1.0", ""},
		{"1.0", "v1.0.1", ""},
		{"2.0.0-rc.1", "2.0.0", ""},
		{"1.1.0", "1.1.0", match.ReasonNotNewer},
		{"2.0.0", "1.1.0", match.ReasonNotNewer},
		{"v3", "2.9.9", match.ReasonNotNewer},
		{"latest", "1.1.0", match.ReasonCurrentNotSemver},
		{"", "1.1.0", match.ReasonCurrentNotSemver},
		{"1.0.0", "edge", match.ReasonPushNotSemver},
	}
	for _, c := range cases {
		if got := match.Upgrade(c.current, c.pushed); got != c.want {
			t.Errorf("Upgrade(%q, %q) = %q, want %q", c.current, c.pushed, got, c.want)
		}
	}
}
