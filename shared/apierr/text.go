package apierr

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// CheckText refuses a string from outside that PostgreSQL or JSON consumers downstream cannot store:
// invalid UTF-8, or a NUL character. field names it in the 400.
func CheckText(field, s string) error {
	if !utf8.ValidString(s) {
		return fieldError(field, "not valid UTF-8")
	}
	if strings.IndexByte(s, 0) >= 0 {
		return fieldError(field, "contains a NUL character")
	}
	return nil
}

// CheckJSONText walks a syntactically valid JSON document and refuses, naming the field (path prefixed
// by prefix), any string or key that is not valid UTF-8, holds a NUL character (\u0000) or a lone
// UTF-16 surrogate (\ud800): encoding/json would silently replace them, PostgreSQL's jsonb refuses them.
func CheckJSONText(doc []byte, prefix string) error {
	w := textWalker{doc: doc}
	return w.value(prefix)
}

type textWalker struct {
	doc []byte
	i   int
}

func (w *textWalker) ws() {
	for w.i < len(w.doc) {
		switch w.doc[w.i] {
		case ' ', '\t', '\r', '\n':
			w.i++
		default:
			return
		}
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func (w *textWalker) value(path string) error {
	w.ws()
	if w.i >= len(w.doc) {
		return nil
	}
	switch w.doc[w.i] {
	case '{':
		w.i++
		for {
			w.ws()
			if w.i >= len(w.doc) {
				return nil
			}
			if w.doc[w.i] == '}' {
				w.i++
				return nil
			}
			if w.doc[w.i] == ',' {
				w.i++
				continue
			}
			key, bad := w.str()
			if bad != "" {
				return fieldError(join(path, key), "the key %s", bad)
			}
			w.ws()
			if w.i < len(w.doc) && w.doc[w.i] == ':' {
				w.i++
			}
			if err := w.value(join(path, key)); err != nil {
				return err
			}
		}
	case '[':
		w.i++
		for n := 0; ; {
			w.ws()
			if w.i >= len(w.doc) {
				return nil
			}
			switch w.doc[w.i] {
			case ']':
				w.i++
				return nil
			case ',':
				w.i++
				n++
				continue
			}
			if err := w.value(path + "[" + strconv.Itoa(n) + "]"); err != nil {
				return err
			}
		}
	case '"':
		if _, bad := w.str(); bad != "" {
			if path == "" {
				return New(ErrInvalid, "invalid_json", "the body %s", bad)
			}
			return fieldError(path, "%s", bad)
		}
		return nil
	default: // number, true, false, null; on a malformed document, at least one byte, so the walk ends
		w.i++
		for w.i < len(w.doc) && !strings.ContainsRune(",}] \t\r\n", rune(w.doc[w.i])) {
			w.i++
		}
		return nil
	}
}

// str reads a string literal at w.i and returns its text (for naming keys; escapes other than the ones
// judged are kept raw) and what is wrong with it, if anything.
func (w *textWalker) str() (string, string) {
	w.i++ // opening quote
	start := w.i
	bad := ""
	for w.i < len(w.doc) {
		c := w.doc[w.i]
		switch {
		case c == '"':
			s := string(w.doc[start:w.i])
			w.i++
			if !utf8.ValidString(s) {
				s = strings.ToValidUTF8(s, "\uFFFD")
				if bad == "" {
					bad = "is not valid UTF-8"
				}
			}
			return s, bad
		case c == '\\' && w.i+1 < len(w.doc):
			if w.doc[w.i+1] == 'u' && w.i+6 <= len(w.doc) {
				r, err := strconv.ParseUint(string(w.doc[w.i+2:w.i+6]), 16, 32)
				if err == nil && bad == "" {
					switch {
					case r == 0:
						bad = "contains a NUL character (\\u0000)"
					case r >= 0xD800 && r <= 0xDBFF:
						// A high surrogate must be followed by a low one.
						next := w.i + 6
						ok := false
						if next+6 <= len(w.doc) && w.doc[next] == '\\' && w.doc[next+1] == 'u' {
							lo, err := strconv.ParseUint(string(w.doc[next+2:next+6]), 16, 32)
							ok = err == nil && lo >= 0xDC00 && lo <= 0xDFFF
						}
						if !ok {
							bad = "contains a lone UTF-16 surrogate (\\u" + string(w.doc[w.i+2:w.i+6]) + ")"
						} else {
							w.i += 6
						}
					case r >= 0xDC00 && r <= 0xDFFF:
						bad = "contains a lone UTF-16 surrogate (\\u" + string(w.doc[w.i+2:w.i+6]) + ")"
					}
				}
				w.i += 6
				continue
			}
			w.i += 2
		default:
			w.i++
		}
	}
	return string(w.doc[start:]), bad
}
