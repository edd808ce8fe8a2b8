// Package ingest serves the registry webhook endpoint: it authenticates a delivery, recognises its
// format, and puts each tagged image push on the PUSHES stream with a dedupe id, answering only after
// JetStream has acknowledged it.
package ingest

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/fleetshift/fleetshift/ingest/registry"
	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/streams"
)

// Routes served by Register.
const (
	WebhookPath     = "/api/v1/webhooks/docker-registry"
	WebhookTestPath = "/api/v1/webhooks/docker-registry/test"
)

// KindPushV1 is the Fleetshift-Kind header of a streams.PushV1 message.
const KindPushV1 = "push.v1"

// DefaultMaxBody is the webhook body limit when Config.MaxBody is zero.
const DefaultMaxBody = 1 << 20

// DefaultMaxPushes is how many tagged pushes one delivery may queue when Config.MaxPushes is zero. A
// delivery holding more (a Quay updated_tags list of thousands of tags) is refused whole with 413
// too_many_pushes, before anything is queued: the registry's sender should split it.
const DefaultMaxPushes = 100

// maxPusherLen bounds the informational pusher name kept with a push.
const maxPusherLen = 200

// pushNamespace is the UUID v5 namespace of push event ids (itself the v5 URL id of
// "https://github.com/fleetshift/fleetshift/streams/push.v1"). Changing it changes every event id.
const pushNamespace = "07abe8b7-ec6f-57ef-b769-792251b16d83"

// Config is what the ingest service needs.
type Config struct {
	// JS publishes pushes. Required.
	JS jetstream.JetStream
	// Subjects names the push subject and stream; the zero value means streams.New("").
	Subjects streams.Subjects
	// Log is the service's logger; the caller names it (logging.Component), once.
	Log zerolog.Logger
	// WebhookToken authenticates a delivery presenting it as query `token` or `Authorization: Bearer`.
	WebhookToken string
	// WebhookSecret authenticates a delivery whose X-Hub-Signature-256 is the HMAC-SHA256 of its raw
	// body. When set, a delivery carrying a signature that does not verify is refused even if it also
	// presents the token.
	WebhookSecret string
	// MaxBody is the largest accepted body in bytes (DefaultMaxBody when zero).
	MaxBody int
	// MaxPushes is the most tagged pushes one delivery may queue (DefaultMaxPushes when zero).
	MaxPushes int
	// AllowUnauthenticated accepts deliveries without credentials when neither WebhookToken nor
	// WebhookSecret is set. Without it such a service refuses every delivery.
	AllowUnauthenticated bool
	// PublishTimeout bounds the wait for JetStream's acknowledgement (default 10s).
	PublishTimeout time.Duration
	// Now is the clock stamping ReceivedAt (time.Now when nil).
	Now func() time.Time
}

// Service is the webhook endpoint. It is safe for concurrent use and keeps no state besides counters.
type Service struct {
	cfg      Config
	log      zerolog.Logger
	webhooks *prometheus.CounterVec
}

// Outcomes counted in fleetshift_webhooks_total.
const (
	OutcomeAccepted     = "accepted"
	OutcomeDuplicate    = "duplicate"
	OutcomeIgnored      = "ignored"
	OutcomeUnauthorized = "unauthorized"
	OutcomeInvalid      = "invalid"
	OutcomeTooLarge     = "too_large"
	OutcomeUnavailable  = "unavailable"
)

// New validates cfg, fills its defaults and returns the service.
func New(cfg Config) (*Service, error) {
	if cfg.JS == nil {
		return nil, errors.New("new ingest service: JetStream is required")
	}
	if cfg.Subjects.Prefix == "" {
		cfg.Subjects = streams.New("")
	}
	if cfg.MaxBody < 0 {
		return nil, fmt.Errorf("new ingest service: MaxBody %d is negative", cfg.MaxBody)
	}
	cfg.MaxBody = cmp.Or(cfg.MaxBody, DefaultMaxBody)
	cfg.MaxPushes = cmp.Or(cfg.MaxPushes, DefaultMaxPushes)
	cfg.PublishTimeout = cmp.Or(cfg.PublishTimeout, 10*time.Second)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Log
	if cfg.WebhookToken == "" && cfg.WebhookSecret == "" {
		if cfg.AllowUnauthenticated {
			log.Warn().Msg("webhook accepts unauthenticated deliveries: neither token nor secret is set")
		} else {
			log.Warn().Msg("webhook refuses every delivery: neither token nor secret is set")
		}
	}
	return &Service{
		cfg: cfg,
		log: log,
		webhooks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleetshift_webhooks_total",
			Help: "Registry webhook deliveries by detected registry format and outcome.",
		}, []string{"registry", "outcome"}),
	}, nil
}

// Collectors returns the service's Prometheus collectors for the wiring to register.
func (s *Service) Collectors() []prometheus.Collector {
	return []prometheus.Collector{s.webhooks}
}

// Register mounts POST WebhookPath and GET WebhookTestPath on r. Errors are returned to Fiber's error
// handler, which must be apierr.FiberErrorHandler.
func (s *Service) Register(r fiber.Router) {
	r.Get(WebhookTestPath, func(c *fiber.Ctx) error {
		return c.JSON(fiber.Map{"status": "ok"})
	})
	r.Post(WebhookPath, s.handleWebhook)
}

// Response is the body of a webhook answer: the event id of the push (event_ids too when the delivery
// held several), or why the delivery was ignored.
type Response struct {
	EventID   string   `json:"event_id,omitempty"`
	EventIDs  []string `json:"event_ids,omitempty"`
	Duplicate bool     `json:"duplicate,omitempty"`
	Ignored   string   `json:"ignored,omitempty"`
}

// EventID is the event id of the push identified by dedupeKey: a UUID v5, the same for every delivery
// of that push.
func EventID(dedupeKey string) string {
	return uuid.NewSHA1(uuid.MustParse(pushNamespace), []byte(dedupeKey)).String()
}

func (s *Service) handleWebhook(c *fiber.Ctx) error {
	body := c.BodyRaw()
	if len(body) > s.cfg.MaxBody {
		s.count(registry.Unknown, OutcomeTooLarge)
		return apierr.New(apierr.ErrTooLarge, "payload_too_large", "webhook body is larger than %d bytes", s.cfg.MaxBody)
	}
	if err := s.authenticate(c, body); err != nil {
		s.count(registry.Unknown, OutcomeUnauthorized)
		s.log.Warn().Str("remote", c.IP()).Str("reason", err.Error()).Msg("webhook refused")
		return err
	}
	if enc := c.Get(fiber.HeaderContentEncoding); enc != "" && enc != "identity" {
		s.count(registry.Unknown, OutcomeInvalid)
		return apierr.New(apierr.ErrInvalid, "unsupported_content_encoding", "content encoding %q is not supported; send the body uncompressed", enc)
	}
	res, err := registry.Parse(body, fiberHeaders{c})
	if err != nil {
		s.count(res.Registry, OutcomeInvalid)
		return apierr.New(apierr.ErrInvalid, "unreadable_payload", "%s", err.Error())
	}
	if len(res.Pushes) > s.cfg.MaxPushes {
		s.count(res.Registry, OutcomeTooLarge)
		return apierr.New(apierr.ErrTooLarge, "too_many_pushes",
			"the delivery holds %d tagged pushes; at most %d are accepted per delivery (nothing was queued: send fewer tags per delivery)",
			len(res.Pushes), s.cfg.MaxPushes)
	}
	for i := range res.Pushes {
		if err := checkPush(&res.Pushes[i]); err != nil {
			s.count(res.Registry, OutcomeInvalid)
			return err
		}
	}
	if len(res.Pushes) == 0 {
		s.count(res.Registry, OutcomeIgnored)
		reason := res.IgnoredReason()
		s.log.Debug().Str("registry", res.Registry).Str("ignored", reason).Msg("webhook ignored")
		return c.Status(http.StatusAccepted).JSON(Response{Ignored: reason})
	}

	ctx, cancel := context.WithTimeout(c.UserContext(), s.cfg.PublishTimeout)
	defer cancel()
	received := s.cfg.Now().UTC()
	ids := make([]string, 0, len(res.Pushes))
	allDuplicate := true
	for _, p := range res.Pushes {
		msg := s.message(p, received)
		dup, err := s.publish(ctx, msg)
		if err != nil {
			s.count(res.Registry, OutcomeUnavailable)
			s.log.Error().Err(err).Str("registry", res.Registry).Str("event_id", msg.EventID).Msg("push not stored")
			return apierr.New(apierr.ErrUnavailable, "jetstream_unavailable", "the push could not be stored; retry the delivery")
		}
		allDuplicate = allDuplicate && dup
		ids = append(ids, msg.EventID)
		ev := s.log.Info()
		if dup {
			ev = s.log.Debug()
		}
		ev.Str("registry", p.Registry).Str("image", p.Ref.String()).Str("event_id", msg.EventID).
			Bool("duplicate", dup).Msg("push received")
		if p.DroppedDigest != "" {
			s.log.Warn().Str("image", p.Ref.String()).Str("digest", p.DroppedDigest).
				Msg("push carried an invalid digest; rolling out by tag only")
		}
	}
	out := Response{EventID: ids[0]}
	if len(ids) > 1 {
		out.EventIDs = ids
	}
	if allDuplicate {
		s.count(res.Registry, OutcomeDuplicate)
		out.Duplicate = true
		return c.Status(http.StatusOK).JSON(out)
	}
	s.count(res.Registry, OutcomeAccepted)
	return c.Status(http.StatusAccepted).JSON(out)
}

// checkPush makes a push storable downstream (PostgreSQL text refuses NUL and invalid UTF-8): the
// informational pusher is cleaned (control characters dropped, invalid UTF-8 replaced, length capped);
// any other field that is not clean text refuses the delivery with a 400 naming it, so no poison push is
// ever queued.
func checkPush(p *registry.Push) error {
	p.Pusher = cleanText(p.Pusher, maxPusherLen)
	for _, f := range []struct{ name, value string }{
		{"repository", p.Ref.Repository}, {"image_name", p.Ref.Familiar}, {"tag", p.Ref.Tag},
		{"digest", p.Ref.Digest}, {"delivery_id", p.DedupeKey}, {"registry", p.Registry},
	} {
		if err := apierr.CheckText(f.name, f.value); err != nil {
			return err
		}
	}
	return nil
}

// cleanText returns s as valid UTF-8 without control characters, at most max bytes.
func cleanText(s string, max int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return -1
		}
		return r
	}, s)
	for len(s) > max {
		_, size := utf8.DecodeLastRuneInString(s)
		s = s[:len(s)-size]
	}
	return s
}

func (s *Service) message(p registry.Push, received time.Time) streams.PushV1 {
	return streams.PushV1{
		EventID:    EventID(p.DedupeKey),
		DedupeKey:  p.DedupeKey,
		Registry:   p.Registry,
		Repository: p.Ref.Repository,
		ImageName:  p.Ref.Familiar,
		Tag:        p.Ref.Tag,
		Digest:     p.Ref.Digest,
		PushedAt:   p.PushedAt,
		ReceivedAt: received,
		Pusher:     p.Pusher,
	}
}

// publishRetryWait is the pause between publish attempts while the pushes stream has no leader.
const publishRetryWait = 250 * time.Millisecond

// publish stores m on the push subject with its event id as Nats-Msg-Id and reports whether JetStream
// already held it.
func (s *Service) publish(ctx context.Context, m streams.PushV1) (duplicate bool, err error) {
	data, err := json.Marshal(m)
	if err != nil {
		return false, fmt.Errorf("encode push %s: %w", m.EventID, err)
	}
	msg := &nats.Msg{Subject: s.cfg.Subjects.Push(), Data: data, Header: nats.Header{}}
	msg.Header.Set(streams.HeaderKind, KindPushV1)
	// A stream without a leader (a NATS node rejoining a cluster starts an election) answers no responders
	// for a second or two: try again until the publish timeout rather than answer 503 at once, since a
	// registry may not redeliver (nats.go alone gives up after 2 retries, 0.5 s).
	ack, err := s.cfg.JS.PublishMsg(ctx, msg,
		jetstream.WithMsgID(m.EventID), jetstream.WithExpectStream(s.cfg.Subjects.PushesStream()),
		jetstream.WithRetryWait(publishRetryWait), jetstream.WithRetryAttempts(int(s.cfg.PublishTimeout/publishRetryWait)+1))
	if err != nil {
		return false, fmt.Errorf("publish push %s: %w", m.EventID, err)
	}
	return ack.Duplicate, nil
}

func (s *Service) count(registryName, outcome string) {
	s.webhooks.WithLabelValues(cmp.Or(registryName, registry.Unknown), outcome).Inc()
}

// fiberHeaders adapts a request's headers to registry.Headers.
type fiberHeaders struct{ c *fiber.Ctx }

func (h fiberHeaders) Get(name string) string { return h.c.Get(name) }
