package stateapi

import (
	"strings"

	"github.com/gofiber/fiber/v2"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/imageref"
)

// preview: POST /api/v1/rollouts/preview {"image": "repo:tag", "digest"?} -> what a push would do,
// writing nothing.
func (s *Service) preview(c *fiber.Ctx) error {
	var req struct {
		Image  string `json:"image"`
		Digest string `json:"digest"`
	}
	if err := decodeBody(c, &req, true); err != nil {
		return err
	}
	req.Image, req.Digest = strings.TrimSpace(req.Image), strings.TrimSpace(req.Digest)
	ref, err := imageref.Parse(req.Image)
	if err != nil {
		return apierr.Invalid("image", "%v", err)
	}
	if ref.Tag == "" {
		return apierr.Invalid("image", "needs a tag: repo:tag")
	}
	if req.Digest != "" && !strings.HasPrefix(req.Digest, "sha256:") {
		return apierr.Invalid("digest", "want sha256:<hex>")
	}
	return apierr.New(apierr.ErrUnavailable, "preview_unavailable", "preview is not available yet")
}
