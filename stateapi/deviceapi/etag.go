package deviceapi

import "strings"

// noneMatch reports whether an If-None-Match header value matches the current entity tag (unquoted) per
// RFC 9110 §13.1.2: "*" matches any current representation; otherwise a comma-separated list of entity
// tags compared weakly (W/ ignored). Bare unquoted values are accepted too, as some clients strip quotes.
func noneMatch(header, etag string) bool {
	h := strings.TrimSpace(header)
	if h == "" {
		return false
	}
	if h == "*" {
		return true
	}
	for len(h) > 0 {
		h = strings.TrimLeft(h, " \t,")
		if h == "" {
			break
		}
		h = strings.TrimPrefix(h, "W/")
		var tag string
		if strings.HasPrefix(h, `"`) {
			end := strings.IndexByte(h[1:], '"')
			if end < 0 {
				return false // malformed: an unterminated tag matches nothing
			}
			tag, h = h[1:1+end], h[2+end:]
		} else {
			end := strings.IndexByte(h, ',')
			if end < 0 {
				end = len(h)
			}
			tag, h = strings.TrimSpace(h[:end]), h[end:]
		}
		if tag == etag {
			return true
		}
	}
	return false
}
