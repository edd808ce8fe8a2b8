package consume

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/natstest"
	"github.com/fleetshift/fleetshift/shared/wait"
	"github.com/fleetshift/fleetshift/streams"
)

func TestCheckJSON(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		raw string
		ok  bool
	}{
		{`{"imageName":"x"}`, true},
		{`{"imageName":"x\u0000"}`, false},
		{`{"imageName":"x\\u0000"}`, true}, // an escaped backslash, then plain text
		{`{"a":"\u00e9\ud83d\ude00"}`, true},
		{`{"a":"\ud83d"}`, false},
		{`{"a":"\ude00"}`, false},
		{`{"\u0000":1}`, false},
		{"{\"a\":\"\xff\"}", false},
		{`{"a":"\"\u0000"}`, false},
	} {
		err := CheckJSON("report", []byte(tc.raw))
		if tc.ok {
			require.NoError(t, err, tc.raw)
			continue
		}
		require.Error(t, err, tc.raw)
		reason, permanent := Classify(err)
		require.True(t, permanent, tc.raw)
		require.Equal(t, ReasonInvalid, reason)
	}
}

func TestClassify(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err         error
		permanent   bool
		reason      string
		unavailable bool
	}{
		{fmt.Errorf("store: %w", &pgconn.PgError{Code: "22P05"}), true, ReasonData, false},
		{fmt.Errorf("store: %w", &pgconn.PgError{Code: "22003"}), true, ReasonData, false},
		{fmt.Errorf("store: %w", &pgconn.PgError{Code: "22021"}), true, ReasonData, false},
		{fmt.Errorf("store: %w", &pgconn.PgError{Code: "23505"}), true, ReasonData, false},
		{fmt.Errorf("plan: %w", apierr.Invalid("tag", "bad")), true, ReasonInvalid, false},
		{Permanent(ReasonDecode, errors.New("x")), true, ReasonDecode, false},
		{fmt.Errorf("apply: %w", &pgconn.PgError{Code: "40001"}), false, "", false},
		{fmt.Errorf("apply: %w", &pgconn.PgError{Code: "40P01"}), false, "", false},
		{fmt.Errorf("apply: %w", &pgconn.PgError{Code: "57P01"}), false, "", true},
		{fmt.Errorf("apply: %w", &pgconn.ConnectError{}), false, "", true},
	} {
		reason, permanent := Classify(tc.err)
		require.Equal(t, tc.permanent, permanent, "%v", tc.err)
		require.Equal(t, tc.reason, reason, "%v", tc.err)
		require.Equal(t, tc.unavailable, Unavailable(tc.err), "%v", tc.err)
	}
}

type counts struct {
	mu sync.Mutex
	m  map[string]int
}

func (c *counts) add(consumer, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[consumer+"/"+reason]++
}

func (c *counts) get(k string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[k]
}

// TestDeadLetter: a permanent failure is terminated at once and recorded with its reason and origin; a
// passing failure is redelivered, and dead-lettered on delivery MaxDeliver.
func TestDeadLetter(t *testing.T) {
	t.Parallel()
	ns := natstest.New(t)
	ctx := context.Background()
	subj := ns.Subjects
	cons, err := ns.JS.CreateOrUpdateConsumer(ctx, subj.PushesStream(),
		streams.ConsumerConfig("test", subj.Push(), 30*time.Second))
	require.NoError(t, err)
	c := &counts{m: map[string]int{}}
	s, err := New(Config{JS: ns.JS, Subjects: subj, Consumer: "test", Log: zerolog.Nop(), Count: c.add,
		MaxDeliver: 2, MaxDelay: 10 * time.Millisecond})
	require.NoError(t, err)

	_, err = ns.JS.Publish(ctx, subj.Push(), []byte("poison"))
	require.NoError(t, err)
	_, err = ns.JS.Publish(ctx, subj.Push(), []byte("flaky"))
	require.NoError(t, err)

	next := func() jetstream.Msg {
		t.Helper()
		var got jetstream.Msg
		wait.For(t, 10*time.Second, func() error {
			b, err := cons.Fetch(1, jetstream.FetchMaxWait(100*time.Millisecond))
			if err != nil {
				return err
			}
			for m := range b.Messages() {
				got = m
			}
			if got == nil {
				return errors.New("no message")
			}
			return nil
		})
		return got
	}
	m := next()
	require.Equal(t, "poison", string(m.Data()))
	require.Equal(t, DeadLettered, s.Fail(ctx, m, fmt.Errorf("store: %w", &pgconn.PgError{Code: "22P05"})))

	m = next()
	require.Equal(t, "flaky", string(m.Data()))
	require.Equal(t, Retried, s.Fail(ctx, m, errors.New("deadlock")))
	m = next()
	require.Equal(t, "flaky", string(m.Data()))
	require.Equal(t, DeadLettered, s.Fail(ctx, m, errors.New("deadlock")))

	dl, err := ns.JS.Stream(ctx, subj.DeadLetterStream())
	require.NoError(t, err)
	first, err := dl.GetMsg(ctx, 1)
	require.NoError(t, err)
	require.Equal(t, subj.DeadLetter(subj.PushesStream()), first.Subject)
	require.Equal(t, "poison", string(first.Data))
	require.Equal(t, subj.Push(), first.Header.Get(streams.HeaderDLSubject))
	require.Equal(t, subj.PushesStream(), first.Header.Get(streams.HeaderDLStream))
	require.Equal(t, "1", first.Header.Get(streams.HeaderDLSeq))
	require.Equal(t, "test", first.Header.Get(streams.HeaderDLConsumer))
	require.Equal(t, ReasonData, first.Header.Get(streams.HeaderDLReason))
	require.Contains(t, first.Header.Get(streams.HeaderDLError), "22P05")
	second, err := dl.GetMsg(ctx, 2)
	require.NoError(t, err)
	require.Equal(t, "flaky", string(second.Data))
	require.Equal(t, ReasonMaxDeliver, second.Header.Get(streams.HeaderDLReason))
	require.Equal(t, "2", second.Header.Get(streams.HeaderDLDelivery))
	require.Equal(t, 1, c.get("test/data"))
	require.Equal(t, 1, c.get("test/max_deliver"))

	// Nothing is left for the consumer: both were terminated.
	wait.For(t, 5*time.Second, func() error {
		info, err := cons.Info(ctx)
		if err != nil {
			return err
		}
		if info.NumAckPending != 0 || info.NumPending != 0 {
			return fmt.Errorf("%d unacknowledged, %d pending", info.NumAckPending, info.NumPending)
		}
		return nil
	})
}

// TestHandleHoldsWhileDatabaseIsAway: while the handler fails because the database cannot be reached,
// the message is held (in progress) and the database pinged until it answers; then the handler runs again
// and the message is acknowledged on its first delivery: the outage spent none of its deliveries.
func TestHandleHoldsWhileDatabaseIsAway(t *testing.T) {
	t.Parallel()
	ns := natstest.New(t)
	ctx := context.Background()
	subj := ns.Subjects
	cons, err := ns.JS.CreateOrUpdateConsumer(ctx, subj.PushesStream(),
		streams.ConsumerConfig("hold", subj.Push(), 30*time.Second))
	require.NoError(t, err)
	var pings int
	s, err := New(Config{JS: ns.JS, Subjects: subj, Consumer: "hold", Log: zerolog.Nop(),
		Ping: func(context.Context) error {
			pings++
			if pings < 3 {
				return &pgconn.ConnectError{}
			}
			return nil
		}})
	require.NoError(t, err)
	_, err = ns.JS.Publish(ctx, subj.Push(), []byte("work"))
	require.NoError(t, err)
	b, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	require.NoError(t, err)
	var m jetstream.Msg
	for x := range b.Messages() {
		m = x
	}
	require.NotNil(t, m)
	calls := 0
	err = s.Handle(ctx, m, func(context.Context) error {
		calls++
		if calls == 1 {
			return fmt.Errorf("apply: %w", &pgconn.ConnectError{})
		}
		return nil
	}, nil)
	require.NoError(t, err)
	require.Equal(t, 2, calls)
	require.Equal(t, 3, pings)
	md, err := m.Metadata()
	require.NoError(t, err)
	require.Equal(t, uint64(1), md.NumDelivered)
	wait.For(t, 5*time.Second, func() error {
		info, err := cons.Info(ctx)
		if err != nil {
			return err
		}
		if info.NumAckPending != 0 || info.NumRedelivered != 0 {
			return fmt.Errorf("%d unacknowledged, %d redelivered", info.NumAckPending, info.NumRedelivered)
		}
		return nil
	})
}

// TestAdmitDeadLettersACrashLoop: a message whose handler keeps dying before settling it (redelivered
// only by the ack wait) is dead-lettered, reason max_deliver, once it arrives past MaxDeliver
// deliveries; JetStream never drops it on its own.
func TestAdmitDeadLettersACrashLoop(t *testing.T) {
	t.Parallel()
	ns := natstest.New(t)
	ctx := context.Background()
	subj := ns.Subjects
	cfg := streams.ConsumerConfig("loop", subj.Push(), 200*time.Millisecond)
	require.Equal(t, -1, cfg.MaxDeliver, "JetStream must not drop messages unrecorded")
	cons, err := ns.JS.CreateOrUpdateConsumer(ctx, subj.PushesStream(), cfg)
	require.NoError(t, err)
	s, err := New(Config{JS: ns.JS, Subjects: subj, Consumer: "loop", Log: zerolog.Nop(), MaxDeliver: 2})
	require.NoError(t, err)
	_, err = ns.JS.Publish(ctx, subj.Push(), []byte("kills its handler"))
	require.NoError(t, err)
	admitted := 0
	wait.For(t, 20*time.Second, func() error {
		b, err := cons.Fetch(1, jetstream.FetchMaxWait(100*time.Millisecond))
		if err != nil {
			return err
		}
		for m := range b.Messages() {
			if s.Admit(ctx, m) {
				admitted++ // ... and the handler dies: no ack, no nak
				continue
			}
			return nil
		}
		return errors.New("not dead-lettered yet")
	})
	require.Equal(t, 2, admitted)
	dl, err := ns.JS.Stream(ctx, subj.DeadLetterStream())
	require.NoError(t, err)
	m, err := dl.GetMsg(ctx, 1)
	require.NoError(t, err)
	require.Equal(t, ReasonMaxDeliver, m.Header.Get(streams.HeaderDLReason))
	require.Equal(t, "3", m.Header.Get(streams.HeaderDLDelivery))
}
