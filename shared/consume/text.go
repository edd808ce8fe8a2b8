package consume

import (
	"github.com/fleetshift/fleetshift/shared/apierr"
)

// CheckJSON returns an error (marked Permanent, reason invalid) when the JSON document raw, already
// known to be syntactically valid, cannot be stored as PostgreSQL jsonb: a string or key in it is not
// valid UTF-8, or holds \u0000 or an unpaired UTF-16 surrogate (jsonb refuses them; encoding/json would
// silently accept or replace them). The check is apierr.CheckJSONText, the one used at the HTTP edge;
// field names the document in the error.
func CheckJSON(field string, raw []byte) error {
	if err := apierr.CheckJSONText(raw, field); err != nil {
		return Permanent(ReasonInvalid, err)
	}
	return nil
}

// CheckText returns an error (marked Permanent, reason invalid) when s cannot be stored in PostgreSQL
// text: it is not valid UTF-8 or holds a NUL character (apierr.CheckText). field names s in the error.
func CheckText(field, s string) error {
	if err := apierr.CheckText(field, s); err != nil {
		return Permanent(ReasonInvalid, err)
	}
	return nil
}
