package healthwatch

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/fleetshift/fleetshift/shared/consume"
	"github.com/fleetshift/fleetshift/shared/logging"
	"github.com/fleetshift/fleetshift/shared/wait"
	"github.com/fleetshift/fleetshift/streams"
)

// deadLetters returns the dead-lettered messages of the REPORTS stream, by the stream sequence of the
// original: reason.
func (b *bundle) deadLetters() map[string]string {
	b.t.Helper()
	st, err := b.ns.JS.Stream(b.ctx, b.subj.DeadLetterStream())
	require.NoError(b.t, err)
	info, err := st.Info(b.ctx)
	require.NoError(b.t, err)
	out := map[string]string{}
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(b.ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		require.NoError(b.t, err)
		require.Equal(b.t, b.subj.DeadLetter(b.subj.ReportsStream()), m.Subject)
		require.Equal(b.t, streams.ConsumerHealthwatch, m.Header.Get(streams.HeaderDLConsumer))
		require.Equal(b.t, b.subj.ReportsStream(), m.Header.Get(streams.HeaderDLStream))
		require.NotEmpty(b.t, m.Header.Get(streams.HeaderDLSubject))
		out[m.Header.Get(streams.HeaderDLSeq)] = m.Header.Get(streams.HeaderDLReason)
	}
	return out
}

// consumerIdle fails unless the healthwatch durable has nothing pending or unacknowledged.
func (b *bundle) consumerIdle() error {
	c, err := b.ns.JS.Consumer(b.ctx, b.subj.ReportsStream(), streams.ConsumerHealthwatch)
	if err != nil {
		return err
	}
	info, err := c.Info(b.ctx)
	if err != nil {
		return err
	}
	if info.NumPending != 0 || info.NumAckPending != 0 {
		return fmt.Errorf("healthwatch consumer: %d pending, %d unacknowledged", info.NumPending, info.NumAckPending)
	}
	return nil
}

// TestPoisonReportsDoNotBlockTheConsumer: reports that can never be stored (a NUL escape in a string,
// invalid UTF-8, not JSON) arrive between good ones; the good ones are applied, the poison ones are
// terminated and recorded in the dead-letter stream with their reason and counted, and nothing stays
// with the consumer, so the next reports are not held back.
func TestPoisonReportsDoNotBlockTheConsumer(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	devs := b.devices("poison", 4, "fleet-p", oldImg)
	id := b.rollout(rolloutSpec{devices: devs, policy: map[string]any{"max_failure_rate": 1.0}})
	var mu sync.Mutex
	counted := map[string]int{}
	s, err := New(Config{Pool: b.pool, JS: b.ns.JS, Subjects: b.subj, Log: logging.Nop(),
		TickInterval: 50 * time.Millisecond, FetchWait: 200 * time.Millisecond,
		DeadLetterCount: func(consumer, reason string) {
			mu.Lock()
			defer mu.Unlock()
			counted[consumer+"/"+reason]++
		}})
	require.NoError(t, err)

	// Published before the service starts, so that one fetch holds them all.
	b.publish(devs[0], web(devs[0], newImg, "running", "healthy"))
	b.publish(devs[1], []byte(`{"`+devs[1]+`":{"apps":{"1":{"services":[{"serviceName":"web","imageName":"x\u0000","status":"running"}]}}}}`))
	b.publish(devs[2], web(devs[2], newImg, "running", "healthy"))
	b.publish(devs[1], []byte("{\""+devs[1]+"\":{\"apps\":{\"1\":{\"services\":[{\"serviceName\":\"\xff\",\"imageName\":\"x\",\"status\":\"running\"}]}}}}"))
	b.publish(devs[1], []byte(`{"`+devs[1]+`":`))
	b.publish(devs[3], web(devs[3], newImg, "running", "healthy"))

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })

	wait.For(t, 20*time.Second, func() error {
		for _, d := range []string{devs[0], devs[2], devs[3]} {
			if st := b.status(id, d); st != statusCompleted {
				return fmt.Errorf("%s is %s", d, st)
			}
		}
		return b.consumerIdle()
	})
	require.Equal(t, statusScheduled, b.status(id, devs[1]))
	require.Equal(t, map[string]string{"2": consume.ReasonInvalid, "4": consume.ReasonInvalid, "5": consume.ReasonDecode}, b.deadLetters())
	mu.Lock()
	require.Equal(t, map[string]int{"healthwatch/invalid": 2, "healthwatch/decode": 1}, counted)
	mu.Unlock()

	// The consumer goes on: a later good report of the poisoned device is applied.
	b.publish(devs[1], web(devs[1], newImg, "running", "healthy"))
	wait.For(t, 20*time.Second, func() error {
		if st := b.status(id, devs[1]); st != statusCompleted {
			return fmt.Errorf("%s is %s", devs[1], st)
		}
		return nil
	})
	b.checkCounters(id)
}

// TestFailingReportIsIsolatedInItsBatch: a report PostgreSQL refuses (a NUL escape, SQLSTATE 22P05;
// the sanitizer is bypassed here to prove the second line of defence) in the middle of a fetched batch
// fails the batch's transaction; the batch is split until the report is alone, every other report of
// the batch is applied and acknowledged, and the refused one is dead-lettered with reason "data".
func TestFailingReportIsIsolatedInItsBatch(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	devs := b.devices("iso", 9, "fleet-i", oldImg)
	id := b.rollout(rolloutSpec{devices: devs, policy: map[string]any{"max_failure_rate": 1.0}})
	s := b.newService()
	cons, err := b.ns.JS.CreateOrUpdateConsumer(b.ctx, b.subj.ReportsStream(),
		streams.ConsumerConfig(streams.ConsumerHealthwatch, b.subj.DeviceStateAll(), 30*time.Second))
	require.NoError(t, err)

	poison := devs[4]
	for _, d := range devs {
		if d == poison {
			b.publish(d, []byte(`{"`+d+`":{"apps":{"1":{"services":[{"serviceName":"web","imageName":"acme/app:2.0\u0000","status":"running"}]}}}}`))
			continue
		}
		b.publish(d, web(d, newImg, "running", "healthy"))
	}
	batch, err := cons.Fetch(len(devs), jetstream.FetchMaxWait(5*time.Second))
	require.NoError(t, err)
	var items []item
	for m := range batch.Messages() {
		device, ok := b.subj.DeviceFromSubject(m.Subject())
		require.True(t, ok)
		rep := decodeReport(t, device, m.Data())
		items = append(items, item{msg: m, rep: rep})
	}
	require.Len(t, items, len(devs))

	s.applyIsolated(b.ctx, items)

	for _, d := range devs {
		want := statusCompleted
		if d == poison {
			want = statusScheduled
		}
		require.Equal(t, want, b.status(id, d), d)
	}
	require.Equal(t, map[string]string{"5": consume.ReasonData}, b.deadLetters())
	require.NoError(t, b.consumerIdle())
	b.checkCounters(id)
}

// TestCrashedConsumerDoesNotFailHealthyDevices: a healthy report was pulled by a consumer that died
// without acknowledging it (it stays with that consumer for the ack wait, 30 s, far beyond the health
// deadline). When the deadline passes the device is not failed by timeout: its waiting report is read
// from the stream and applied, and it completes; a device that never reported times out.
func TestCrashedConsumerDoesNotFailHealthyDevices(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	devs := b.devices("crash", 2, "fleet-c", oldImg)
	id := b.rollout(rolloutSpec{devices: devs, timeout: 2 * time.Second, policy: map[string]any{"max_failure_rate": 1.0}})

	// A replica fetched the report and died (kill -9): no ack, no nak.
	cons, err := b.ns.JS.CreateOrUpdateConsumer(b.ctx, b.subj.ReportsStream(),
		streams.ConsumerConfig(streams.ConsumerHealthwatch, b.subj.DeviceStateAll(), 30*time.Second))
	require.NoError(t, err)
	b.publish(devs[0], web(devs[0], newImg, "running", "healthy"))
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	require.NoError(t, err)
	n := 0
	for range batch.Messages() {
		n++
	}
	require.Equal(t, 1, n)

	b.service()
	wait.For(t, 20*time.Second, func() error {
		if st := b.status(id, devs[1]); st != statusFailed {
			return fmt.Errorf("silent device is %s", st)
		}
		if st := b.status(id, devs[0]); st != statusCompleted && st != statusFailed {
			return fmt.Errorf("reporting device is %s", st)
		}
		return nil
	})
	require.Equal(t, statusCompleted, b.status(id, devs[0]), "a device whose healthy report was waiting was failed")
	c, err := b.ns.JS.Consumer(b.ctx, b.subj.ReportsStream(), streams.ConsumerHealthwatch)
	require.NoError(t, err)
	info, err := c.Info(b.ctx)
	require.NoError(t, err)
	require.Equal(t, 1, info.NumAckPending, "the report is still with the dead consumer")
	b.checkCounters(id)
}

// TestRolloutsApplyInParallel: reports of two rollouts fetched together are applied in separate
// transactions: while one rollout's row is locked (a long transaction elsewhere), the other rollout's
// device still moves; the first follows once the lock is released.
func TestRolloutsApplyInParallel(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	devA := b.devices("para-a", 1, "fleet-pa", oldImg)
	devB := b.devices("para-b", 1, "fleet-pb", oldImg)
	idA := b.rollout(rolloutSpec{devices: devA, sizes: []int{1}, policy: map[string]any{"max_failure_rate": 1.0}})
	idB := b.rollout(rolloutSpec{devices: devB, sizes: []int{1}, policy: map[string]any{"max_failure_rate": 1.0}})

	blocker, err := b.pool.Begin(b.ctx)
	require.NoError(t, err)
	defer blocker.Rollback(b.ctx)
	_, err = blocker.Exec(b.ctx, `SELECT 1 FROM image_rollouts WHERE rollout_id = $1 FOR UPDATE`, idA)
	require.NoError(t, err)

	b.publish(devA[0], web(devA[0], newImg, "running", "healthy"))
	b.publish(devB[0], web(devB[0], newImg, "running", "healthy"))
	b.service()
	wait.For(t, 20*time.Second, func() error {
		if st := b.status(idB, devB[0]); st != statusCompleted {
			return fmt.Errorf("rollout B's device is %s", st)
		}
		return nil
	})
	require.Equal(t, statusScheduled, b.status(idA, devA[0]), "rollout A is locked elsewhere")
	require.NoError(t, blocker.Commit(b.ctx))
	wait.For(t, 20*time.Second, func() error {
		if st := b.status(idA, devA[0]); st != statusCompleted {
			return fmt.Errorf("rollout A's device is %s", st)
		}
		return nil
	})
}
