package outbox_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleetshift/fleetshift/shared/logging"
	"github.com/fleetshift/fleetshift/shared/natstest"
	"github.com/fleetshift/fleetshift/shared/outbox"
	"github.com/fleetshift/fleetshift/shared/pgtest"
	"github.com/fleetshift/fleetshift/shared/wait"
)

func TestRelayPublishesCommittedMessagesOnce(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ns := natstest.New(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	subject := ns.Subjects.Event("image.rollout_created", "r1")
	tx, _ := db.Pool.Begin(ctx)
	if err := outbox.Add(ctx, tx, outbox.Message{ID: "m1", Subject: subject, Payload: []byte(`{"a":1}`)}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	rolled, _ := db.Pool.Begin(ctx)
	if err := outbox.Add(ctx, rolled, outbox.Message{ID: "m2", Subject: subject, Payload: []byte(`{"a":2}`)}); err != nil {
		t.Fatal(err)
	}
	_ = rolled.Rollback(ctx)

	relay := outbox.NewRelay(db.Pool, ns.JS, logging.Nop(), &outbox.RelayConfig{PollInterval: 50 * time.Millisecond})
	go relay.Run(ctx)
	// A second relay at once must not double-publish.
	go outbox.NewRelay(db.Pool, ns.JS, logging.Nop(), nil).Run(ctx)

	stream, err := ns.JS.Stream(ctx, ns.Subjects.EventsStream())
	if err != nil {
		t.Fatal(err)
	}
	wait.For(t, 10*time.Second, func() error {
		var n int
		if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&n); err != nil || n != 0 {
			return fmt.Errorf("outbox rows %d %v", n, err)
		}
		return nil
	})
	// Republishing the same id (a crash between publish and delete) is dropped by JetStream.
	tx, _ = db.Pool.Begin(ctx)
	_ = outbox.Add(ctx, tx, outbox.Message{ID: "m1", Subject: subject, Payload: []byte(`{"a":1}`)})
	_ = tx.Commit(ctx)
	wait.For(t, 10*time.Second, func() error {
		var n int
		_ = db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&n)
		if n != 0 {
			return fmt.Errorf("outbox rows %d", n)
		}
		return nil
	})
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("stream holds %d messages, want exactly 1 (rolled-back never, duplicate once)", info.State.Msgs)
	}
	msg, err := stream.GetLastMsgForSubject(ctx, subject)
	if err != nil || string(msg.Data) != `{"a":1}` || msg.Header.Get(jetstream.MsgIDHeader) != "m1" {
		t.Fatalf("message %v %v", msg, err)
	}
}

// Many messages in one transaction are written as a bundle row; the relay publishes each of them, in
// order, with its own Nats-Msg-Id.
func TestRelayPublishesEveryMessageOfABundle(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ns := natstest.New(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	const n = 3 * outbox.BundleMin
	msgs := make([]outbox.Message, n)
	for i := range msgs {
		msgs[i] = outbox.Message{ID: fmt.Sprintf("b%d", i), Subject: ns.Subjects.Event("image.device_scheduled", fmt.Sprintf("r%d", i)),
			Payload: []byte(fmt.Sprintf(`{"i": %d}`, i))}
	}
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := outbox.Add(ctx, tx, msgs...); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	var rows int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&rows); err != nil || rows != 1 {
		t.Fatalf("%d outbox rows for %d messages (%v), want one bundle", rows, n, err)
	}
	go outbox.NewRelay(db.Pool, ns.JS, logging.Nop(), &outbox.RelayConfig{PollInterval: 50 * time.Millisecond}).Run(ctx)
	stream, err := ns.JS.Stream(ctx, ns.Subjects.EventsStream())
	if err != nil {
		t.Fatal(err)
	}
	wait.For(t, 10*time.Second, func() error {
		info, err := stream.Info(ctx)
		if err != nil || info.State.Msgs != n {
			return fmt.Errorf("stream holds %v messages (%v), want %d", info.State.Msgs, err, n)
		}
		return nil
	})
	for i, m := range msgs {
		got, err := stream.GetMsg(ctx, uint64(i+1))
		if err != nil {
			t.Fatal(err)
		}
		if got.Subject != m.Subject || string(got.Data) != string(m.Payload) || got.Header.Get(jetstream.MsgIDHeader) != m.ID {
			t.Fatalf("message %d: %s %s %v, want %s %s %s", i, got.Subject, got.Data, got.Header, m.Subject, m.Payload, m.ID)
		}
	}
	wait.For(t, 10*time.Second, func() error {
		var n int
		if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&n); err != nil || n != 0 {
			return fmt.Errorf("outbox rows %d %v", n, err)
		}
		return nil
	})
}
