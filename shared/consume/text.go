package consume

import (
	"errors"
	"fmt"
	"unicode/utf8"
)

func utf8Valid(s string) bool { return utf8.ValidString(s) }

// CheckJSON returns an error (marked Permanent, reason invalid) when the JSON document raw cannot be
// stored as PostgreSQL jsonb: it is not valid UTF-8, or a string in it holds the escape \u0000 or an
// unpaired UTF-16 surrogate escape (jsonb refuses both with SQLSTATE 22P05). It scans raw once and
// does not check the rest of the JSON syntax.
func CheckJSON(field string, raw []byte) error {
	if !utf8.Valid(raw) {
		return Permanent(ReasonInvalid, fmt.Errorf("%s is not valid UTF-8", field))
	}
	inString := false
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if !inString {
			if c == '"' {
				inString = true
			}
			continue
		}
		switch c {
		case '"':
			inString = false
		case '\\':
			if i+1 >= len(raw) {
				return nil
			}
			if raw[i+1] != 'u' {
				i++ // a one-character escape
				continue
			}
			r, ok := hex4(raw, i+2)
			if !ok {
				i++
				continue
			}
			i += 5
			switch {
			case r == 0:
				return Permanent(ReasonInvalid, fmt.Errorf("%s holds the escape \\u0000 (NUL)", field))
			case r >= 0xD800 && r <= 0xDBFF: // a high surrogate must be followed by a low one
				if i+6 < len(raw) && raw[i+1] == '\\' && raw[i+2] == 'u' {
					if lo, ok := hex4(raw, i+3); ok && lo >= 0xDC00 && lo <= 0xDFFF {
						i += 6
						continue
					}
				}
				return Permanent(ReasonInvalid, errors.New(field+" holds an unpaired UTF-16 surrogate escape"))
			case r >= 0xDC00 && r <= 0xDFFF:
				return Permanent(ReasonInvalid, errors.New(field+" holds an unpaired UTF-16 surrogate escape"))
			}
		}
	}
	return nil
}

// hex4 reads four hex digits at raw[i:].
func hex4(raw []byte, i int) (rune, bool) {
	if i+4 > len(raw) {
		return 0, false
	}
	var r rune
	for _, c := range raw[i : i+4] {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c-'a') + 10
		case c >= 'A' && c <= 'F':
			r |= rune(c-'A') + 10
		default:
			return 0, false
		}
	}
	return r, true
}
