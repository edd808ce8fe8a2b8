// Package match decides which image references a policy's image_pattern admits and, for semver tag
// policies, which tags count as upgrades.
//
// A pattern is an anchored glob over the normalised reference [registry/]repository[:tag]: `*` matches
// within one path segment, `**` crosses `/`, and a pattern without a tag part admits every tag. The
// repository part is normalised the way imageref normalises references (Docker's rules: no registry
// means docker.io, a single segment means docker.io/library/), so `nginx`, `library/nginx` and
// `docker.io/library/nginx` are one pattern.
package match

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/fleetshift/fleetshift/shared/imageref"
)

// Pattern is a compiled image pattern. The zero value matches nothing; use Compile.
type Pattern struct {
	raw        string
	repository string // normalised repository glob
	tag        string // tag glob; empty: every tag
	hasTag     bool
	repoRe     *regexp.Regexp
	tagRe      *regexp.Regexp
}

var (
	nameSegment = regexp.MustCompile(`^[a-z0-9._*-]+$`)
	hostSegment = regexp.MustCompile(`^[a-z0-9.*-]+(:[0-9*]+)?$`)
	tagGlob     = regexp.MustCompile(`^[A-Za-z0-9_.*-]{1,128}$`)
)

// Compile parses and normalises pattern. The error names what is wrong with it, suitable for a 400 on
// image_pattern.
func Compile(pattern string) (Pattern, error) {
	s := strings.TrimSpace(pattern)
	if s == "" {
		return Pattern{}, fmt.Errorf("image pattern is empty")
	}
	if strings.ContainsAny(s, "@ \t\n") {
		return Pattern{}, fmt.Errorf("image pattern %q: must not contain a digest or spaces", pattern)
	}
	if strings.Contains(s, "***") {
		return Pattern{}, fmt.Errorf("image pattern %q: use * or **, not ***", pattern)
	}
	name, tag, hasTag := s, "", false
	slash := strings.LastIndexByte(s, '/')
	if c := strings.LastIndexByte(s, ':'); c > slash {
		name, tag, hasTag = s[:c], s[c+1:], true
		if !tagGlob.MatchString(tag) {
			return Pattern{}, fmt.Errorf("image pattern %q: tag part %q must be 1-128 characters of A-Z a-z 0-9 _ . - *", pattern, tag)
		}
	}
	repo, err := normaliseRepository(strings.ToLower(name))
	if err != nil {
		return Pattern{}, fmt.Errorf("image pattern %q: %w", pattern, err)
	}
	p := Pattern{raw: pattern, repository: repo, tag: tag, hasTag: hasTag}
	p.repoRe = regexp.MustCompile(globRegexp(repo, true))
	if hasTag {
		p.tagRe = regexp.MustCompile(globRegexp(tag, false))
	}
	return p, nil
}

// normaliseRepository applies Docker's normalisation to a repository glob.
func normaliseRepository(name string) (string, error) {
	segs := strings.Split(name, "/")
	for i, seg := range segs {
		if seg == "" {
			return "", fmt.Errorf("repository part %q has an empty path segment", name)
		}
		ok := nameSegment.MatchString(seg) || (i == 0 && len(segs) > 1 && hostSegment.MatchString(seg))
		if !ok {
			return "", fmt.Errorf("path segment %q may only contain a-z 0-9 . _ - and * (a port only after the registry host)", seg)
		}
	}
	first := segs[0]
	switch {
	case strings.HasPrefix(first, "**"):
		// Any registry: match the full normalised repository as written.
		return name, nil
	case len(segs) > 1 && (strings.ContainsAny(first, ".:") || first == "localhost"):
		if first == "index.docker.io" || first == "registry-1.docker.io" {
			segs[0] = "docker.io"
		}
		if segs[0] == "docker.io" && len(segs) == 2 && !strings.Contains(segs[1], "**") {
			return "docker.io/library/" + segs[1], nil
		}
		return strings.Join(segs, "/"), nil
	case strings.Contains(first, ":"):
		return "", fmt.Errorf("path segment %q may not contain ':'", first)
	case len(segs) == 1 && !strings.Contains(first, "**"):
		return "docker.io/library/" + name, nil
	default:
		return "docker.io/" + name, nil
	}
}

// globRegexp turns a glob into an anchored regular expression. In a repository `*` stays within a
// path segment and `**` crosses '/'; a tag has no '/', so both match any run of characters.
func globRegexp(glob string, repository bool) string {
	var b strings.Builder
	b.WriteString("^")
	for i := 0; i < len(glob); i++ {
		c := glob[i]
		if c != '*' {
			b.WriteString(regexp.QuoteMeta(string(c)))
			continue
		}
		if i+1 < len(glob) && glob[i+1] == '*' {
			i++
			b.WriteString(".*")
			continue
		}
		if repository {
			b.WriteString("[^/]*")
		} else {
			b.WriteString(".*")
		}
	}
	b.WriteString("$")
	return b.String()
}

// String returns the pattern as written.
func (p Pattern) String() string { return p.raw }

// Normalised returns the normalised pattern: repository[:tag].
func (p Pattern) Normalised() string {
	if p.hasTag {
		return p.repository + ":" + p.tag
	}
	return p.repository
}

// HasTag reports whether the pattern has a tag part (without one it admits every tag).
func (p Pattern) HasTag() bool { return p.hasTag }

// Match reports whether the pattern admits ref: its repository and its tag.
func (p Pattern) Match(ref imageref.Ref) bool {
	return p.MatchRepository(ref.Repository) && p.MatchTag(ref.Tag)
}

// MatchRepository reports whether the pattern admits the normalised repository repo (as
// imageref.Ref.Repository gives it), whatever the tag.
func (p Pattern) MatchRepository(repo string) bool {
	return p.repoRe != nil && p.repoRe.MatchString(repo)
}

// MatchTag reports whether the pattern's tag part admits tag; true when the pattern has no tag part.
func (p Pattern) MatchTag(tag string) bool {
	if !p.hasTag {
		return p.repoRe != nil
	}
	return p.tagRe.MatchString(tag)
}

// Specificity ranks patterns that match the same reference: a higher value is more specific. An exact
// repository beats any glob; then more literal characters in the repository; then a tag part (an exact
// tag beats a tag glob, more literal characters beat fewer); then fewer wildcards.
func (p Pattern) Specificity() int {
	repoLiteral := len(p.repository) - strings.Count(p.repository, "*")
	s := 0
	if !strings.Contains(p.repository, "*") {
		s += 1 << 40
	}
	s += min(repoLiteral, 1<<15) << 24
	wildcards := strings.Count(p.repository, "*")
	if p.hasTag {
		s += 1 << 17
		if !strings.Contains(p.tag, "*") {
			s += 1 << 18
		}
		s += (len(p.tag) - strings.Count(p.tag, "*")) << 8
		wildcards += strings.Count(p.tag, "*")
	}
	s += 255 - min(wildcards, 255)
	return s
}

// MoreSpecific reports whether a ranks before b: higher Specificity.
func MoreSpecific(a, b Pattern) bool { return a.Specificity() > b.Specificity() }
