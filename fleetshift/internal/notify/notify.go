// Package notify sends outgoing webhook notifications for rollout events.
//
// Operators subscribe a URL to event kinds (paused, failed, completed, rolled_back) through the API
// (api.go). The notifier reads the EVENTS stream with the shared durable consumer "notifier": for each
// event of a notifiable type it writes, in one transaction, one notification_deliveries row per matching
// subscription (unique per subscription and event, so a redelivered event adds nothing), then acks. A
// delivery loop claims due rows with SKIP LOCKED, posts the stored body signed with the subscription's
// secret (X-Fleetshift-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>), and records the outcome:
// delivered on a 2xx, else retried with exponential backoff until MaxAttempts, then failed. Delivery is
// at least once: a receiver deduplicates by X-Fleetshift-Event-Id.
package notify

import (
	"bytes"
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/fleetshift/fleetshift/fleetshift/internal/metrics"
	"github.com/fleetshift/fleetshift/shared/consume"
	"github.com/fleetshift/fleetshift/streams"
)

// ConsumerNotifier is the notifier's durable consumer on the EVENTS stream.
const ConsumerNotifier = metrics.ConsumerNotifier

// Headers of every notification request.
const (
	HeaderSignature  = "X-Fleetshift-Signature-256" // sha256=<hex HMAC-SHA256 of the raw body, keyed by the secret>
	HeaderEvent      = "X-Fleetshift-Event"         // event type, e.g. image.rollout_paused
	HeaderEventID    = "X-Fleetshift-Event-Id"      // the event's id: the same on every retry (deduplicate by it)
	HeaderDeliveryID = "X-Fleetshift-Delivery"      // the delivery's id
)

// Kinds are the event kinds operators subscribe to, in the order they are listed.
func Kinds() []string { return []string{"paused", "failed", "completed", "rolled_back"} }

// EventType is the event type of a kind ("" for none).
func EventType(kind string) string {
	switch kind {
	case "paused":
		return streams.EventRolloutPaused
	case "failed":
		return streams.EventRolloutFailed
	case "completed":
		return streams.EventRolloutCompleted
	case "rolled_back":
		return streams.EventRolloutRolledBack
	}
	return ""
}

// Config configures the notifier.
type Config struct {
	Pool     *pgxpool.Pool
	JS       jetstream.JetStream
	Subjects streams.Subjects
	Log      zerolog.Logger
	// HTTP posts notifications (default: a client with a 10 s timeout).
	HTTP *http.Client
	// PollInterval is how often due deliveries are looked for when nothing woke the loop (default 1 s).
	PollInterval time.Duration
	// Backoff is the delay after the first failed attempt, doubling per attempt up to MaxBackoff
	// (defaults 5 s and 10 min).
	Backoff, MaxBackoff time.Duration
	// MaxAttempts is how many attempts a delivery gets before it is marked failed (default 10).
	MaxAttempts int
	// DeadLetterCount counts events dead-lettered (fleetshift_deadletter_total); optional.
	DeadLetterCount func(consumer, reason string)
}

// Service is the notifier: the event consumer and the delivery loop. Replicas may run side by side.
type Service struct {
	cfg     Config
	log     zerolog.Logger
	settler *consume.Settler
	wake    chan struct{}
	sent    *prometheus.CounterVec
}

// New validates cfg and returns the notifier.
func New(cfg Config) (*Service, error) {
	if cfg.Pool == nil || cfg.JS == nil {
		return nil, errors.New("notify: Config.Pool and Config.JS are required")
	}
	if cfg.Subjects.Prefix == "" {
		cfg.Subjects = streams.New("")
	}
	if cfg.HTTP == nil {
		cfg.HTTP = &http.Client{Timeout: 10 * time.Second}
	}
	cfg.PollInterval = cmp.Or(cfg.PollInterval, time.Second)
	cfg.Backoff = cmp.Or(cfg.Backoff, 5*time.Second)
	cfg.MaxBackoff = cmp.Or(cfg.MaxBackoff, 10*time.Minute)
	cfg.MaxAttempts = cmp.Or(cfg.MaxAttempts, 10)
	settler, err := consume.New(consume.Config{JS: cfg.JS, Subjects: cfg.Subjects, Consumer: ConsumerNotifier,
		Log: cfg.Log, Count: cfg.DeadLetterCount, Ping: cfg.Pool.Ping})
	if err != nil {
		return nil, fmt.Errorf("notify: %w", err)
	}
	sent := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fleetshift_notification_attempts_total",
		Help: "Webhook notification attempts by outcome: delivered, retry (failed, will be retried), failed (gave up).",
	}, []string{"outcome"})
	for _, o := range []string{"delivered", "retry", "failed"} {
		sent.WithLabelValues(o) // exported from the start, so rate() and alerts see a zero before the first attempt
	}
	return &Service{cfg: cfg, log: cfg.Log, settler: settler, wake: make(chan struct{}, 1), sent: sent}, nil
}

// Collectors are the notifier's metrics.
func (s *Service) Collectors() []prometheus.Collector { return []prometheus.Collector{s.sent} }

// Filters are the EVENTS subjects the notifier reads: the notifiable event types of every rollout.
func Filters(subj streams.Subjects) []string {
	var out []string
	for _, k := range Kinds() {
		out = append(out, subj.Event(EventType(k), "*"))
	}
	return out
}

// Run consumes events and delivers notifications until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	cc := streams.ConsumerConfig(ConsumerNotifier, "", time.Minute)
	cc.FilterSubject = ""
	cc.FilterSubjects = Filters(s.cfg.Subjects)
	cons, err := s.cfg.JS.CreateOrUpdateConsumer(ctx, s.cfg.Subjects.EventsStream(), cc)
	if err != nil {
		return fmt.Errorf("notify: create consumer %s: %w", ConsumerNotifier, err)
	}
	consumeCtx, err := cons.Consume(func(msg jetstream.Msg) { s.handleMsg(ctx, msg) }, jetstream.PullMaxMessages(16))
	if err != nil {
		return fmt.Errorf("notify: consume events: %w", err)
	}
	s.log.Info().Str("stream", s.cfg.Subjects.EventsStream()).Msg("notifier consuming events")
	s.deliverLoop(ctx)
	consumeCtx.Drain()
	<-consumeCtx.Closed()
	return nil
}

func (s *Service) handleMsg(ctx context.Context, msg jetstream.Msg) {
	if ctx.Err() != nil {
		_ = msg.Nak()
		return
	}
	var ev streams.EventV1
	if err := json.Unmarshal(msg.Data(), &ev); err != nil {
		s.settler.DeadLetter(ctx, msg, consume.ReasonDecode, fmt.Errorf("decode event: %w", err))
		return
	}
	var n int64
	err := s.settler.Handle(ctx, msg, func(ctx context.Context) error {
		var err error
		n, err = s.Enqueue(ctx, ev)
		return err
	}, nil)
	if err != nil {
		s.log.Warn().Err(err).Str("event_id", ev.ID).Msg("notify: enqueue failed")
		return
	}
	if n > 0 {
		s.poke()
	}
}

func (s *Service) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Enqueue writes one delivery per subscription to ev's type (created no later than the event), with
// the body in the subscription's format. Enqueuing the same event again adds nothing. It returns how
// many deliveries it added.
func (s *Service) Enqueue(ctx context.Context, ev streams.EventV1) (int64, error) {
	kind := kindOf(ev.Type)
	if kind == "" || ev.ID == "" {
		return 0, nil // not an event anyone can subscribe to
	}
	var added int64
	err := pgx.BeginFunc(ctx, s.cfg.Pool, func(tx pgx.Tx) error {
		var r *rolloutSummary
		if ev.RolloutID != "" {
			var rs rolloutSummary
			err := tx.QueryRow(ctx, `SELECT rollout_id::text, image_name, coalesce(old_tag, ''), new_tag, status,
					total_devices, updated_devices, failed_devices, rolled_back_devices, failure_rate, auto_paused
				FROM image_rollouts WHERE rollout_id = $1`, ev.RolloutID).Scan(&rs.ID, &rs.Image, &rs.OldTag, &rs.NewTag,
				&rs.Status, &rs.Devices, &rs.Updated, &rs.Failed, &rs.RolledBack, &rs.FailureRate, &rs.AutoPaused)
			switch {
			case err == nil:
				r = &rs
			case !errors.Is(err, pgx.ErrNoRows):
				return fmt.Errorf("read rollout %s: %w", ev.RolloutID, err)
			}
		}
		generic, err := jsonBody(ev, kind, r)
		if err != nil {
			return consume.Permanent(consume.ReasonInvalid, err)
		}
		slack, err := slackBody(ev, kind, r)
		if err != nil {
			return consume.Permanent(consume.ReasonInvalid, err)
		}
		var rollout any
		if ev.RolloutID != "" {
			rollout = ev.RolloutID
		}
		tag, err := tx.Exec(ctx, `INSERT INTO notification_deliveries (subscription_id, event_id, event_type, rollout_id, body)
			SELECT s.id, $1, $2, $3, CASE WHEN s.format = 'slack' THEN $4::bytea ELSE $5::bytea END
			FROM notification_subscriptions s
			WHERE $6 = ANY (s.event_types) AND s.created_at <= $7
			ON CONFLICT (subscription_id, event_id) DO NOTHING`,
			ev.ID, ev.Type, rollout, slack, generic, kind, ev.Timestamp)
		if err != nil {
			return fmt.Errorf("enqueue notifications for event %s: %w", ev.ID, err)
		}
		added = tag.RowsAffected()
		return nil
	})
	return added, err
}

func kindOf(eventType string) string {
	for _, k := range Kinds() {
		if EventType(k) == eventType {
			return k
		}
	}
	return ""
}

// deliverLoop sends due deliveries until ctx ends.
func (s *Service) deliverLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.PollInterval)
	defer t.Stop()
	for ctx.Err() == nil {
		n, err := s.DeliverDue(ctx)
		if err != nil && ctx.Err() == nil {
			s.log.Warn().Err(err).Msg("notify: deliver due notifications")
		}
		if n > 0 {
			continue // there may be more
		}
		select {
		case <-ctx.Done():
		case <-t.C:
		case <-s.wake:
		}
	}
}

type due struct {
	id       int64
	eventID  string
	typ      string
	body     []byte
	attempts int
	url      string
	secret   string
}

// claimLease is how long a claimed delivery is hidden from other replicas while it is being posted.
const claimLease = time.Minute

// DeliverDue claims up to 16 due deliveries, posts them concurrently, and records each outcome. It
// returns how many it attempted.
func (s *Service) DeliverDue(ctx context.Context) (int, error) {
	rows, err := s.cfg.Pool.Query(ctx, `UPDATE notification_deliveries d SET next_attempt_at = now() + $1::interval
		FROM notification_subscriptions s
		WHERE s.id = d.subscription_id AND d.id IN (
			SELECT id FROM notification_deliveries
			WHERE status = 'pending' AND next_attempt_at <= now()
			ORDER BY next_attempt_at, id LIMIT 16 FOR UPDATE SKIP LOCKED)
		RETURNING d.id, d.event_id::text, d.event_type, d.body, d.attempts, s.url, s.secret`,
		strconv.Itoa(int(claimLease.Seconds()))+" seconds")
	if err != nil {
		return 0, fmt.Errorf("claim due notifications: %w", err)
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (due, error) {
		var d due
		err := r.Scan(&d.id, &d.eventID, &d.typ, &d.body, &d.attempts, &d.url, &d.secret)
		return d, err
	})
	if err != nil {
		return 0, fmt.Errorf("claim due notifications: %w", err)
	}
	var wg sync.WaitGroup
	for _, d := range list {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.attempt(ctx, d)
		}()
	}
	wg.Wait()
	return len(list), nil
}

func (s *Service) attempt(ctx context.Context, d due) {
	code, err := s.post(ctx, d)
	if err != nil && ctx.Err() != nil {
		// Shutting down mid-post: not the receiver's fault. Release the claim; the next start (or another
		// replica) posts it again without counting an attempt.
		if _, uerr := s.cfg.Pool.Exec(context.WithoutCancel(ctx), `UPDATE notification_deliveries SET next_attempt_at = now()
			WHERE id = $1 AND status = 'pending'`, d.id); uerr != nil {
			s.log.Warn().Err(uerr).Int64("delivery", d.id).Msg("release notification claim")
		}
		return
	}
	attempts := d.attempts + 1
	ctx = context.WithoutCancel(ctx) // record what happened even while shutting down
	var q string
	var args []any
	switch {
	case err == nil:
		s.sent.WithLabelValues("delivered").Inc()
		q = `UPDATE notification_deliveries SET status = 'delivered', attempts = $2, last_status_code = $3,
			last_error = NULL, last_attempt_at = now(), delivered_at = now() WHERE id = $1`
		args = []any{d.id, attempts, code}
	case attempts >= s.cfg.MaxAttempts:
		s.sent.WithLabelValues("failed").Inc()
		s.log.Warn().Err(err).Int64("delivery", d.id).Int("attempts", attempts).Msg("notification failed; giving up")
		q = `UPDATE notification_deliveries SET status = 'failed', attempts = $2, last_status_code = $3,
			last_error = $4, last_attempt_at = now() WHERE id = $1`
		args = []any{d.id, attempts, nullCode(code), truncate(err.Error(), 500)}
	default:
		s.sent.WithLabelValues("retry").Inc()
		wait := s.backoff(attempts)
		s.log.Info().Err(err).Int64("delivery", d.id).Int("attempts", attempts).Dur("retry_in", wait).Msg("notification failed; will retry")
		q = `UPDATE notification_deliveries SET attempts = $2, last_status_code = $3, last_error = $4,
			last_attempt_at = now(), next_attempt_at = now() + $5::interval WHERE id = $1`
		args = []any{d.id, attempts, nullCode(code), truncate(err.Error(), 500), fmt.Sprintf("%d milliseconds", wait.Milliseconds())}
	}
	if _, err := s.cfg.Pool.Exec(ctx, q, args...); err != nil {
		// The lease runs out and the delivery is attempted again: at least once.
		s.log.Warn().Err(err).Int64("delivery", d.id).Msg("record notification outcome")
	}
}

// backoff is the wait after the n-th failed attempt: Backoff, 2x, 4x ... capped at MaxBackoff.
func (s *Service) backoff(n int) time.Duration {
	return min(s.cfg.Backoff<<min(max(n, 1)-1, 20), s.cfg.MaxBackoff)
}

// post sends one attempt; a non-2xx answer is an error carrying its status.
func (s *Service) post(ctx context.Context, d due) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.url, bytes.NewReader(d.body))
	if err != nil {
		return 0, fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "fleetshift-notifier")
	req.Header.Set(HeaderEvent, d.typ)
	req.Header.Set(HeaderEventID, d.eventID)
	req.Header.Set(HeaderDeliveryID, strconv.FormatInt(d.id, 10))
	req.Header.Set(HeaderSignature, Sign(d.secret, d.body))
	res, err := s.cfg.HTTP.Do(req)
	if err != nil {
		return 0, fmt.Errorf("POST: %w", err)
	}
	defer res.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(res.Body, 200))
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, 1<<20))
	if res.StatusCode < 200 || res.StatusCode > 299 {
		msg := fmt.Sprintf("HTTP %d", res.StatusCode)
		if t := bytes.TrimSpace(snippet); len(t) > 0 {
			msg += ": " + string(t)
		}
		return res.StatusCode, errors.New(msg)
	}
	return res.StatusCode, nil
}

// Sign is the X-Fleetshift-Signature-256 value of body under secret: "sha256=" + hex HMAC-SHA256.
func Sign(secret string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// Verify checks a signature header against body and secret in constant time (for receivers and tests).
func Verify(secret string, body []byte, header string) bool {
	return hmac.Equal([]byte(Sign(secret, body)), []byte(header))
}

func nullCode(code int) any {
	if code == 0 {
		return nil
	}
	return code
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
