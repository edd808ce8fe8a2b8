// Package outbox implements the transactional outbox: messages written in the same PostgreSQL
// transaction as the state change they announce, and a relay that publishes them to JetStream with
// Nats-Msg-Id set to the message id, so a state change and its message always agree.
package outbox

import (
	"cmp"
	"context"
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

// Add writes msgs in tx. They are published after tx commits, and never if it rolls back.
func Add(ctx context.Context, tx pgx.Tx, msgs ...Message) error {
	if len(msgs) == 0 {
		return nil
	}
	if len(msgs) < 64 {
		b := &pgx.Batch{}
		for _, m := range msgs {
			b.Queue(`INSERT INTO outbox (msg_id, subject, payload) VALUES ($1, $2, $3)`, idOf(m), m.Subject, m.Payload)
		}
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("write outbox: %w", err)
		}
	} else {
		rows := make([][]any, len(msgs))
		for i, m := range msgs {
			rows[i] = []any{idOf(m), m.Subject, m.Payload}
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"outbox"}, []string{"msg_id", "subject", "payload"}, pgx.CopyFromRows(rows)); err != nil {
			return fmt.Errorf("write outbox: %w", err)
		}
	}
	if _, err := tx.Exec(ctx, `SELECT pg_notify($1, '')`, NotifyChannel); err != nil {
		return fmt.Errorf("signal outbox: %w", err)
	}
	return nil
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
// which JetStream drops as a duplicate.
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

// Flush publishes one claim of pending rows and returns how many it published.
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
	futures := make([]jetstream.PubAckFuture, 0, len(claimed))
	for _, c := range claimed {
		msg := &nats.Msg{Subject: c.subject, Data: c.payload, Header: nats.Header{}}
		msg.Header.Set(jetstream.MsgIDHeader, c.id)
		f, err := r.js.PublishMsgAsync(msg)
		if err != nil {
			return 0, fmt.Errorf("publish %s: %w", c.subject, err)
		}
		futures = append(futures, f)
	}
	timeout := time.After(30 * time.Second)
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return 0, fmt.Errorf("publish %s: %w", f.Msg().Subject, err)
		case <-timeout:
			return 0, errors.New("publish outbox: no ack within 30s")
		case <-ctx.Done():
			return 0, ctx.Err()
		}
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
