package console

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/auth"
)

// streamBuffer is how many events wait for a slow browser before the consumer stalls (it never drops).
const streamBuffer = 512

// stream: GET /api/v1/events/stream?rollout=<id> as Server-Sent Events. Each event of the EVENTS stream
// (of one rollout, or of all) is one SSE message: `id:` the stream sequence, `data:` the event JSON
// (streams.EventV1). Only events published after the request are sent, unless the browser reconnects
// with Last-Event-ID: then the stream resumes after that sequence, so a reconnect loses nothing.
// A comment line every Heartbeat keeps proxies from closing an idle stream and finds clients that left.
//
// Browsers' EventSource cannot set headers, so this route (and only this one) also takes the token as
// ?token=; it needs scope read. Every client gets its own ordered (ephemeral) consumer, stopped when the
// client goes away or the server shuts down.
func (c *Console) stream(ctx *fiber.Ctx) error {
	token := auth.BearerToken(ctx.Get(fiber.HeaderAuthorization))
	if token == "" {
		token = strings.TrimSpace(ctx.Query("token"))
	}
	p, err := c.cfg.Operators.Authenticate(ctx.UserContext(), token)
	if err != nil {
		return err
	}
	if !p.Scope.Allows(auth.ScopeRead) {
		return apierr.New(apierr.ErrForbidden, "insufficient_scope", "this needs a read token; the presented token has scope %s", p.Scope)
	}
	rollout := "*"
	if raw := strings.TrimSpace(ctx.Query("rollout")); raw != "" {
		u, err := uuid.Parse(raw)
		if err != nil {
			return apierr.Invalid("rollout", "not a uuid: %q", raw)
		}
		rollout = u.String()
	}
	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{c.cfg.Subjects.Event("*.*", rollout)},
		DeliverPolicy:  jetstream.DeliverNewPolicy,
		// A backstop: the consumer is deleted when its client goes away (stopConsumer).
		InactiveThreshold: time.Minute,
	}
	if raw := strings.TrimSpace(ctx.Get("Last-Event-ID")); raw != "" {
		seq, err := strconv.ParseUint(raw, 10, 64)
		if err != nil {
			return apierr.Invalid("Last-Event-ID", "not an event id this stream sent: %q", raw)
		}
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, seq+1
	}

	// The consumer exists before the answer starts, so the client misses nothing published after it
	// sees the stream open, and a failure is still an HTTP error.
	sctx, cancel := context.WithCancel(context.Background())
	cons, err := c.cfg.JS.OrderedConsumer(sctx, c.cfg.Subjects.EventsStream(), cfg)
	if err != nil {
		cancel()
		return fmt.Errorf("open event stream for %s: %w", p.Name, err)
	}
	msgs := make(chan jetstream.Msg, streamBuffer)
	consuming, err := cons.Consume(func(m jetstream.Msg) {
		select {
		case msgs <- m:
		case <-sctx.Done():
		}
	})
	if err != nil {
		cancel()
		return fmt.Errorf("consume event stream for %s: %w", p.Name, err)
	}

	log := c.cfg.Log.With().Str("token", p.Name).Str("rollout", rollout).Logger()
	conn := ctx.Context().Conn()
	shutdown := ctx.Context().Done() // closed when the HTTP server shuts down
	heartbeat := c.cfg.Heartbeat
	ctx.Set(fiber.HeaderContentType, "text/event-stream")
	ctx.Set(fiber.HeaderCacheControl, "no-cache")
	ctx.Set("X-Accel-Buffering", "no")
	ctx.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
		defer cancel()
		defer c.stopConsumer(cons, consuming)
		log.Debug().Msg("event stream opened")
		defer log.Debug().Msg("event stream closed")
		// The server's write timeout was set once for the whole answer; each write extends it instead.
		flush := func() bool {
			_ = conn.SetWriteDeadline(time.Now().Add(2*heartbeat + 10*time.Second))
			return w.Flush() == nil
		}
		_, _ = w.WriteString("retry: 1000\n: connected\n\n")
		if !flush() {
			return
		}
		tick := time.NewTicker(heartbeat)
		defer tick.Stop()
		var line bytes.Buffer
		emit := func(m jetstream.Msg) {
			meta, err := m.Metadata()
			line.Reset()
			if err == nil {
				err = json.Compact(&line, m.Data())
			}
			if err != nil {
				log.Warn().Err(err).Str("subject", m.Subject()).Msg("event not streamed: unreadable")
				return
			}
			fmt.Fprintf(w, "id: %d\ndata: %s\n\n", meta.Sequence.Stream, line.Bytes())
		}
		for {
			select {
			case <-shutdown:
				return
			case <-tick.C:
				_, _ = w.WriteString(": heartbeat\n\n")
				if !flush() {
					return // the client went away
				}
			case m := <-msgs:
				emit(m)
				for more := true; more; { // write what else is waiting, then flush once
					select {
					case m := <-msgs:
						emit(m)
					default:
						more = false
					}
				}
				if !flush() {
					return
				}
			}
		}
	})
	return nil
}

// stopConsumer stops consuming and deletes the client's consumer at once, rather than leaving it to
// the server's inactivity timer.
func (c *Console) stopConsumer(cons jetstream.Consumer, consuming jetstream.ConsumeContext) {
	consuming.Stop()
	info := cons.CachedInfo()
	if info == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.cfg.JS.DeleteConsumer(ctx, c.cfg.Subjects.EventsStream(), info.Name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		c.cfg.Log.Warn().Err(err).Str("consumer", info.Name).Msg("delete event stream consumer")
	}
}
