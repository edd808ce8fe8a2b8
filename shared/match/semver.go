package match

import (
	"fmt"
	"strings"

	"github.com/Masterminds/semver/v3"
)

// Semver is a compiled semver tag policy: which pushed tags trigger a rollout and which devices count
// as older. The zero value is not usable; use CompileSemver.
type Semver struct {
	raw        string
	constraint *semver.Constraints
}

// ValidateSemverRange reports whether r is a usable semver_range (empty is: every release version).
// The error says what is wrong, suitable for a 400 on semver_range.
func ValidateSemverRange(r string) error {
	_, err := CompileSemver(r)
	return err
}

// CompileSemver parses a semver range such as ">=2.0.0 <3.0.0", "~1.4", "^2" or "v2.x". An empty
// range admits every release version (pre-releases only when the range names one).
func CompileSemver(r string) (Semver, error) {
	s := strings.TrimSpace(r)
	if s == "" {
		s = "*"
	}
	c, err := semver.NewConstraint(s)
	if err != nil {
		return Semver{}, fmt.Errorf("semver range %q: %w", r, err)
	}
	return Semver{raw: strings.TrimSpace(r), constraint: c}, nil
}

// String returns the range as written (empty: any release version).
func (s Semver) String() string { return s.raw }

// ParseVersion parses a tag as a semantic version; a leading "v" is allowed, as are the short forms
// "1" and "1.2".
func ParseVersion(tag string) (*semver.Version, error) {
	v, err := semver.NewVersion(tag)
	if err != nil {
		return nil, fmt.Errorf("tag %q is not a semantic version: %w", tag, err)
	}
	return v, nil
}

// Admits reports whether a pushed tag triggers a rollout: a valid semantic version inside the range.
// A pre-release is admitted only when the range names a pre-release.
func (s Semver) Admits(tag string) bool {
	if s.constraint == nil {
		return false
	}
	v, err := ParseVersion(tag)
	return err == nil && s.constraint.Check(v)
}

// Upgrade classifies a device's current tag against the pushed tag: "" when the device runs an older
// semantic version (it is affected), otherwise the reason it is left alone.
func Upgrade(current, pushed string) string {
	pv, err := ParseVersion(pushed)
	if err != nil {
		return ReasonPushNotSemver
	}
	cv, err := ParseVersion(current)
	if err != nil {
		return ReasonCurrentNotSemver
	}
	if !cv.LessThan(pv) {
		return ReasonNotNewer
	}
	return ""
}

// Reasons Upgrade gives for leaving a device alone.
const (
	ReasonPushNotSemver    = "pushed tag is not a semantic version"
	ReasonCurrentNotSemver = "current tag is not a semantic version"
	ReasonNotNewer         = "current version is not older than the pushed one"
)
