package control

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/gofiber/fiber/v2"
	"github.com/nats-io/nats.go"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/auth"
)

// Register adds the control routes, each needing an operate token checked by ops:
//
//	POST /api/v1/rollouts/:id/{start,pause,resume,cancel,rollback-all,approve}
//	POST /api/v1/rollouts/:id/devices/:uuid/rollback
//	POST /api/v1/rollouts/:id/retry   optional body {"device_uuids": [...]} (default: every failed device)
//
// They answer 200 with a Result, or the apierr error document with the status Do's error maps to.
func (s *Service) Register(r fiber.Router, ops *auth.Operators) {
	operate := ops.Require(auth.ScopeOperate)
	for _, verb := range Verbs {
		r.Post("/api/v1/rollouts/:id/"+string(verb), operate, func(c *fiber.Ctx) error {
			return s.serveHTTP(c, verb, "")
		})
	}
	r.Post("/api/v1/rollouts/:id/devices/:uuid/rollback", operate, func(c *fiber.Ctx) error {
		return s.serveHTTP(c, Rollback, c.Params("uuid"))
	})
	r.Post("/api/v1/rollouts/:id/"+string(Retry), operate, func(c *fiber.Ctx) error {
		p, ok := auth.PrincipalFrom(c)
		if !ok {
			return apierr.New(apierr.ErrUnauthorized, "unauthorized", "missing bearer token")
		}
		req, err := decodeRequest(c.Body())
		if err != nil {
			return err
		}
		res, err := s.Retry(c.UserContext(), c.Params("id"), req.DeviceUUIDs, p.Actor())
		if err != nil {
			return err
		}
		return c.JSON(res)
	})
}

// decodeRequest reads an optional control body (empty: no fields).
func decodeRequest(body []byte) (Request, error) {
	var req Request
	if len(strings.TrimSpace(string(body))) > 0 {
		if err := apierr.DecodeJSON(body, &req, false); err != nil {
			return Request{}, err
		}
	}
	return req, nil
}

func (s *Service) serveHTTP(c *fiber.Ctx, verb Verb, device string) error {
	p, ok := auth.PrincipalFrom(c)
	if !ok {
		return apierr.New(apierr.ErrUnauthorized, "unauthorized", "missing bearer token")
	}
	res, err := s.Do(c.UserContext(), verb, c.Params("id"), device, p.Actor())
	if err != nil {
		return err
	}
	return c.JSON(res)
}

// Run answers control requests over NATS until ctx ends, as a member of the queue group (so replicas
// share them), then drains its subscription and returns nil. Subjects (prefix "fleet" by default):
//
//	<p>.control.rollout.<id>.<verb>                   verb: start, pause, resume, cancel, rollback-all, approve
//	<p>.control.rollout.<id>.rollback                 body {"device_uuid": "..."}: one device
//	<p>.control.rollout.<id>.devices.<uuid>.rollback  the same, device in the subject
//	<p>.control.rollout.<id>.retry                    optional body {"device_uuids": [...]}
//
// The operator token goes in header Authorization ("Bearer <token>" or the bare token) and is checked
// like HTTP's: an operate (or admin) token is needed. The reply is a Result, or
// {"error": {"code", "message"}} with the code HTTP would give.
func (s *Service) Run(ctx context.Context) error {
	if s.nc == nil {
		return fmt.Errorf("control: NATS responder needs Config.NC")
	}
	if s.ops == nil {
		return fmt.Errorf("control: NATS responder needs Config.Operators")
	}
	sub, err := s.nc.QueueSubscribe(s.subj.Prefix+".control.rollout.>", s.queue, func(m *nats.Msg) {
		s.serveNATS(context.WithoutCancel(ctx), m)
	})
	if err != nil {
		return fmt.Errorf("control: subscribe %s: %w", s.subj.ControlAll(), err)
	}
	s.log.Info().Str("subject", sub.Subject).Str("queue", s.queue).Msg("control responder listening")
	<-ctx.Done()
	if err := sub.Drain(); err != nil && !s.nc.IsClosed() {
		s.log.Warn().Err(err).Msg("drain control subscription")
	}
	return nil
}

// Request is the optional body of a NATS control request.
type Request struct {
	// DeviceUUID names the device of a "rollback" request.
	DeviceUUID string `json:"device_uuid,omitempty"`
	// DeviceUUIDs names the devices of a "retry" request (none: every failed device).
	DeviceUUIDs []string `json:"device_uuids,omitempty"`
}

func (s *Service) serveNATS(ctx context.Context, m *nats.Msg) {
	if m.Reply == "" {
		return // nobody to answer; a verb is never carried out unseen
	}
	res, err := s.natsRequest(ctx, m)
	var body []byte
	if err != nil {
		status, doc := apierr.ToBody(err)
		if status >= 500 {
			s.log.Error().Err(err).Str("subject", m.Subject).Msg("control request failed")
		}
		body, _ = json.Marshal(doc)
	} else {
		body, _ = json.Marshal(res)
	}
	if err := m.Respond(body); err != nil {
		s.log.Warn().Err(err).Str("subject", m.Subject).Msg("answer control request")
	}
}

// natsRequest authenticates a NATS control request and carries it out.
func (s *Service) natsRequest(ctx context.Context, m *nats.Msg) (any, error) {
	id, verb, device, err := s.parseSubject(m.Subject)
	if err != nil {
		return Result{}, err
	}
	token := strings.TrimSpace(m.Header.Get("Authorization"))
	if t := auth.BearerToken(token); t != "" {
		token = t
	}
	p, err := s.ops.Authenticate(ctx, token)
	if err != nil {
		return Result{}, err
	}
	if !p.Scope.Allows(auth.ScopeOperate) {
		return Result{}, apierr.New(apierr.ErrForbidden, "insufficient_scope",
			"this needs a %s token; the presented token has scope %s", auth.ScopeOperate, p.Scope)
	}
	if verb == Retry {
		req, err := decodeRequest(m.Data)
		if err != nil {
			return Result{}, err
		}
		return s.Retry(ctx, id, req.DeviceUUIDs, p.Actor())
	}
	if verb == Rollback && device == "" {
		req, err := decodeRequest(m.Data)
		if err != nil {
			return Result{}, err
		}
		if req.DeviceUUID == "" {
			return Result{}, apierr.Invalid("device_uuid", "rollback of one device needs {\"device_uuid\"}; use rollback-all for the whole rollout")
		}
		device = req.DeviceUUID
	}
	return s.Do(ctx, verb, id, device, p.Actor())
}

// parseSubject splits <p>.control.rollout.<id>.<verb> and <p>.control.rollout.<id>.devices.<uuid>.rollback.
func (s *Service) parseSubject(subject string) (id string, verb Verb, device string, err error) {
	rest, ok := strings.CutPrefix(subject, s.subj.Prefix+".control.rollout.")
	if !ok {
		return "", "", "", apierr.New(apierr.ErrNotFound, "not_found", "no control subject %s", subject)
	}
	parts := strings.Split(rest, ".")
	switch {
	case len(parts) == 2:
		return parts[0], Verb(parts[1]), "", nil
	case len(parts) == 4 && parts[1] == "devices" && parts[3] == string(Rollback):
		return parts[0], Rollback, parts[2], nil
	}
	return "", "", "", apierr.New(apierr.ErrNotFound, "not_found",
		"no control subject %s: want %s.control.rollout.<id>.<verb> or ...<id>.devices.<uuid>.rollback", subject, s.subj.Prefix)
}
