package healthwatch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleetshift/fleetshift/shared/events"
	"github.com/fleetshift/fleetshift/shared/lifecycle"
	"github.com/fleetshift/fleetshift/streams"
)

// Presence. A device is online from its first sign of life (a report, a heartbeat = an unchanged
// report, a NATS connect advisory) until it misses OfflineAfterMissed heartbeats or its NATS
// connection closes (disconnect advisory). devices.is_online and devices.offline_since hold it; every
// change is a device.online / device.offline event on <prefix>.events.device.<online|offline>.<uuid>.
//
// In a rollout an offline device's health deadline is suspended (failTimedOut skips it; the time spent
// offline is added to the deadline when it returns); after the policy's offline_grace_seconds it is
// skipped or failed (offline_action). When it returns its newest target is sent again.

// back is a device that came online, with when it had gone offline (nil: never seen before).
type back struct {
	uuid  string
	since *time.Time
}

// cameOnline records the online events of devices that came back and resumes their suspended health
// deadlines: each in-flight row's deadline moves by the time the device spent offline after it was
// scheduled. Called in the transaction that marked them online.
func cameOnline(ctx context.Context, w *work, devs []back) error {
	if len(devs) == 0 {
		return nil
	}
	uuids := make([]string, 0, len(devs))
	sinces := make([]*time.Time, 0, len(devs))
	for _, d := range devs {
		uuids = append(uuids, d.uuid)
		sinces = append(sinces, d.since)
		data := map[string]any{}
		if d.since != nil {
			data["offline_since"] = d.since.UTC()
		}
		w.event(events.Event{Type: streams.EventDeviceOnline, DeviceUUID: d.uuid, Message: "device online", Data: data})
	}
	if _, err := w.tx.Exec(ctx, `
		UPDATE device_rollout_status d
		SET health_deadline = d.health_deadline + (now() - GREATEST(b.since, d.scheduled_at)), updated_at = now()
		FROM unnest($1::text[], $2::timestamptz[]) AS b(uuid, since)
		WHERE d.device_uuid = b.uuid AND b.since IS NOT NULL AND d.health_deadline IS NOT NULL
		  AND d.scheduled_at IS NOT NULL AND d.status IN (`+lifecycle.SQL(lifecycle.InFlight...)+`)`, uuids, sinces); err != nil {
		return fmt.Errorf("resume health deadlines: %w", err)
	}
	return nil
}

// renotify sends each device that came back its newest target again: the last message on its target
// subject, re-published with its own message id and the expected last subject sequence, so devices
// (which ignore a version they hold) see it and a newer target written meanwhile is never overtaken.
// Best effort: a device reconnecting reads the same message with a direct get anyway.
func (s *Service) renotify(ctx context.Context, devs []back) {
	st := s.targets
	if len(devs) == 0 || st == nil {
		return
	}
	for _, d := range devs {
		subject := s.subj.DeviceTarget(d.uuid)
		last, err := st.GetLastMsgForSubject(ctx, subject)
		if err != nil {
			continue // no target yet, or the stream is away: the device polls or direct-gets it
		}
		msg := nats.NewMsg(subject)
		msg.Data = last.Data
		for k, v := range last.Header {
			// Not the server's own headers of the stored copy (Nats-Sequence, Nats-Stream, Nats-Subject,
			// Nats-Time-Stamp, an old expectation): stored again, a stale Nats-Sequence would be read
			// first by every later ordered publish, which would then expect the wrong sequence forever.
			if strings.HasPrefix(k, "Nats-") {
				continue
			}
			msg.Header[k] = v
		}
		msg.Header.Set(jetstream.MsgIDHeader, msg.Header.Get(jetstream.MsgIDHeader)+"-online-"+strconv.FormatInt(time.Now().UnixNano(), 10))
		msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(last.Sequence, 10))
		if _, err := s.js.PublishMsg(ctx, msg); err != nil {
			s.log.Debug().Err(err).Str("device", d.uuid).Msg("re-notify: newer target already sent")
		}
	}
}

// offlineBatch bounds how many devices one tick marks offline.
const offlineBatch = 1000

// markMissed marks offline the online devices not seen for offlineAfter (missed heartbeats). A device
// whose last report is waiting on the REPORTS stream (a consumer lagging or a replica that died) is
// not marked: that report will be applied.
func (s *Service) markMissed(ctx context.Context) (int, error) {
	rows, err := s.pool.Query(ctx, `SELECT uuid FROM devices
		WHERE is_online AND revoked_at IS NULL AND last_seen_at < now() - make_interval(secs => $1)
		ORDER BY last_seen_at LIMIT $2`, s.offlineAfter.Seconds(), offlineBatch)
	if err != nil {
		return 0, fmt.Errorf("mark offline devices: %w", err)
	}
	cands, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return 0, fmt.Errorf("mark offline devices: %w", err)
	}
	if len(cands) == 0 {
		return 0, nil
	}
	gone := cands[:0]
	for _, u := range cands {
		if s.reports != nil {
			last, err := s.reports.GetLastMsgForSubject(ctx, s.subj.DeviceState(u))
			switch {
			case errors.Is(err, jetstream.ErrMsgNotFound):
			case err != nil:
				continue // cannot tell: judge it next tick
			case time.Since(last.Time) < s.offlineAfter:
				continue // a recent report is waiting to be applied
			}
		}
		gone = append(gone, u)
	}
	return s.markOffline(ctx, gone, nil, nil, "missed_heartbeats", true)
}

// markDisconnected marks offline the devices of NATS disconnect advisories (devs[i] disconnected at
// ats[i], the connection having started at starts[i], zero when unknown), as markOffline does, except a
// device whose newest known connection started after the closed one: it left that connection for
// another (a stalled or cut-off node reports the old one closed only later) and is still connected.
func (s *Service) markDisconnected(ctx context.Context, devs []string, ats, starts []time.Time) (int, error) {
	return s.markOffline(ctx, devs, ats, starts, "disconnected", false)
}

// markOffline marks devs offline (when online) and records the events: offline since ats[i] (a
// disconnect advisory's time; nil ats: now), unless the device was seen after that or, when starts[i] is
// set, has a connection that started after starts[i]. missed limits it to devices still not seen for
// offlineAfter (the timer's second look, under the row lock).
func (s *Service) markOffline(ctx context.Context, devs []string, ats, starts []time.Time, reason string, missed bool) (int, error) {
	if len(devs) == 0 {
		return 0, nil
	}
	since := make([]*time.Time, len(devs))
	for i := range ats {
		since[i] = &ats[i]
	}
	conn := nullTimes(starts)
	if conn == nil {
		conn = make([]*time.Time, len(devs))
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("mark offline devices: begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	rows, err := tx.Query(ctx, `
		WITH u AS (
			SELECT * FROM unnest($1::text[], $4::timestamptz[], $5::timestamptz[]) AS u(uuid, at, start)
		), o AS (
			SELECT d.uuid, COALESCE(u.at, now()) AS at FROM devices d JOIN u ON u.uuid = d.uuid
			WHERE d.is_online AND d.revoked_at IS NULL
			  AND (NOT $3 OR d.last_seen_at < now() - make_interval(secs => $2))
			  AND (u.at IS NULL OR d.last_seen_at IS NULL OR d.last_seen_at <= u.at)
			  AND (u.start IS NULL OR d.nats_connected_at IS NULL OR d.nats_connected_at <= u.start)
			ORDER BY d.uuid FOR UPDATE OF d
		)
		UPDATE devices d SET is_online = false, offline_since = o.at, updated_at = now()
		FROM o WHERE d.uuid = o.uuid
		RETURNING d.uuid, d.last_seen_at`, devs, s.offlineAfter.Seconds(), missed, since, conn)
	if err != nil {
		return 0, fmt.Errorf("mark offline devices: %w", err)
	}
	type off struct {
		uuid string
		seen *time.Time
	}
	marked, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (off, error) {
		var o off
		return o, r.Scan(&o.uuid, &o.seen)
	})
	if err != nil {
		return 0, fmt.Errorf("mark offline devices: %w", err)
	}
	w := &work{tx: tx, subj: s.subj, actor: actorHealthwatch}
	for _, o := range marked {
		data := map[string]any{"reason": reason}
		if o.seen != nil {
			data["last_seen_at"] = o.seen.UTC()
		}
		w.event(events.Event{Type: streams.EventDeviceOffline, DeviceUUID: o.uuid, Message: "device offline: " + strings.ReplaceAll(reason, "_", " "), Data: data})
	}
	if err := w.commit(ctx); err != nil {
		return 0, fmt.Errorf("mark offline devices: commit: %w", err)
	}
	for _, o := range marked {
		s.log.Info().Str("device", o.uuid).Str("reason", reason).Msg("device offline")
	}
	return len(marked), nil
}

// markConnected marks devices online after NATS connect advisories (devs[i] connected at ats[i], its
// connection started at starts[i], zero when unknown), as a report would, and keeps the start of each
// device's newest connection (nats_connected_at, see markDisconnected).
func (s *Service) markConnected(ctx context.Context, devs []string, ats, starts []time.Time) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("mark connected devices: begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	// Every row is locked first, in uuid order, as every device-row writer locks them; the two
	// statements below then change subsets of them.
	if _, err := tx.Exec(ctx, `SELECT 1 FROM devices WHERE uuid = ANY($1) ORDER BY uuid FOR UPDATE`, devs); err != nil {
		return fmt.Errorf("mark connected devices: lock: %w", err)
	}
	if _, err := tx.Exec(ctx, `UPDATE devices d SET nats_connected_at = u.start
		FROM unnest($1::text[], $2::timestamptz[]) AS u(uuid, start)
		WHERE d.uuid = u.uuid AND u.start IS NOT NULL AND (d.nats_connected_at IS NULL OR d.nats_connected_at < u.start)`,
		devs, nullTimes(starts)); err != nil {
		return fmt.Errorf("mark connected devices: %w", err)
	}
	backs, err := markSeenAt(ctx, tx, devs, ats, s.seenEvery)
	if err != nil {
		return fmt.Errorf("mark connected devices: %w", err)
	}
	w := &work{tx: tx, subj: s.subj, actor: actorHealthwatch}
	if err := cameOnline(ctx, w, backs); err != nil {
		return fmt.Errorf("mark connected devices: %w", err)
	}
	if err := w.commit(ctx); err != nil {
		return fmt.Errorf("mark connected devices: commit: %w", err)
	}
	s.renotify(ctx, backs)
	return nil
}

// markSeen refreshes last_seen_at of devs seen at at (at most every seenEvery) and marks them online
// unless they went offline after at (a late message). It returns the devices that came online.
func markSeen(ctx context.Context, tx pgx.Tx, devs []string, at time.Time, seenEvery time.Duration) ([]back, error) {
	ats := make([]time.Time, len(devs))
	for i := range ats {
		ats[i] = at
	}
	return markSeenAt(ctx, tx, devs, ats, seenEvery)
}

func markSeenAt(ctx context.Context, tx pgx.Tx, devs []string, ats []time.Time, seenEvery time.Duration) ([]back, error) {
	rows, err := tx.Query(ctx, `
		WITH r AS (
			SELECT u.uuid, u.at FROM unnest($1::text[], $2::timestamptz[]) AS u(uuid, at)
		), prev AS (
			SELECT d.uuid, d.is_online, d.offline_since, r.at FROM devices d JOIN r ON r.uuid = d.uuid
			WHERE d.revoked_at IS NULL
			  AND (NOT d.is_online OR d.last_seen_at IS NULL OR d.last_seen_at < r.at - make_interval(secs => $3))
			ORDER BY d.uuid FOR UPDATE OF d
		), upd AS (
			UPDATE devices d SET
				is_online = d.is_online OR p.at >= coalesce(p.offline_since, '-infinity'),
				offline_since = CASE WHEN p.at >= coalesce(p.offline_since, '-infinity') THEN NULL ELSE d.offline_since END,
				last_seen_at = GREATEST(d.last_seen_at, p.at)
			FROM prev p WHERE d.uuid = p.uuid
			RETURNING d.uuid, p.is_online AS was, d.is_online AS now, p.offline_since
		)
		SELECT uuid, offline_since FROM upd WHERE NOT was AND now ORDER BY uuid`, devs, ats, seenEvery.Seconds())
	if err != nil {
		return nil, fmt.Errorf("mark devices seen: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (back, error) {
		var b back
		return b, r.Scan(&b.uuid, &b.since)
	})
	if err != nil {
		return nil, fmt.Errorf("mark devices seen: %w", err)
	}
	return out, nil
}

// offlineGrace skips (or fails, per the policy's offline_action) the in-flight devices of in-progress
// rollouts that have been offline longer than the policy's offline_grace_seconds since they were
// scheduled, then settles those rollouts: an offline device never blocks its batch for good.
func (s *Service) offlineGrace(ctx context.Context) (int, error) {
	// Most ticks no device is offline: a probe of devices_offline_idx says so without walking the
	// in-flight rows of every active rollout.
	var due bool
	if err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM devices WHERE offline_since IS NOT NULL)`).Scan(&due); err != nil {
		return 0, fmt.Errorf("offline grace: probe: %w", err)
	}
	if !due {
		return 0, nil
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("offline grace: begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	lockRows, err := tx.Query(ctx, `SELECT r.rollout_id::text FROM image_rollouts r
		WHERE r.status = `+lifecycle.SQL(lifecycle.InProgress)+`
		  AND EXISTS (SELECT 1 FROM device_rollout_status d JOIN devices v ON v.uuid = d.device_uuid
		              WHERE d.rollout_id = r.rollout_id AND d.status IN (`+lifecycle.SQL(lifecycle.InFlight...)+`)
		                AND v.offline_since IS NOT NULL
		                AND GREATEST(v.offline_since, d.scheduled_at) < now() - make_interval(secs =>
		                    coalesce((r.policy->>'offline_grace_seconds')::int, $2)))
		ORDER BY r.rollout_id LIMIT $1
		FOR UPDATE OF r SKIP LOCKED`, claimLimit, defaultOfflineGrace)
	if err != nil {
		return 0, fmt.Errorf("offline grace: lock rollouts: %w", err)
	}
	locked, err := pgx.CollectRows(lockRows, pgx.RowTo[string])
	if err != nil {
		return 0, fmt.Errorf("offline grace: lock rollouts: %w", err)
	}
	if len(locked) == 0 {
		return 0, nil
	}
	res, err := tx.Query(ctx, `
		WITH o AS (
			SELECT d.rollout_id, d.device_uuid, d.status,
			       coalesce(r.policy->>'offline_action', 'skip') = 'fail' AS fail
			FROM device_rollout_status d
			JOIN image_rollouts r ON r.rollout_id = d.rollout_id
			JOIN devices v ON v.uuid = d.device_uuid
			WHERE d.rollout_id = ANY($1::uuid[]) AND d.status IN (`+lifecycle.SQL(lifecycle.InFlight...)+`)
			  AND v.offline_since IS NOT NULL
			  AND GREATEST(v.offline_since, d.scheduled_at) < now() - make_interval(secs =>
			      coalesce((r.policy->>'offline_grace_seconds')::int, $2))
			ORDER BY d.rollout_id, d.device_uuid
			FOR UPDATE OF d
		)
		UPDATE device_rollout_status d SET
			status = CASE WHEN o.fail THEN `+lifecycle.SQL(lifecycle.DeviceFailed)+` ELSE `+lifecycle.SQL(lifecycle.DeviceSkipped)+` END,
			error_message = 'device offline', completed_at = now(), updated_at = now()
		FROM o WHERE d.rollout_id = o.rollout_id AND d.device_uuid = o.device_uuid
		RETURNING d.rollout_id::text, d.device_uuid, o.status, d.status, d.batch_number, COALESCE(d.new_image, '')`,
		locked, defaultOfflineGrace)
	if err != nil {
		return 0, fmt.Errorf("offline grace: %w", err)
	}
	type moved struct {
		rollout, device, from, to string
		batch                     int
		newImage                  string
	}
	out, err := pgx.CollectRows(res, func(r pgx.CollectableRow) (moved, error) {
		var m moved
		return m, r.Scan(&m.rollout, &m.device, &m.from, &m.to, &m.batch, &m.newImage)
	})
	if err != nil {
		return 0, fmt.Errorf("offline grace: %w", err)
	}
	w := &work{tx: tx, subj: s.subj, actor: actorHealthwatch}
	news := map[string]finishes{}
	for _, m := range out {
		data := map[string]any{"batch": m.batch, "from": m.from, "status": m.to, "new_image": m.newImage,
			"error": "device offline"}
		if m.to == statusFailed {
			news[m.rollout] = finishes{finished: news[m.rollout].finished + 1, failed: news[m.rollout].failed + 1}
			w.event(events.Event{Type: streams.EventDeviceFailed, RolloutID: m.rollout, DeviceUUID: m.device,
				Message: "device offline longer than offline_grace_seconds", Data: data})
			continue
		}
		w.event(events.Event{Type: streams.EventDeviceSkipped, RolloutID: m.rollout, DeviceUUID: m.device,
			Message: "device offline longer than offline_grace_seconds", Data: data})
	}
	if err := settle(ctx, w, locked, news); err != nil {
		return 0, fmt.Errorf("offline grace: %w", err)
	}
	if err := w.commit(ctx); err != nil {
		return 0, fmt.Errorf("offline grace: commit: %w", err)
	}
	return len(out), nil
}

// defaultOfflineGrace is offline_grace_seconds for rollouts planned before the field existed.
const defaultOfflineGrace = 600

// advisory is the part of a NATS connect or disconnect advisory presence reads.
type advisory struct {
	Client struct {
		User  string    `json:"user"`
		Start time.Time `json:"start"` // when the connection started
		Stop  time.Time `json:"stop"`
	} `json:"client"`
	Timestamp time.Time `json:"timestamp"`
}

// advisoryBuffer is how many advisories wait for followAdvisories before the server drops them as a slow
// consumer's: a reconnect storm of a large fleet sends one per device at once.
const advisoryBuffer = 1 << 16

// advisoryBatch is the most advisories applied at once.
const advisoryBatch = 2000

// followAdvisories subscribes, on the system account connection nc, to the server's connect and
// disconnect advisories ($SYS.ACCOUNT.*.CONNECT|DISCONNECT) and marks devices (user = uuid) online
// or offline at once. Both subjects feed one channel, so a device's connect and disconnect are
// handled in the order the server sent them; what has queued up is applied together (applyAdvisories).
// It returns when ctx ends.
func (s *Service) followAdvisories(ctx context.Context, nc *nats.Conn) error {
	ch := make(chan *nats.Msg, advisoryBuffer)
	var subs []*nats.Subscription
	for _, subject := range []string{"$SYS.ACCOUNT.*.CONNECT", "$SYS.ACCOUNT.*.DISCONNECT"} {
		sub, err := nc.ChanSubscribe(subject, ch)
		if err != nil {
			return fmt.Errorf("healthwatch: subscribe %s: %w", subject, err)
		}
		subs = append(subs, sub)
	}
	if err := nc.Flush(); err != nil {
		return fmt.Errorf("healthwatch: subscribe advisories: %w", err)
	}
	defer func() {
		for _, sub := range subs {
			_ = sub.Unsubscribe()
		}
	}()
	batch := make([]*nats.Msg, 0, advisoryBatch)
	for {
		select {
		case <-ctx.Done():
			return nil
		case m := <-ch:
			batch = append(batch[:0], m)
		more:
			for len(batch) < advisoryBatch {
				select {
				case m := <-ch:
					batch = append(batch, m)
				default:
					break more
				}
			}
			s.applyAdvisories(ctx, batch)
		}
	}
}

// advisoryRun is consecutive advisories of one kind: devices, when each (dis)connected and when the
// connection started (zero: the advisory did not say).
type advisoryRun struct {
	disconnect bool
	devs       []string
	ats        []time.Time
	starts     []time.Time
	index      map[string]int
}

// applyAdvisories applies advisories in the order the server sent them, as runs of one kind, each run
// one statement for all its devices (a device named twice in a run counts once, at its latest time):
// one transaction per advisory could not keep up with thousands of devices connecting at once, and the
// server then drops advisories, disconnects included.
func (s *Service) applyAdvisories(ctx context.Context, msgs []*nats.Msg) {
	var runs []*advisoryRun
	for _, m := range msgs {
		var a advisory
		// Only device rows move: services and operators (token connections) match none.
		if json.Unmarshal(m.Data, &a) != nil || a.Client.User == "" {
			continue
		}
		disc := strings.HasSuffix(m.Subject, ".DISCONNECT")
		if len(runs) == 0 || runs[len(runs)-1].disconnect != disc {
			runs = append(runs, &advisoryRun{disconnect: disc, index: map[string]int{}})
		}
		r, at := runs[len(runs)-1], cmpTime(a.Timestamp, time.Now())
		if i, ok := r.index[a.Client.User]; ok {
			r.ats[i] = at
			if a.Client.Start.After(r.starts[i]) {
				r.starts[i] = a.Client.Start
			}
			continue
		}
		r.index[a.Client.User] = len(r.devs)
		r.devs, r.ats, r.starts = append(r.devs, a.Client.User), append(r.ats, at), append(r.starts, a.Client.Start)
	}
	for _, r := range runs {
		var err error
		if r.disconnect {
			_, err = s.markDisconnected(ctx, r.devs, r.ats, r.starts)
		} else {
			err = s.markConnected(ctx, r.devs, r.ats, r.starts)
		}
		if err != nil && ctx.Err() == nil {
			s.log.Warn().Err(err).Int("devices", len(r.devs)).Bool("disconnect", r.disconnect).Msg("device presence")
		}
	}
}

// nullTimes is ts with zero times as NULL (nil for nil ts).
func nullTimes(ts []time.Time) []*time.Time {
	if ts == nil {
		return nil
	}
	out := make([]*time.Time, len(ts))
	for i := range ts {
		if !ts[i].IsZero() {
			out[i] = &ts[i]
		}
	}
	return out
}

func cmpTime(t, def time.Time) time.Time {
	if t.IsZero() {
		return def
	}
	return t
}
