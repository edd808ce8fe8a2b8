package healthwatch

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/fleetshift/fleetshift/shared/target"
	"github.com/fleetshift/fleetshift/streams"
)

// TestDownloadedReportsAreRecordedOnce: reports saying the rollout's new image was downloaded ahead set
// downloaded_at on those devices' rows, move downloaded_devices and record one image.device_downloaded
// naming them; a redelivery, a later report saying it again, or a report naming another image changes
// nothing; statuses are not moved by a download.
func TestDownloadedReportsAreRecordedOnce(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	devs := b.devices("dl", 4, "fleet-dl", oldImg)
	id := b.rollout(rolloutSpec{devices: devs, sizes: []int{2, 2}})
	s := b.newService()
	downloaded := func(device, image string) report {
		r := decodeReport(t, device, web(device, oldImg, "running", ""))
		r.body.Downloaded = []string{image}
		return r
	}
	batch := []report{downloaded(devs[0], newImg), downloaded(devs[2], newImg), downloaded(devs[3], newImg),
		downloaded(devs[1], "acme/app:9.9")}
	require.NoError(t, s.applyReports(b.ctx, batch))
	at := func() map[string]*time.Time {
		rows, err := b.pool.Query(b.ctx, `SELECT device_uuid, downloaded_at FROM device_rollout_status WHERE rollout_id = $1`, id)
		require.NoError(t, err)
		defer rows.Close()
		out := map[string]*time.Time{}
		for rows.Next() {
			var u string
			var ts *time.Time
			require.NoError(t, rows.Scan(&u, &ts))
			out[u] = ts
		}
		return out
	}
	first := at()
	for i, d := range devs {
		if (first[d] != nil) != (i != 1) {
			t.Fatalf("downloaded_at of %s: %v", d, first[d])
		}
	}
	var counter int
	require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT downloaded_devices FROM image_rollouts WHERE rollout_id = $1`, id).Scan(&counter))
	require.Equal(t, 3, counter)
	require.Equal(t, statusScheduled, b.status(id, devs[0]), "a download moved the device's status")
	require.Equal(t, statusPending, b.status(id, devs[2]), "a download moved the device's status")
	events := func() []streams.DevicesDownloadedV1 {
		rows, err := b.pool.Query(b.ctx, `SELECT data FROM rollout_events WHERE rollout_id = $1 AND event_type = $2 ORDER BY id`,
			id, streams.EventDevicesDownloaded)
		require.NoError(t, err)
		defer rows.Close()
		var out []streams.DevicesDownloadedV1
		for rows.Next() {
			var raw []byte
			require.NoError(t, rows.Scan(&raw))
			var d streams.DevicesDownloadedV1
			require.NoError(t, json.Unmarshal(raw, &d))
			out = append(out, d)
		}
		return out
	}
	want := streams.DevicesDownloadedV1{NewImage: newImg, Chunk: 1, Chunks: 1, Count: 3, Devices: []string{devs[0], devs[2], devs[3]}}
	require.Equal(t, []streams.DevicesDownloadedV1{want}, events())

	// Redelivered, and said again by a later report: nothing changes.
	require.NoError(t, s.applyReports(b.ctx, batch))
	require.NoError(t, s.applyReports(b.ctx, []report{downloaded(devs[0], newImg)}))
	require.Equal(t, first, at())
	require.Len(t, events(), 1)
	b.checkCounters(id)
}

// TestDownloadErrorsAreKeptUntilTheDownload: a report's downloadErrors for the rollout's new image is
// stored on the device's row (bounded), written again only when it changes (a device repeating it
// every heartbeat writes nothing), replaced by the download when it comes, and ignored afterwards; an
// error never counts as a download.
func TestDownloadErrorsAreKeptUntilTheDownload(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	devs := b.devices("dle", 2, "fleet-dle", oldImg)
	id := b.rollout(rolloutSpec{devices: devs, sizes: []int{1, 1}})
	s := b.newService()
	rep := func(downloaded bool, errs map[string]string) report {
		r := decodeReport(t, devs[0], web(devs[0], oldImg, "running", ""))
		if downloaded {
			r.body.Downloaded = []string{newImg}
		}
		r.body.DownloadErrors = errs
		return r
	}
	type row struct {
		why  *string
		at   *time.Time
		xmin string
	}
	read := func() row {
		var r row
		require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT download_error, downloaded_at, xmin::text FROM device_rollout_status
			WHERE rollout_id = $1 AND device_uuid = $2`, id, devs[0]).Scan(&r.why, &r.at, &r.xmin))
		return r
	}
	counter := func() (n int) {
		require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT downloaded_devices FROM image_rollouts WHERE rollout_id = $1`, id).Scan(&n))
		return n
	}

	require.NoError(t, s.applyReports(b.ctx, []report{rep(false, map[string]string{newImg: "pull access denied", "acme/other:1": "x"})}))
	first := read()
	require.NotNil(t, first.why)
	require.Equal(t, "pull access denied", *first.why)
	require.Nil(t, first.at)
	require.Zero(t, counter(), "an error counted as a download")

	require.NoError(t, s.applyReports(b.ctx, []report{rep(false, map[string]string{newImg: "pull access denied"})}))
	require.Equal(t, first.xmin, read().xmin, "the same error was written again")

	long := strings.Repeat("é", 600)
	require.NoError(t, s.applyReports(b.ctx, []report{rep(false, map[string]string{newImg: long})}))
	second := read()
	require.NotNil(t, second.why)
	require.LessOrEqual(t, len(*second.why), maxDownloadError)
	require.True(t, utf8.ValidString(*second.why) && strings.HasPrefix(long, *second.why), "bounded error %q", *second.why)

	require.NoError(t, s.applyReports(b.ctx, []report{rep(true, nil)}))
	done := read()
	require.Nil(t, done.why, "the download left the error")
	require.NotNil(t, done.at)
	require.Equal(t, 1, counter())

	require.NoError(t, s.applyReports(b.ctx, []report{rep(false, map[string]string{newImg: "disk full"})}))
	require.Equal(t, done.xmin, read().xmin, "an error after the download was written")
	b.checkCounters(id)
}

// prefetchRollout is a download-ahead rollout over n new devices named by prefix: batch 1 (the first
// device) dispatched, the others pending with the rollout's prefetch entry in their targets.
func (b *bundle) prefetchRollout(prefix string, n int) (devs []string, id string) {
	b.t.Helper()
	devs = b.devices(prefix, n, "fleet-"+prefix, oldImg)
	id = b.rollout(rolloutSpec{devices: devs, sizes: []int{1, n - 1}, policy: map[string]any{"download_ahead": true}})
	b.tx(func(tx pgx.Tx) {
		_, err := target.SetPrefetch(b.ctx, tx, b.subj, id, newImg, devs[1:])
		require.NoError(b.t, err)
	})
	return devs, id
}

// TestRollbackClearsPendingPrefetch: rolling back a device never dispatched, then the whole rollout,
// removes the prefetch entries the rollout had given its pending devices (new target versions), so they
// stop pulling an image that will not come.
func TestRollbackClearsPendingPrefetch(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	devs, id := b.prefetchRollout("rbpf", 4)
	prefetched := func(u string) (bool, int64) {
		var has bool
		var v int64
		require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT prefetch <> '[]'::jsonb, version FROM device_target_state WHERE device_uuid = $1`, u).
			Scan(&has, &v))
		return has, v
	}
	_, v2 := prefetched(devs[2])
	require.NoError(t, RollbackDevice(b.ctx, b.pool, b.subj, id, devs[1], "test"))
	if has, _ := prefetched(devs[1]); has {
		t.Fatal("the rolled-back pending device keeps its prefetch entry")
	}
	if has, v := prefetched(devs[2]); !has || v != v2 {
		t.Fatal("rolling back one device touched another's target")
	}
	require.NoError(t, RollbackAll(b.ctx, b.pool, b.subj, id, "test"))
	for _, u := range devs[2:] {
		if has, v := prefetched(u); has || v != v2+1 {
			t.Fatalf("%s after rollback-all: prefetch %v version %d (want none, version %d)", u, has, v, v2+1)
		}
	}
}

// TestRollbackAllRunsAgainAfterADeadlock: rollback-all locks the moved devices' targets, then the
// pending devices' targets (their prefetch entries). A writer holding a pending device's target and
// then wanting a moved one deadlocks with it; PostgreSQL rolls rollback-all back (its deadlock check
// runs first), and rollback-all runs again once the writer is done: the rollout ends rolled back, with
// nothing left behind.
func TestRollbackAllRunsAgainAfterADeadlock(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	devs, id := b.prefetchRollout("dead", 3)
	other, err := b.pool.Begin(b.ctx)
	require.NoError(t, err)
	defer other.Rollback(b.ctx)
	_, err = other.Exec(b.ctx, `SET LOCAL deadlock_timeout = '60s'`) // so PostgreSQL picks rollback-all
	require.NoError(t, err)
	_, err = other.Exec(b.ctx, `SELECT 1 FROM device_target_state WHERE device_uuid = $1 FOR UPDATE`, devs[1])
	require.NoError(t, err)

	done := make(chan error, 1)
	go func() { done <- RollbackAll(b.ctx, b.pool, b.subj, id, "test") }()
	require.Eventually(t, func() bool {
		var waiting int
		require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&waiting))
		return waiting == 1
	}, 10*time.Second, 10*time.Millisecond, "rollback-all never waited for the pending device's target")
	// Now the other writer wants the moved device's target, which rollback-all holds: a deadlock.
	_, err = other.Exec(b.ctx, `SELECT 1 FROM device_target_state WHERE device_uuid = $1 FOR UPDATE`, devs[0])
	require.NoError(t, err, "PostgreSQL rolled back the other writer, not rollback-all")
	require.NoError(t, other.Commit(b.ctx))
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("rollback-all did not finish")
	}
	var status string
	var left int
	require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT status, (SELECT count(*) FROM device_target_state WHERE prefetch <> '[]'::jsonb)
		FROM image_rollouts WHERE rollout_id = $1`, id).Scan(&status, &left))
	require.Equal(t, "rolled_back", status)
	require.Zero(t, left, "prefetch entries left after rollback-all")
	b.checkCounters(id)
}
