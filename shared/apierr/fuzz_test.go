package apierr

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// storable is an oracle independent of the walker: whether every string in a valid JSON document is
// what PostgreSQL's jsonb and text columns accept (valid UTF-8, no NUL, no unpaired UTF-16 surrogate).
func storable(doc string) bool {
	if !utf8.ValidString(doc) || strings.IndexByte(doc, 0) >= 0 {
		return false
	}
	inString := false
	pendingHigh := false
	for i := 0; i < len(doc); i++ {
		c := doc[i]
		if !inString {
			inString = c == '"'
			continue
		}
		if c == '"' {
			if pendingHigh {
				return false
			}
			inString = false
			continue
		}
		if c != '\\' {
			if pendingHigh {
				return false
			}
			continue
		}
		i++
		if doc[i] != 'u' {
			if pendingHigh {
				return false
			}
			continue
		}
		v, _ := strconv.ParseUint(doc[i+1:i+5], 16, 32)
		i += 4
		switch {
		case v == 0:
			return false
		case v >= 0xD800 && v <= 0xDBFF:
			if pendingHigh {
				return false
			}
			pendingHigh = true
		case v >= 0xDC00 && v <= 0xDFFF:
			if !pendingHigh {
				return false
			}
			pendingHigh = false
		default:
			if pendingHigh {
				return false
			}
		}
	}
	return true
}

// FuzzCheckJSONText: whatever the walker accepts in a valid JSON document is storable downstream, and it
// never panics.
func FuzzCheckJSONText(f *testing.F) {
	for _, s := range []string{
		`{"a":"b"}`, `{"a":"x\u0000"}`, `{"a":"\ud800"}`, `{"a":"\ud83d\ude00"}`, `{"\u0000":1}`, `["\udc00"]`,
		`{"apps":{"1":{"services":[{"imageName":"x","health":{"status":"healthy"}}]}}}`, "\"\xff\"", `"\\u0000"`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		err := CheckJSONText(doc, "body")
		if !json.Valid(doc) {
			return
		}
		if err == nil && !storable(string(doc)) {
			t.Fatalf("accepted an unstorable document %q", doc)
		}
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || Status(err) != 400 {
				t.Fatalf("refusal is not a 400 *Error: %v", err)
			}
		}
	})
}

// FuzzDecodeJSON: any body is either decoded or refused with a 400 that names no Go type.
func FuzzDecodeJSON(f *testing.F) {
	for _, s := range []string{`{"name":"a","count":1}`, `{"name":1}`, `{"count":99999999999}`, `{"x":1}`, `[`, ``, `{"name":"\u0000"}`} {
		f.Add([]byte(s))
	}
	type body struct {
		Name  string           `json:"name"`
		Count int32            `json:"count"`
		Tags  []string         `json:"tags"`
		Sub   *struct{ A int } `json:"sub"`
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var v body
		err := DecodeJSON(raw, &v, true)
		if err == nil {
			if !storable(v.Name) {
				t.Fatalf("decoded an unstorable name %q", v.Name)
			}
			return
		}
		var e *Error
		if !errors.As(err, &e) || Status(err) != 400 {
			t.Fatalf("refusal is not a 400 *Error: %v", err)
		}
		for _, goWord := range []string{"int32", "apierr.", "struct", "[]string", "Go "} {
			if strings.Contains(e.Message, goWord) {
				t.Fatalf("message names a Go type (%s): %s", goWord, e.Message)
			}
		}
	})
}
