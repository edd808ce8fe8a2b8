package ingest

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"strings"

	"github.com/gofiber/fiber/v2"

	"github.com/fleetshift/fleetshift/shared/apierr"
)

// SignatureHeader carries "sha256=<hex HMAC-SHA256(secret, raw body)>" (GitHub's scheme).
const SignatureHeader = "X-Hub-Signature-256"

// authenticate accepts a delivery with a valid signature or the webhook token. With a secret
// configured, a signature that is present but does not verify refuses the delivery outright.
func (s *Service) authenticate(c *fiber.Ctx, body []byte) error {
	if s.cfg.WebhookToken == "" && s.cfg.WebhookSecret == "" {
		if s.cfg.AllowUnauthenticated {
			return nil
		}
		return apierr.New(apierr.ErrUnauthorized, "unauthorized", "webhook authentication is not configured")
	}
	if sig := c.Get(SignatureHeader); sig != "" && s.cfg.WebhookSecret != "" {
		if VerifySignature(s.cfg.WebhookSecret, body, sig) {
			return nil
		}
		return apierr.New(apierr.ErrUnauthorized, "invalid_signature", "%s does not match the body", SignatureHeader)
	}
	if s.cfg.WebhookToken != "" {
		if tok := c.Query("token"); tok != "" && tokenEqual(tok, s.cfg.WebhookToken) {
			return nil
		}
		if tok, ok := bearer(c.Get(fiber.HeaderAuthorization)); ok && tokenEqual(tok, s.cfg.WebhookToken) {
			return nil
		}
	}
	return apierr.New(apierr.ErrUnauthorized, "unauthorized", "webhook needs a valid %s or token", SignatureHeader)
}

// VerifySignature reports whether header ("sha256=<64 hex digits>") is the HMAC-SHA256 of body under
// secret. The comparison takes constant time; a malformed header is simply not valid.
func VerifySignature(secret string, body []byte, header string) bool {
	hexSig, ok := strings.CutPrefix(strings.TrimSpace(header), "sha256=")
	if !ok || len(hexSig) != 2*sha256.Size {
		return false
	}
	got, err := hex.DecodeString(hexSig)
	if err != nil {
		return false
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(body)
	return hmac.Equal(got, mac.Sum(nil))
}

// Sign returns the X-Hub-Signature-256 value of body under secret.
func Sign(secret string, body []byte) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// tokenEqual compares in time independent of where the strings differ and of their lengths.
func tokenEqual(got, want string) bool {
	g, w := sha256.Sum256([]byte(got)), sha256.Sum256([]byte(want))
	return subtle.ConstantTimeCompare(g[:], w[:]) == 1
}

func bearer(h string) (string, bool) {
	scheme, tok, ok := strings.Cut(strings.TrimSpace(h), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}
