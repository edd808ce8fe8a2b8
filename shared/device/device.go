// Package device holds what identifies and describes a device wherever it is written: the uuid
// alphabet (also used in NATS subjects), the fleet id and tag limits, and how tags are read from JSON.
// stateapi (devices) and shared/policy (a policy's device filters) validate with it.
package device

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"

	"github.com/fleetshift/fleetshift/shared/apierr"
)

// Limits on what one device may carry.
const (
	// MaxTags is the most tags a device (or a policy's device_tags) may have.
	MaxTags = 64
	// MaxTagLen is the longest tag in bytes.
	MaxTagLen = 200
	// MaxNameLen is the longest device name in bytes.
	MaxNameLen = 200
	// MaxFleetLen is the longest fleet id in bytes.
	MaxFleetLen = 128
)

// ValidUUID reports whether s is a device uuid: 1-64 of [A-Za-z0-9_-] (subject-safe).
func ValidUUID(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		b := s[i]
		if !(b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '-' || b == '_') {
			return false
		}
	}
	return true
}

// ParseTags accepts a JSON array of strings, or an object k -> v stored as "k=v"; field names the input
// in errors. At most MaxTags tags of 1-MaxTagLen bytes, valid UTF-8 without NUL.
func ParseTags(field string, raw json.RawMessage) ([]string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return []string{}, nil
	}
	var list []string
	if err := json.Unmarshal(raw, &list); err != nil {
		var obj map[string]any
		if err := json.Unmarshal(raw, &obj); err != nil {
			return nil, apierr.Invalid(field, "want an array of strings or an object of key -> value")
		}
		for k, v := range obj {
			var s string
			switch x := v.(type) {
			case string:
				s = x
			case float64, bool:
				b, _ := json.Marshal(x)
				s = string(b)
			case nil:
				s = ""
			default:
				return nil, apierr.Invalid(field, "value of %q must be a string, number or boolean", k)
			}
			list = append(list, k+"="+s)
		}
	}
	if len(list) > MaxTags {
		return nil, apierr.Invalid(field, "at most %d tags, got %d", MaxTags, len(list))
	}
	seen := map[string]bool{}
	out := make([]string, 0, len(list))
	for _, t := range list {
		t = strings.TrimSpace(t)
		if t == "" || len(t) > MaxTagLen {
			return nil, apierr.Invalid(field, "each tag must be 1-%d characters", MaxTagLen)
		}
		if err := apierr.CheckText(field, t); err != nil {
			return nil, err
		}
		if !seen[t] {
			seen[t] = true
			out = append(out, t)
		}
	}
	slices.Sort(out)
	return out, nil
}
