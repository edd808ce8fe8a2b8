package healthwatch

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestLastSeenIsRefreshedOnlyWhenStale: a report marks an offline device online and stamps last_seen_at;
// reports within 30 s leave the devices row alone; a report after that refreshes it.
func TestLastSeenIsRefreshedOnlyWhenStale(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	dev := b.devices("seen", 1, "fleet-seen", oldImg)[0]
	s := b.newService()
	at := func(d time.Duration) report {
		r := decodeReport(t, dev, web(dev, oldImg, "running", ""))
		r.at = time.Now().Add(d).UTC().Truncate(time.Microsecond)
		return r
	}
	lastSeen := func() (time.Time, bool) {
		var ts *time.Time
		var online bool
		require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT last_seen_at, is_online FROM devices WHERE uuid = $1`, dev).Scan(&ts, &online))
		if ts == nil {
			return time.Time{}, online
		}
		return ts.UTC(), online
	}
	first := at(-time.Minute)
	require.NoError(t, s.applyReports(b.ctx, []report{first}))
	seen, online := lastSeen()
	require.True(t, online)
	require.True(t, seen.Equal(first.at), "first report stamps last_seen_at: %v vs %v", seen, first.at)

	require.NoError(t, s.applyReports(b.ctx, []report{at(-50 * time.Second)}))
	seen, _ = lastSeen()
	require.True(t, seen.Equal(first.at), "a report within 30 s leaves the row alone")

	later := at(0)
	require.NoError(t, s.applyReports(b.ctx, []report{later}))
	seen, _ = lastSeen()
	require.True(t, seen.Equal(later.at), "a report after 30 s refreshes last_seen_at")

	// An offline device comes online with its next report, however recent its last_seen_at.
	b.exec(`UPDATE devices SET is_online = false WHERE uuid = $1`, dev)
	require.NoError(t, s.applyReports(b.ctx, []report{at(time.Second)}))
	_, online = lastSeen()
	require.True(t, online)
}
