// Package outbox implements the transactional outbox: messages written in the same PostgreSQL
// transaction as the state change they announce, and a relay that publishes them to JetStream with
// Nats-Msg-Id set to the message id, so a state change and its message always agree.
package outbox

import (
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// NotifyChannel is the PostgreSQL channel a write signals so relays wake at once.
const NotifyChannel = "fleetshift_outbox"

// Message is one message to publish.
type Message struct {
	// ID becomes Nats-Msg-Id; empty gets a random one.
	ID      string
	Subject string
	Payload []byte
}

// JSON returns a message whose payload is v encoded as JSON.
func JSON(id, subject string, v any) (Message, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return Message{}, fmt.Errorf("encode outbox message for %s: %w", subject, err)
	}
	return Message{ID: id, Subject: subject, Payload: b}, nil
}

// BundleSubject is the subject column of an outbox row that carries many messages (a bundle, see
// encodeBundle). The relay publishes every message of a bundle, in order, each with its own
// Nats-Msg-Id.
const BundleSubject = "$fleetshift.outbox.bundle"

// BundleMin is the number of messages from which Add writes bundles instead of one row per message.
const BundleMin = 64

// bundleMax is the most messages one bundle row carries.
const bundleMax = 10_000

// Add writes msgs in tx. They are published after tx commits, and never if it rolls back. From
// BundleMin messages on they are written as bundle rows (see BundleSubject) of up to 10,000 messages.
func Add(ctx context.Context, tx pgx.Tx, msgs ...Message) error {
	if len(msgs) == 0 {
		return nil
	}
	// Many messages become a few bundle rows: one row to write, claim and delete per bundleMax.
	b := &pgx.Batch{}
	if len(msgs) >= BundleMin {
		for lo := 0; lo < len(msgs); lo += bundleMax {
			b.Queue(`INSERT INTO outbox (msg_id, subject, payload) VALUES ($1, $2, $3)`,
				"bundle-"+uuid.NewString(), BundleSubject, encodeBundle(msgs[lo:min(lo+bundleMax, len(msgs))]))
		}
	} else {
		for _, m := range msgs {
			b.Queue(`INSERT INTO outbox (msg_id, subject, payload) VALUES ($1, $2, $3)`, idOf(m), m.Subject, m.Payload)
		}
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("write outbox (%d messages): %w", len(msgs), err)
	}
	if _, err := tx.Exec(ctx, `SELECT pg_notify($1, '')`, NotifyChannel); err != nil {
		return fmt.Errorf("signal outbox: %w", err)
	}
	return nil
}

// encodeBundle renders msgs as a bundle payload: for each message, its id, subject and payload, each
// preceded by its length as a uvarint.
func encodeBundle(msgs []Message) []byte {
	n := 0
	for _, m := range msgs {
		n += len(m.ID) + len(m.Subject) + len(m.Payload) + 3*binary.MaxVarintLen32 + 36
	}
	b := make([]byte, 0, n)
	for _, m := range msgs {
		for _, f := range [][]byte{[]byte(idOf(m)), []byte(m.Subject), m.Payload} {
			b = binary.AppendUvarint(b, uint64(len(f)))
			b = append(b, f...)
		}
	}
	return b
}

// decodeBundle appends the messages of a bundle payload to msgs. The messages share b's memory.
func decodeBundle(b []byte, msgs []*nats.Msg) ([]*nats.Msg, error) {
	var f [3][]byte
	for len(b) > 0 {
		for i := range f {
			n, k := binary.Uvarint(b)
			if k <= 0 || uint64(len(b)-k) < n {
				return msgs, errors.New("truncated bundle")
			}
			f[i], b = b[k:k+int(n)], b[k+int(n):]
		}
		msgs = append(msgs, newMsg(string(f[0]), string(f[1]), f[2]))
	}
	return msgs, nil
}

func idOf(m Message) string {
	if m.ID != "" {
		return m.ID
	}
	return uuid.NewString()
}

// Relay publishes outbox rows to JetStream. Several relays may run at once: each claims rows with
// FOR UPDATE SKIP LOCKED, publishes them, waits for JetStream's acks, and deletes them in the same
// transaction. A crash after publishing and before the delete republishes with the same Nats-Msg-Id,
// which JetStream drops as a duplicate. Ordered messages (OrderedMessage) go through PublishOrdered, so
// a relay never puts an older version last on a subject another writer has moved on.
type Relay struct {
	pool  *pgxpool.Pool
	js    jetstream.JetStream
	log   zerolog.Logger
	batch int
	poll  time.Duration
}

// RelayConfig tunes a Relay.
type RelayConfig struct {
	// BatchSize is how many rows one claim takes (default 2000).
	BatchSize int
	// PollInterval is the fallback when no notification arrives (default 1s).
	PollInterval time.Duration
}

// NewRelay returns a relay publishing with js.
func NewRelay(pool *pgxpool.Pool, js jetstream.JetStream, log zerolog.Logger, cfg *RelayConfig) *Relay {
	if cfg == nil {
		cfg = &RelayConfig{}
	}
	return &Relay{
		pool:  pool,
		js:    js,
		log:   log,
		batch: cmp.Or(cfg.BatchSize, 2000),
		poll:  cmp.Or(cfg.PollInterval, time.Second),
	}
}

// Run publishes until ctx ends.
func (r *Relay) Run(ctx context.Context) error {
	wake := make(chan struct{}, 1)
	go r.listen(ctx, wake)
	backoff := 100 * time.Millisecond
	for {
		n, err := r.Flush(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			r.log.Warn().Err(err).Msg("outbox relay: publish failed; retrying")
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		if n == r.batch {
			continue // more waiting
		}
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
		case <-time.After(r.poll):
		}
	}
}

// listen forwards PostgreSQL notifications on NotifyChannel to wake.
func (r *Relay) listen(ctx context.Context, wake chan<- struct{}) {
	for ctx.Err() == nil {
		conn, err := r.pool.Acquire(ctx)
		if err != nil {
			time.Sleep(time.Second)
			continue
		}
		if _, err := conn.Exec(ctx, "LISTEN "+NotifyChannel); err == nil {
			for {
				if _, err := conn.Conn().WaitForNotification(ctx); err != nil {
					break
				}
				select {
				case wake <- struct{}{}:
				default:
				}
			}
		}
		conn.Release()
	}
}

// Flush publishes one claim of pending rows (every message of a bundle row) and returns how many rows
// it published.
func (r *Relay) Flush(ctx context.Context) (int, error) {
	tx, err := r.pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("begin outbox claim: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	rows, err := tx.Query(ctx, `SELECT seq, msg_id, subject, payload FROM outbox ORDER BY seq
		LIMIT $1 FOR UPDATE SKIP LOCKED`, r.batch)
	if err != nil {
		return 0, fmt.Errorf("claim outbox rows: %w", err)
	}
	type row struct {
		seq         int64
		id, subject string
		payload     []byte
	}
	claimed, err := pgx.CollectRows(rows, func(cr pgx.CollectableRow) (row, error) {
		var x row
		err := cr.Scan(&x.seq, &x.id, &x.subject, &x.payload)
		return x, err
	})
	if err != nil {
		return 0, fmt.Errorf("read outbox rows: %w", err)
	}
	if len(claimed) == 0 {
		return 0, nil
	}
	msgs := make([]*nats.Msg, 0, len(claimed))
	for _, c := range claimed {
		if c.subject != BundleSubject {
			msgs = append(msgs, newMsg(c.id, c.subject, c.payload))
			continue
		}
		var err error
		if msgs, err = decodeBundle(c.payload, msgs); err != nil {
			// Add never writes such a bundle; keeping it would block the relay forever.
			r.log.Error().Err(err).Int64("seq", c.seq).Msg("outbox relay: dropping the rest of an unreadable bundle")
		}
	}
	plain, ordered := msgs[:0:0], []Ordered(nil)
	for _, m := range msgs {
		if stream, version, subject, ok := parseOrdered(m.Subject); ok {
			m.Subject = subject
			ordered = append(ordered, Ordered{Stream: stream, Version: version, Msg: m})
			continue
		}
		plain = append(plain, m)
	}
	if err := publishAll(ctx, r.js, plain); err != nil {
		return 0, err
	}
	if err := PublishOrdered(ctx, r.js, ordered); err != nil {
		return 0, err
	}
	seqs := make([]int64, len(claimed))
	for i, c := range claimed {
		seqs[i] = c.seq
	}
	if _, err := tx.Exec(ctx, `DELETE FROM outbox WHERE seq = ANY($1)`, seqs); err != nil {
		return 0, fmt.Errorf("delete published outbox rows: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("commit outbox claim: %w", err)
	}
	return len(claimed), nil
}

func newMsg(id, subject string, payload []byte) *nats.Msg {
	return &nats.Msg{Subject: subject, Data: payload, Header: nats.Header{jetstream.MsgIDHeader: []string{id}}}
}

// publishWindow is how many messages publishAll keeps awaiting acknowledgement.
const publishWindow = 1024

// publishAll publishes msgs in order, asynchronously with at most publishWindow awaiting
// acknowledgement, and returns once JetStream acknowledged every one.
func publishAll(ctx context.Context, js jetstream.JetStream, msgs []*nats.Msg) error {
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	futures := make([]jetstream.PubAckFuture, 0, min(len(msgs), publishWindow))
	await := func(f jetstream.PubAckFuture) error {
		select {
		case <-f.Ok():
			return nil
		case err := <-f.Err():
			return fmt.Errorf("publish %s: %w", f.Msg().Subject, err)
		case <-timeout.C:
			return errors.New("publish outbox: no ack within 30s")
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for _, m := range msgs {
		if len(futures) == publishWindow {
			for _, f := range futures {
				if err := await(f); err != nil {
					return err
				}
			}
			futures = futures[:0]
			timeout.Reset(30 * time.Second)
		}
		f, err := js.PublishMsgAsync(m)
		if err != nil {
			return fmt.Errorf("publish %s: %w", m.Subject, err)
		}
		futures = append(futures, f)
	}
	for _, f := range futures {
		if err := await(f); err != nil {
			return err
		}
	}
	return nil
}
