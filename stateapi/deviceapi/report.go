package deviceapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/stateapi/internal/devicestore"
	"github.com/fleetshift/fleetshift/stateapi/internal/httpio"
	"github.com/fleetshift/fleetshift/streams"
)

// reportState: PATCH /api/v1/device/state. Every key of the body must be the authenticated device.
//
// The report is not stored here: it is published on the device's state subject (REPORTS stream), the
// same message a device publishes over NATS, and the answer waits for JetStream's acknowledgement.
// healthwatch is the one writer of device_current_state. A report that could not be stored downstream
// (invalid UTF-8, NUL, a lone surrogate, a wrong shape) is refused here with a 400 naming the field.
func (s *Service) reportState(c *fiber.Ctx) error {
	key := httpio.DeviceKey(c)
	if key == "" {
		return errDeviceUnauthorized
	}
	if err := httpio.CheckSize(c, s.cfg.MaxReportBody); err != nil {
		return err
	}
	hash := sha256.Sum256([]byte(key))
	ctx, cancel := context.WithTimeout(c.UserContext(), s.cfg.RequestTimeout)
	defer cancel()
	body := bytes.TrimSpace(c.Body())
	if len(body) == 0 {
		return apierr.New(apierr.ErrInvalid, "invalid_json", "a JSON body is required")
	}
	var reports map[string]json.RawMessage
	if err := json.Unmarshal(body, &reports); err != nil {
		return apierr.JSONError(err)
	}
	// Authenticate before judging the body, so an unauthenticated caller learns nothing from it.
	var id string
	for k := range reports {
		if len(reports) == 1 && devicestore.ValidUUID(k) && s.cache.keyMatches(k, hash, time.Now()) {
			id = k
		}
	}
	if id == "" {
		var err error
		if id, err = s.deviceByKey(ctx, hash); err != nil {
			return err
		}
	}
	if len(reports) == 0 {
		return apierr.Invalid("body", "want {\"<uuid>\": {\"apps\": ...}}")
	}
	for k := range reports {
		if k != id {
			return errOtherDevice
		}
	}
	if ok, wait := s.reports.allow(id, time.Now()); !ok {
		return &apierr.Error{Kind: apierr.ErrTooManyRequests, Code: "rate_limited", RetryAfter: wait,
			Message: fmt.Sprintf("device %s reports faster than the server accepts (a burst of %d, then one every %s); retry after the Retry-After delay",
				id, s.cfg.ReportBurst, s.cfg.ReportInterval)}
	}
	raw := reports[id]
	var rep streams.DeviceReport
	if err := apierr.DecodeJSON(raw, &rep, false); err != nil {
		return err
	}
	payload, err := json.Marshal(map[string]json.RawMessage{id: raw})
	if err != nil {
		return fmt.Errorf("encode report of %s: %w", id, err)
	}
	pubCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := s.cfg.JS.Publish(pubCtx, s.cfg.Subjects.DeviceState(id), payload); err != nil {
		s.log.Warn().Err(err).Str("device", id).Msg("publish device report")
		return apierr.New(apierr.ErrUnavailable, "report_not_published",
			"the report could not be handed to the pipeline; send it again")
	}
	return c.JSON(fiber.Map{"ok": true})
}
