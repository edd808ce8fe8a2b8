// Package consume settles JetStream messages so that no message can block a consumer: a message that can
// never succeed (unreadable, invalid, or refused by PostgreSQL as bad data) is terminated and recorded in
// the dead-letter stream with its reason; one that failed for a passing reason (a deadlock, a
// serialization failure) is redelivered with a growing delay and dead-lettered once it has been delivered
// streams.MaxDeliver times; while the database cannot be reached a consumer holds its messages and waits
// instead of spending their deliveries.
//
// A dead-lettered message keeps its payload and is published to <prefix>.deadletter.<stream> with the
// headers streams.HeaderDL* (original subject, stream, stream sequence, consumer, reason, error,
// deliveries) and the message id <stream>:<seq>, so dead-lettering the same message twice stores it once.
package consume

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/streams"
)

// Reasons a message is dead-lettered (the reason label of fleetshift_deadletter_total).
const (
	ReasonDecode     = "decode"      // the payload cannot be read
	ReasonInvalid    = "invalid"     // readable, but refused by validation
	ReasonData       = "data"        // PostgreSQL refused the data (SQLSTATE class 22 or 23)
	ReasonMaxDeliver = "max_deliver" // still failing after streams.MaxDeliver deliveries
)

// permanentError is a failure no redelivery can get past.
type permanentError struct {
	reason string
	err    error
}

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks err as a failure the message can never get past, with reason (one of the Reason
// constants) as its class.
func Permanent(reason string, err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{reason: reason, err: err}
}

// Classify says whether err can never be got past by redelivering the message, and why: errors marked
// with Permanent, apierr.ErrInvalid, and PostgreSQL data errors (SQLSTATE class 22, data exception, e.g.
// 22P05 unsupported Unicode escape, 22003 numeric out of range, 22021 invalid byte sequence; and class
// 23, integrity constraint violation). Everything else is worth another try.
func Classify(err error) (reason string, permanent bool) {
	var pe *permanentError
	if errors.As(err, &pe) {
		return pe.reason, true
	}
	var pg *pgconn.PgError
	if errors.As(err, &pg) && (strings.HasPrefix(pg.Code, "22") || strings.HasPrefix(pg.Code, "23")) {
		return ReasonData, true
	}
	if errors.Is(err, apierr.ErrInvalid) {
		return ReasonInvalid, true
	}
	return "", false
}

// Unavailable reports whether err means PostgreSQL cannot be reached or refuses work for now
// (apierr.Unreachable: connect failures, dropped connections, server shutting down, too many
// connections), except that work which ran out of time (context.DeadlineExceeded) is not: the message is
// not at fault, and its consumer should wait for the database rather than retry it.
func Unavailable(err error) bool {
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		return false // the work took too long: not the database's absence
	}
	return apierr.Unreachable(err)
}

// Config configures a Settler.
type Config struct {
	// JS publishes dead letters. Required.
	JS jetstream.JetStream
	// Subjects names the dead-letter subjects.
	Subjects streams.Subjects
	// Consumer is the durable's name (the consumer label of the metric).
	Consumer string
	Log      zerolog.Logger
	// Count is called once for every message dead-lettered (fleetshift_deadletter_total); optional.
	Count func(consumer, reason string)
	// Ping checks that the database answers; while it fails a consumer holds its messages. Optional:
	// without it an unavailable database only delays redelivery.
	Ping func(ctx context.Context) error
	// MaxDeliver is the delivery after which a failing message is dead-lettered (default streams.MaxDeliver).
	MaxDeliver int
	// MaxDelay caps the redelivery delay of a failing message (default 1 minute).
	MaxDelay time.Duration
}

// Settler acknowledges, retries or dead-letters the messages of one consumer. It is safe for concurrent use.
type Settler struct {
	cfg Config
}

// New returns a Settler for cfg.
func New(cfg Config) (*Settler, error) {
	if cfg.JS == nil {
		return nil, errors.New("consume: Config.JS is required")
	}
	if cfg.Consumer == "" {
		return nil, errors.New("consume: Config.Consumer is required")
	}
	if cfg.Subjects.Prefix == "" {
		cfg.Subjects = streams.New("")
	}
	if cfg.MaxDeliver <= 0 {
		cfg.MaxDeliver = streams.MaxDeliver
	}
	if cfg.MaxDelay <= 0 {
		cfg.MaxDelay = time.Minute
	}
	return &Settler{cfg: cfg}, nil
}

// Outcome is what Fail did with a message.
type Outcome int

// Outcomes of Fail.
const (
	Retried      Outcome = iota // nak'd with a delay; it will be redelivered
	DeadLettered                // terminated and recorded in the dead-letter stream
	Unreachable                 // the database is away: nak'd with a delay; the consumer should Hold or pause
)

// Fail settles a message whose handling failed with err: a permanent failure (Classify) is dead-lettered,
// an unavailable database nak'd with a delay (Unreachable: the caller should wait for it), any other error
// nak'd with a delay growing with the deliveries, and dead-lettered on delivery MaxDeliver.
func (s *Settler) Fail(ctx context.Context, msg jetstream.Msg, err error) Outcome {
	if reason, ok := Classify(err); ok {
		s.DeadLetter(ctx, msg, reason, err)
		return DeadLettered
	}
	delivered := uint64(1)
	if md, mdErr := msg.Metadata(); mdErr == nil {
		delivered = md.NumDelivered
	}
	if Unavailable(err) {
		_ = msg.NakWithDelay(s.delay(delivered))
		return Unreachable
	}
	if delivered >= uint64(s.cfg.MaxDeliver) {
		s.DeadLetter(ctx, msg, ReasonMaxDeliver, err)
		return DeadLettered
	}
	d := s.delay(delivered)
	s.cfg.Log.Warn().Err(err).Str("subject", msg.Subject()).Uint64("delivered", delivered).Dur("retry_in", d).
		Msg("message failed; will retry")
	_ = msg.NakWithDelay(d)
	return Retried
}

// Admit dead-letters msg, reason max_deliver, when it has been delivered more than MaxDeliver times
// already (its handler kept dying before settling it: a crash loop) and returns false; otherwise it
// returns true and the message should be handled.
func (s *Settler) Admit(ctx context.Context, msg jetstream.Msg) bool {
	md, err := msg.Metadata()
	if err != nil || md.NumDelivered <= uint64(s.cfg.MaxDeliver) {
		return true
	}
	s.DeadLetter(ctx, msg, ReasonMaxDeliver, fmt.Errorf("delivered %d times without being settled", md.NumDelivered))
	return false
}

// delay is the redelivery delay after the n-th delivery: 1s, 2s, 4s ... up to MaxDelay.
func (s *Settler) delay(n uint64) time.Duration {
	return min(time.Second<<min(max(n, 1)-1, 10), s.cfg.MaxDelay)
}

// DeadLetter publishes msg to the dead-letter stream with reason and cause, then terminates it and counts
// it. If the dead-letter stream cannot take it, the message is nak'd with a delay instead, so nothing is
// lost.
func (s *Settler) DeadLetter(ctx context.Context, msg jetstream.Msg, reason string, cause error) {
	h := nats.Header{}
	h.Set(streams.HeaderDLSubject, msg.Subject())
	h.Set(streams.HeaderDLConsumer, s.cfg.Consumer)
	h.Set(streams.HeaderDLReason, reason)
	if cause != nil {
		h.Set(streams.HeaderDLError, truncate(cause.Error(), 1024))
	}
	stream, seq := "UNKNOWN", ""
	if md, err := msg.Metadata(); err == nil {
		stream, seq = md.Stream, strconv.FormatUint(md.Sequence.Stream, 10)
		h.Set(streams.HeaderDLStream, md.Stream)
		h.Set(streams.HeaderDLSeq, seq)
		h.Set(streams.HeaderDLDelivery, strconv.FormatUint(md.NumDelivered, 10))
	}
	var opts []jetstream.PublishOpt
	if seq != "" {
		opts = append(opts, jetstream.WithMsgID(stream+":"+seq))
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	_, err := s.cfg.JS.PublishMsg(pctx, &nats.Msg{Subject: s.cfg.Subjects.DeadLetter(stream), Header: h, Data: msg.Data()}, opts...)
	if err != nil {
		s.cfg.Log.Error().Err(err).Str("subject", msg.Subject()).Str("reason", reason).
			Msg("cannot record a dead letter; the message will be redelivered")
		_ = msg.NakWithDelay(5 * time.Second)
		return
	}
	_ = msg.TermWithReason(reason)
	s.cfg.Log.Error().Err(cause).Str("subject", msg.Subject()).Str("stream", stream).Str("seq", seq).
		Str("reason", reason).Msg("message dead-lettered")
	if s.cfg.Count != nil {
		s.cfg.Count(s.cfg.Consumer, reason)
	}
}

// Hold keeps msgs from being redelivered while the database is unreachable: it pings the database with
// a growing pause (100ms to 5s), telling JetStream the messages are in progress, until a ping succeeds
// (true) or ctx ends (false). Without Config.Ping it returns false at once.
func (s *Settler) Hold(ctx context.Context, msgs ...jetstream.Msg) bool {
	if s.cfg.Ping == nil {
		return false
	}
	pause := 100 * time.Millisecond
	logged := false
	for ctx.Err() == nil {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := s.cfg.Ping(pctx)
		cancel()
		if err == nil {
			if logged {
				s.cfg.Log.Info().Msg("database reachable again; resuming")
			}
			return true
		}
		if !logged {
			s.cfg.Log.Warn().Err(err).Int("held", len(msgs)).Msg("database unreachable; holding messages until it answers")
			logged = true
		}
		for _, m := range msgs {
			_ = m.InProgress()
		}
		select {
		case <-ctx.Done():
		case <-time.After(pause):
		}
		pause = min(pause*2, 5*time.Second)
	}
	return false
}

// Handle runs fn for msg and settles it: ack after success, Hold and run again while the database is
// unreachable, Fail otherwise. ack is how to acknowledge (nil: msg.Ack). It returns fn's last error.
func (s *Settler) Handle(ctx context.Context, msg jetstream.Msg, fn func(context.Context) error, ack func() error) error {
	for {
		err := fn(ctx)
		if err == nil {
			if ack == nil {
				ack = msg.Ack
			}
			if aerr := ack(); aerr != nil {
				s.cfg.Log.Warn().Err(aerr).Str("subject", msg.Subject()).Msg("ack failed; a redelivery will be a no-op")
			}
			return nil
		}
		if _, permanent := Classify(err); !permanent && Unavailable(err) && ctx.Err() == nil && s.Hold(ctx, msg) {
			continue
		}
		if ctx.Err() != nil {
			_ = msg.Nak() // shutting down: let another replica (or the next start) have it
			return err
		}
		s.Fail(ctx, msg, err)
		return err
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
