// Package registry recognises container registry webhook deliveries and turns them into normalised
// image pushes. It is pure logic: it reads a body and its headers and performs no I/O.
//
// Supported formats: Docker Hub, GitHub (`package` and `registry_package` events, GHCR), CNCF
// Distribution and GitLab (the {"events": [...]} envelope), Harbor, Quay, Azure Container Registry,
// AWS ECR through EventBridge and Google Artifact Registry through Pub/Sub (decoded data or the push
// envelope).
package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/imageref"
)

// Registry formats, the value of Result.Registry and Push.Registry.
const (
	DockerHub    = "dockerhub"
	GitHub       = "github"
	Distribution = "distribution"
	Harbor       = "harbor"
	Quay         = "quay"
	ACR          = "acr"
	ECR          = "ecr"
	GAR          = "gar"
	// Unknown is reported when the format could not be detected.
	Unknown = "unknown"
)

// Reasons a delivery item is not a push. Other reasons name the registry's own event type.
const (
	ReasonPull         = "pull event"
	ReasonBlob         = "layer blob"
	ReasonDelete       = "delete"
	ReasonUntagged     = "untagged (multi-arch child)"
	ReasonFailed       = "failed push"
	ReasonNotContainer = "not a container package"
	ReasonPing         = "ping"
	ReasonNoTags       = "no tags updated"
)

// ErrUnreadable is wrapped by every error Parse returns: the payload is not JSON, is not a format this
// package knows, or lacks what a push needs (a repository, a registry host, a valid tag).
var ErrUnreadable = errors.New("unreadable webhook payload")

// Headers gives the request headers by name, case-insensitively (http.Header satisfies it).
type Headers interface {
	Get(name string) string
}

// Push is one tagged image pushed to a repository.
type Push struct {
	// Registry is the detected format (DockerHub, GitHub, ...).
	Registry string
	// Ref is the normalised reference. Tag is never empty; Digest is "sha256:..." or empty.
	Ref imageref.Ref
	// PushedAt is when the registry says the push happened; zero when it does not say.
	PushedAt time.Time
	// Pusher is the account that pushed, when the registry says.
	Pusher string
	// DedupeKey is identical for every delivery of the same push: "<registry>:<delivery id>" when the
	// registry identifies its deliveries, else "push:<repository>:<tag>@<digest>" (plus "#<pushed at>"
	// when there is no digest).
	DedupeKey string
	// DroppedDigest is a digest the payload carried that is not a valid digest (vendor samples truncate
	// them); Ref.Digest is empty then, so the rollout pins the tag only.
	DroppedDigest string
}

// Result is what one delivery holds: pushes and the reasons its other items were ignored.
type Result struct {
	// Registry is the detected format.
	Registry string
	// Pushes are the tagged image pushes, in payload order.
	Pushes []Push
	// Ignored holds one reason per item of the delivery that is not a tagged push.
	Ignored []string
}

// IgnoredReason joins the distinct ignore reasons, in first-seen order, for a response body.
func (r Result) IgnoredReason() string {
	var seen []string
	for _, reason := range r.Ignored {
		dup := false
		for _, s := range seen {
			if s == reason {
				dup = true
				break
			}
		}
		if !dup {
			seen = append(seen, reason)
		}
	}
	return strings.Join(seen, ", ")
}

func (r *Result) ignore(reason string) { r.Ignored = append(r.Ignored, reason) }

// Parse detects the format of a delivery from its body and headers and parses it. It never panics;
// a payload it cannot read yields an error wrapping ErrUnreadable, and a readable delivery that holds
// no tagged push yields a Result with only Ignored reasons.
func Parse(body []byte, h Headers) (Result, error) {
	if event := header(h, "X-GitHub-Event"); event != "" {
		return parseGitHub(body, event, header(h, "X-GitHub-Delivery"))
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil || top == nil {
		return Result{Registry: Unknown}, unreadable("body is not a JSON object")
	}
	ct := strings.ToLower(header(h, "Content-Type"))
	switch {
	case has(top, "events"):
		return parseDistribution(body)
	case strings.Contains(ct, "vnd.docker.distribution.events"):
		return Result{Registry: Distribution}, unreadable("distribution notification without an events array")
	case has(top, "message") && (has(top, "subscription") || strings.Contains(string(top["message"]), `"data"`)):
		return parsePubSub(body)
	case has(top, "push_data"):
		return parseDockerHub(body)
	case has(top, "event_data") && has(top, "type"):
		return parseHarbor(body)
	case has(top, "docker_url") || has(top, "updated_tags"):
		return parseQuay(body)
	case has(top, "detail-type") || stringField(top, "source") == "aws.ecr":
		return parseECR(body)
	case has(top, "registry_package") || has(top, "package"):
		return parseGitHub(body, "", "")
	case has(top, "target") && has(top, "action"):
		return parseACR(body)
	case has(top, "action") && (has(top, "tag") || has(top, "digest")):
		return parseGARData(body, "", time.Time{})
	}
	return Result{Registry: Unknown}, unreadable("not a registry webhook format this endpoint knows")
}

func header(h Headers, name string) string {
	if h == nil {
		return ""
	}
	return strings.TrimSpace(h.Get(name))
}

func has(m map[string]json.RawMessage, key string) bool {
	v, ok := m[key]
	return ok && string(v) != "null"
}

func stringField(m map[string]json.RawMessage, key string) string {
	var s string
	if json.Unmarshal(m[key], &s) != nil {
		return ""
	}
	return s
}

func unreadable(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrUnreadable, fmt.Sprintf(format, args...))
}

func decode(registry string, body []byte, v any) error {
	if err := json.Unmarshal(body, v); err != nil {
		// The one translation of decode errors: field paths and JSON shapes, never Go types.
		return unreadable("%s payload: %s", registry, apierr.JSONError(err).Error())
	}
	return nil
}

// newPush builds a push of tag to repository (a name without tag or digest, host included when not
// Docker Hub). An invalid digest is dropped into DroppedDigest; an invalid repository or tag is an
// error. deliveryID, when set, makes the dedupe key.
func newPush(registry, repository, tag, digest string, pushedAt time.Time, pusher, deliveryID string) (Push, error) {
	repo, err := imageref.ParseRepository(repository)
	if err != nil {
		return Push{}, unreadable("%s repository: %v", registry, err)
	}
	ref, err := imageref.Parse(repo.Repository + ":" + tag)
	if err != nil || ref.Tag == "" {
		return Push{}, unreadable("%s tag %q of %s is not a valid tag", registry, tag, repo.Repository)
	}
	p := Push{Registry: registry, Ref: ref, PushedAt: pushedAt, Pusher: pusher}
	if digest != "" {
		if d, err := imageref.Parse(repo.Repository + "@" + digest); err == nil {
			p.Ref.Digest = d.Digest
		} else {
			p.DroppedDigest = digest
		}
	}
	switch {
	case deliveryID != "":
		p.DedupeKey = registry + ":" + deliveryID
	case digest != "":
		// The raw digest, valid or not: it is what every redelivery carries.
		p.DedupeKey = "push:" + ref.Repository + ":" + ref.Tag + "@" + digest
	case !pushedAt.IsZero():
		p.DedupeKey = "push:" + ref.Repository + ":" + ref.Tag + "@#" + pushedAt.UTC().Format(time.RFC3339Nano)
	default:
		p.DedupeKey = "push:" + ref.Repository + ":" + ref.Tag + "@"
	}
	return p, nil
}

// splitRef splits "host/path:tag@digest" into its name, tag and digest. The tag separator is the last
// ':' after the last '/', so a registry port is never taken for a tag.
func splitRef(s string) (name, tag, digest string) {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '@'); i >= 0 {
		s, digest = s[:i], s[i+1:]
	}
	slash := strings.LastIndexByte(s, '/')
	if c := strings.LastIndexByte(s, ':'); c > slash {
		s, tag = s[:c], s[c+1:]
	}
	return s, tag, digest
}

// domainLike reports whether host would be read as a registry host in an image reference.
func domainLike(host string) bool {
	return host != "" && (strings.ContainsAny(host, ".:") || strings.EqualFold(host, "localhost"))
}

// hostFromURL returns the host[:port] of a URL, or "".
func hostFromURL(raw string) string {
	if raw == "" {
		return ""
	}
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	return u.Host
}

// looksLikeDigest reports whether s is a digest rather than a tag (tags never contain ':').
func looksLikeDigest(s string) bool { return strings.Contains(s, ":") }

// flexTime reads a time sent as RFC 3339 text, or as Unix seconds (or milliseconds) in a number or a
// string. Anything else reads as the zero time: a timestamp is informational, never a reason to reject.
type flexTime struct{ time.Time }

func (f *flexTime) UnmarshalJSON(b []byte) error {
	s := strings.TrimSpace(string(b))
	if s == "" || s == "null" {
		return nil
	}
	if s[0] == '"' {
		var str string
		if err := json.Unmarshal(b, &str); err != nil {
			return nil
		}
		s = strings.TrimSpace(str)
		for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05.999999999", "2006-01-02 15:04:05"} {
			if t, err := time.Parse(layout, s); err == nil {
				f.Time = t.UTC()
				return nil
			}
		}
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) || v <= 0 || v >= 1e15 {
		return nil
	}
	if v >= 1e12 { // milliseconds
		v /= 1000
	}
	sec, frac := math.Modf(v)
	f.Time = time.Unix(int64(sec), int64(frac*1e9)).UTC()
	return nil
}
