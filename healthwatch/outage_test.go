package healthwatch

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/fleetshift/fleetshift/shared/consume"
	"github.com/fleetshift/fleetshift/shared/logging"
	"github.com/fleetshift/fleetshift/shared/pgtest"
	"github.com/fleetshift/fleetshift/shared/wait"
	"github.com/fleetshift/fleetshift/streams"
)

// TestDatabaseOutageHoldsReports: while the database refuses connections, a fetched report is held (in
// progress, the database pinged with backoff) instead of being nak'd and redelivered; once the database
// is back the report is applied on its first delivery.
func TestDatabaseOutageHoldsReports(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	devs := b.devices("outage", 1, "fleet-o", oldImg)
	id := b.rollout(rolloutSpec{devices: devs, policy: map[string]any{"max_failure_rate": 1.0}})
	s := b.newService()
	var pings atomic.Int32
	settler, err := consume.New(consume.Config{JS: b.ns.JS, Subjects: b.subj, Consumer: streams.ConsumerHealthwatch,
		Log: logging.Nop(), Ping: func(ctx context.Context) error {
			pings.Add(1)
			return b.pool.Ping(ctx)
		}})
	require.NoError(t, err)
	s.settler = settler
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })
	cons := func() (ackPending int, redelivered int) {
		c, err := b.ns.JS.Consumer(b.ctx, b.subj.ReportsStream(), streams.ConsumerHealthwatch)
		require.NoError(t, err)
		info, err := c.Info(b.ctx)
		require.NoError(t, err)
		return info.NumAckPending, info.NumRedelivered
	}
	wait.For(t, 10*time.Second, func() error {
		_, err := b.ns.JS.Consumer(b.ctx, b.subj.ReportsStream(), streams.ConsumerHealthwatch)
		return err
	})

	admin, err := pgx.Connect(b.ctx, pgtest.ServerURL())
	require.NoError(t, err)
	t.Cleanup(func() { admin.Close(context.Background()) })
	dbName := b.pool.Config().ConnConfig.Database
	setAllow := func(allow bool) {
		_, err := admin.Exec(b.ctx, fmt.Sprintf(`ALTER DATABASE %s ALLOW_CONNECTIONS %t`, pgx.Identifier{dbName}.Sanitize(), allow))
		require.NoError(t, err)
	}
	setAllow(false)
	t.Cleanup(func() { setAllow(true) })
	_, err = admin.Exec(b.ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1`, dbName)
	require.NoError(t, err)

	b.publish(devs[0], web(devs[0], newImg, "running", "healthy"))
	// Held through several failed pings: longer than a nak's 1 s redelivery delay would have been.
	wait.For(t, 30*time.Second, func() error {
		if n := pings.Load(); n < 5 {
			return fmt.Errorf("%d pings so far", n)
		}
		return nil
	})
	ackPending, redelivered := cons()
	require.Equal(t, 1, ackPending, "the report is held")
	require.Zero(t, redelivered, "the outage spent a delivery")

	setAllow(true)
	wait.For(t, 30*time.Second, func() error {
		if st := b.status(id, devs[0]); st != statusCompleted {
			return fmt.Errorf("device is %s", st)
		}
		if ackPending, _ := cons(); ackPending != 0 {
			return fmt.Errorf("%d unacknowledged", ackPending)
		}
		return nil
	})
	_, redelivered = cons()
	require.Zero(t, redelivered)
}
