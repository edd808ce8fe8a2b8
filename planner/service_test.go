package planner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleetshift/fleetshift/shared/command"
	"github.com/fleetshift/fleetshift/shared/logging"
	"github.com/fleetshift/fleetshift/shared/natstest"
	"github.com/fleetshift/fleetshift/shared/pgtest"
	"github.com/fleetshift/fleetshift/shared/wait"
	"github.com/fleetshift/fleetshift/streams"
)

func eventTypes(t testing.TB, db *pgtest.DB, rollout string) []string {
	t.Helper()
	rows, err := db.Pool.Query(context.Background(), `SELECT event_type FROM rollout_events WHERE rollout_id = $1 ORDER BY id`, rollout)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	return out
}

func TestStatusByStrategy(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	var devs []device
	for i := range 20 {
		devs = append(devs, device{uuid: fmt.Sprintf("d%02d", i), images: []string{
			"acme/auto:1.0", "acme/staged:1.0", "acme/manual:1.0", "acme/scheduled:1.0", "acme/rate:1.0"}})
	}
	seed(t, db, devs...)
	for _, s := range []string{"auto", "staged", "manual", "scheduled"} {
		policy(t, db, map[string]string{"image_pattern": "'acme/" + s + "'", "update_strategy": "'" + s + "'"})
	}
	policy(t, db, map[string]string{"image_pattern": "'acme/rate'", "update_strategy": "'rate'", "rate_base_per_minute": "30",
		"rate_increment_factor": "2", "rate_increase_criteria": "'succeeded'", "rate_increase_threshold": "30",
		"rate_maximum_per_minute": "300"})
	cases := []struct {
		strategy, status string
		batches          []int
		dispatch         bool
	}{
		{"auto", StatusInProgress, []int{20}, true},
		{"staged", StatusInProgress, []int{2, 8, 10}, true},
		{"manual", StatusPending, []int{2, 8, 10}, false},
		{"scheduled", StatusScheduled, []int{2, 8, 10}, false},
		// A rate rollout is one batch; its chunks come from healthwatch's rate timer, not a first command.
		{"rate", StatusInProgress, []int{20}, false},
	}
	svc := newService(db)
	for _, c := range cases {
		res, err := svc.HandlePush(ctx, push("ev-"+c.strategy, "acme/"+c.strategy+":1.1"))
		if err != nil {
			t.Fatal(err)
		}
		var status, imageName, newImage, oldTag string
		var sizes []int
		var total, totalBatches int
		var policySnap []byte
		if err := db.Pool.QueryRow(ctx, `SELECT status, image_name, new_image, old_tag, batch_sizes, total_devices, total_batches, policy
			FROM image_rollouts WHERE rollout_id = $1`, res.RolloutID).Scan(&status, &imageName, &newImage, &oldTag, &sizes, &total, &totalBatches, &policySnap); err != nil {
			t.Fatal(err)
		}
		if status != c.status || !slices.Equal(sizes, c.batches) || total != 20 || totalBatches != len(c.batches) {
			t.Errorf("%s: status %s sizes %v total %d/%d", c.strategy, status, sizes, total, totalBatches)
		}
		if imageName != "acme/"+c.strategy || newImage != "acme/"+c.strategy+":1.1" || oldTag != "1.0" {
			t.Errorf("%s: image_name %q new_image %q old_tag %q", c.strategy, imageName, newImage, oldTag)
		}
		var snap Policy
		if err := json.Unmarshal(policySnap, &snap); err != nil || snap.UpdateStrategy != c.strategy || snap.ImagePattern != "acme/"+c.strategy {
			t.Errorf("%s: policy snapshot %s (%v)", c.strategy, policySnap, err)
		}
		var payload []byte
		err = db.Pool.QueryRow(ctx, `SELECT payload FROM outbox WHERE msg_id = $1 AND subject = $2`,
			command.Dispatch{RolloutID: res.RolloutID, Batch: 1, Purpose: command.First}.MsgID(), streams.New("").Command(streams.CommandDispatch, res.RolloutID)).Scan(&payload)
		if c.dispatch {
			var cmd streams.DispatchV1
			if err != nil || json.Unmarshal(payload, &cmd) != nil || cmd != (streams.DispatchV1{RolloutID: res.RolloutID, Batch: 1}) {
				t.Errorf("%s: dispatch command %s %v", c.strategy, payload, err)
			}
		} else if err == nil {
			t.Errorf("%s: dispatched before it may start", c.strategy)
		}
		if got := eventTypes(t, db, res.RolloutID); !slices.Equal(got, []string{streams.EventWebhookReceived, streams.EventRolloutCreated}) {
			t.Errorf("%s: events %v", c.strategy, got)
		}
		var rate *int
		if err := db.Pool.QueryRow(ctx, `SELECT rate_per_minute FROM image_rollouts WHERE rollout_id = $1`, res.RolloutID).Scan(&rate); err != nil {
			t.Fatal(err)
		}
		if (c.strategy == "rate") != (rate != nil) || (rate != nil && *rate != 30) {
			t.Errorf("%s: rate_per_minute %v", c.strategy, rate)
		}
		if c.strategy == "rate" && count(t, db, `SELECT count(*) FROM outbox WHERE subject = $1`,
			streams.New("").Command(streams.CommandDispatch, res.RolloutID)) != 0 {
			t.Errorf("rate: a dispatch command at creation")
		}
	}
	// Each event also sits in the outbox, on its subject.
	if n := count(t, db, `SELECT count(*) FROM outbox WHERE subject LIKE 'fleet.events.image.rollout_created.%'`); n != 5 {
		t.Errorf("%d rollout_created events in the outbox", n)
	}
}

func TestRedeliveryAndDuplicatePushes(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	seed(t, db, device{uuid: "d1", images: []string{"acme/app:1.0"}}, device{uuid: "d2", images: []string{"acme/app:1.0"}})
	policy(t, db, map[string]string{"image_pattern": "'acme/*'"})
	svc := newService(db)
	first, err := svc.HandlePush(ctx, push("ev-1", "acme/app:1.1@"+digestA))
	if err != nil || first.Outcome != OutcomePlanned {
		t.Fatalf("%+v %v", first, err)
	}
	again, err := svc.HandlePush(ctx, push("ev-1", "acme/app:1.1@"+digestA))
	if err != nil || again.Outcome != OutcomeHandled {
		t.Fatalf("redelivery: %+v %v", again, err)
	}
	// The same image under another delivery id: the live rollout already covers it.
	dup, err := svc.HandlePush(ctx, push("ev-2", "acme/app:1.1@"+digestA))
	if err != nil || dup.Outcome != OutcomeDuplicate || dup.RolloutID != first.RolloutID {
		t.Fatalf("duplicate: %+v %v", dup, err)
	}
	if again, err := svc.HandlePush(ctx, push("ev-2", "acme/app:1.1@"+digestA)); err != nil || again.Outcome != OutcomeHandled {
		t.Fatalf("duplicate redelivered: %+v %v", again, err)
	}
	if n := count(t, db, `SELECT count(*) FROM image_rollouts`); n != 1 {
		t.Fatalf("%d rollouts", n)
	}
	if n := count(t, db, `SELECT count(*) FROM device_rollout_status`); n != 2 {
		t.Fatalf("%d device rows", n)
	}
	if n := count(t, db, `SELECT count(*) FROM rollout_events WHERE event_type = $1`, streams.EventWebhookReceived); n != 2 {
		t.Fatalf("%d webhook_received events, want one per delivery", n)
	}
	if n := count(t, db, `SELECT count(*) FROM outbox WHERE msg_id LIKE 'dispatch-%'`); n != 1 {
		t.Fatalf("%d dispatch commands", n)
	}
}

func TestNoPolicyNoRollout(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	seed(t, db, device{uuid: "d1", images: []string{"acme/app:1.0"}})
	policy(t, db, map[string]string{"image_pattern": "'acme/app'", "enabled": "false"})
	svc := newService(db)
	for range 2 {
		res, err := svc.HandlePush(ctx, push("ev-1", "acme/app:1.1"))
		if err != nil {
			t.Fatal(err)
		}
		if res.RolloutID != "" {
			t.Fatalf("rollout without policy: %+v", res)
		}
	}
	if n := count(t, db, `SELECT count(*) FROM image_rollouts`); n != 0 {
		t.Fatalf("%d rollouts", n)
	}
	if n := count(t, db, `SELECT count(*) FROM rollout_events WHERE event_type = $1 AND rollout_id IS NULL`, streams.EventWebhookReceived); n != 1 {
		t.Fatalf("%d webhook_received events", n)
	}
}

func TestEmptyRolloutCompleted(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	seed(t, db, device{uuid: "d1", images: []string{"acme/app:1.1"}}, device{uuid: "d2", images: []string{"redis:7"}})
	policy(t, db, map[string]string{"image_pattern": "'acme/app'", "update_strategy": "'staged'"})
	res, err := newService(db).HandlePush(ctx, push("ev-1", "acme/app:1.1"))
	if err != nil {
		t.Fatal(err)
	}
	var status string
	var total, batches int
	var completed *time.Time
	if err := db.Pool.QueryRow(ctx, `SELECT status, total_devices, total_batches, completed_at FROM image_rollouts WHERE rollout_id = $1`,
		res.RolloutID).Scan(&status, &total, &batches, &completed); err != nil {
		t.Fatal(err)
	}
	if status != StatusCompleted || total != 0 || batches != 0 || completed == nil {
		t.Fatalf("status %s total %d batches %d completed %v", status, total, batches, completed)
	}
	if got := eventTypes(t, db, res.RolloutID); !slices.Equal(got, []string{streams.EventWebhookReceived, streams.EventRolloutCreated, streams.EventRolloutCompleted}) {
		t.Fatalf("events %v", got)
	}
	if n := count(t, db, `SELECT count(*) FROM outbox WHERE msg_id LIKE 'dispatch-%'`); n != 0 {
		t.Fatalf("an empty rollout dispatched")
	}
}

func TestSupersede(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	var devs []device
	for i := range 10 {
		devs = append(devs, device{uuid: fmt.Sprintf("d%d", i), images: []string{"acme/app:1.0"}})
	}
	seed(t, db, devs...)
	policy(t, db, map[string]string{"image_pattern": "'acme/app'", "update_strategy": "'staged'", "batch_percentages": "'{50,100}'"})
	other := policy(t, db, map[string]string{"image_pattern": "'acme/app:*'", "enabled": "false"})
	svc := newService(db)
	first, err := svc.HandlePush(ctx, push("ev-1", "acme/app:1.1"))
	if err != nil {
		t.Fatal(err)
	}
	// Pretend batch 1 was dispatched: d0 finished, d1 is mid-update; the rest are pending.
	if _, err := db.Pool.Exec(ctx, `UPDATE device_rollout_status SET status = CASE device_uuid WHEN 'd0' THEN 'completed' ELSE 'updating' END
		WHERE rollout_id = $1 AND device_uuid IN ('d0', 'd1')`, first.RolloutID); err != nil {
		t.Fatal(err)
	}
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// d0 and d1 now target 1.1 (the dispatcher's write).
	if _, err := tx.Exec(ctx, `UPDATE device_images SET tag = '1.1', image = 'acme/app:1.1' WHERE device_uuid IN ('d0','d1')`); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	// A rollout of the same repository under another policy is not superseded.
	var foreign string
	if err := db.Pool.QueryRow(ctx, `INSERT INTO image_rollouts (policy_id, image_name, repository, new_tag, new_image, strategy, status)
		VALUES ($1, 'acme/app', 'docker.io/acme/app', '0.9', 'acme/app:0.9', 'auto', 'in_progress') RETURNING rollout_id::text`, other).Scan(&foreign); err != nil {
		t.Fatal(err)
	}

	second, err := svc.HandlePush(ctx, push("ev-2", "acme/app:1.2"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(second.Superseded, []string{first.RolloutID}) {
		t.Fatalf("superseded %v", second.Superseded)
	}
	var status, by string
	if err := db.Pool.QueryRow(ctx, `SELECT status, superseded_by::text FROM image_rollouts WHERE rollout_id = $1`, first.RolloutID).Scan(&status, &by); err != nil {
		t.Fatal(err)
	}
	if status != StatusSuperseded || by != second.RolloutID {
		t.Fatalf("old rollout %s by %s", status, by)
	}
	if n := count(t, db, `SELECT count(*) FROM image_rollouts WHERE rollout_id = $1 AND status = 'in_progress'`, foreign); n != 1 {
		t.Fatal("a rollout of another policy was superseded")
	}
	old := rolloutDevices(t, db, first.RolloutID)
	for _, d := range old {
		want := "skipped"
		if d.UUID == "d0" {
			want = "completed"
		}
		if d.Status != want {
			t.Errorf("old rollout device %s: %s, want %s", d.UUID, d.Status, want)
		}
	}
	// Every device still runs the repository and is not on 1.2, so every one is in the new rollout, each
	// with its own old image.
	rows := rolloutDevices(t, db, second.RolloutID)
	if len(rows) != 10 {
		t.Fatalf("new rollout has %d devices", len(rows))
	}
	for _, d := range rows {
		want := "1.0"
		if d.UUID == "d0" || d.UUID == "d1" {
			want = "1.1"
		}
		if d.OldTag != want || d.OldImage != "acme/app:"+want || d.NewImage != "acme/app:1.2" {
			t.Errorf("new rollout device %+v, want old tag %s", d, want)
		}
	}
	if got := eventTypes(t, db, first.RolloutID); !slices.Contains(got, streams.EventRolloutSuperseded) {
		t.Errorf("old rollout events %v", got)
	}
}

func TestTwentyThousandDevices(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	const n = 20_000
	devs := make([]device, n)
	for i := range devs {
		devs[i] = device{uuid: fmt.Sprintf("dev-%05d", i), fleet: "big", images: []string{"acme/app:1.0", "redis:7"}}
	}
	seed(t, db, devs...)
	policy(t, db, map[string]string{"image_pattern": "'acme/app'", "update_strategy": "'staged'", "fleet_id": "'big'"})
	start := time.Now()
	res, err := newService(db).HandlePush(ctx, push("ev-big", "acme/app:1.1"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("planned %d devices in %s", res.Devices, time.Since(start))
	if res.Devices != n {
		t.Fatalf("%d devices", res.Devices)
	}
	got := map[int]int{}
	rows, err := db.Pool.Query(ctx, `SELECT batch_number, count(*) FROM device_rollout_status WHERE rollout_id = $1 GROUP BY 1`, res.RolloutID)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var b, c int
		if err := rows.Scan(&b, &c); err != nil {
			t.Fatal(err)
		}
		got[b] = c
	}
	rows.Close()
	if got[1] != 2_000 || got[2] != 8_000 || got[3] != 10_000 {
		t.Fatalf("batches %v", got)
	}
	// Batch 1 is the first 2,000 devices by uuid.
	if n := count(t, db, `SELECT count(*) FROM device_rollout_status WHERE rollout_id = $1 AND batch_number = 1 AND device_uuid < 'dev-02000'`, res.RolloutID); n != 2_000 {
		t.Fatalf("batch 1 is not the first devices by uuid: %d", n)
	}
}

// startService runs a planner on js until the returned stop is called (or the test ends).
func startService(t *testing.T, db *pgtest.DB, ns *natstest.Server, hook func(context.Context, streams.PushV1) error) (stop func()) {
	t.Helper()
	svc, err := New(Config{Pool: db.Pool, JS: ns.JS, NC: ns.NC, Subjects: ns.Subjects, Log: logging.Nop(), AckWait: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	svc.beforeCommit = hook
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	var once atomic.Bool
	stop = func() {
		if once.Swap(true) {
			return
		}
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("planner Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("planner did not stop")
		}
	}
	t.Cleanup(stop)
	return stop
}

func publishPush(t *testing.T, js jetstream.JetStream, subj streams.Subjects, msgID string, p streams.PushV1) {
	t.Helper()
	b, _ := json.Marshal(p)
	msg := &nats.Msg{Subject: subj.Push(), Data: b, Header: nats.Header{}}
	msg.Header.Set(streams.HeaderMsgID, msgID)
	msg.Header.Set(streams.HeaderKind, "push.v1")
	if _, err := js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
}

func consumerSettled(ns *natstest.Server) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := ns.JS.Consumer(ctx, ns.Subjects.PushesStream(), streams.ConsumerPlanner)
	if err != nil {
		return err
	}
	info, err := c.Info(ctx)
	if err != nil {
		return err
	}
	if info.NumPending != 0 || info.NumAckPending != 0 {
		return fmt.Errorf("planner consumer: %d pending, %d unacked", info.NumPending, info.NumAckPending)
	}
	return nil
}

// TestConsumesPushes runs the service on JetStream: a push becomes one rollout; the same delivery
// published again under another message id (past JetStream's dedupe) changes nothing.
func TestConsumesPushes(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ns := natstest.New(t)
	seed(t, db, device{uuid: "d1", images: []string{"acme/app:1.0"}})
	policy(t, db, map[string]string{"image_pattern": "'acme/app'"})
	startService(t, db, ns, nil)
	p := push("ev-js", "acme/app:1.1")
	publishPush(t, ns.JS, ns.Subjects, "m1", p)
	publishPush(t, ns.JS, ns.Subjects, "m2", p)
	// An unreadable message is dropped, not retried forever.
	if _, err := ns.JS.Publish(context.Background(), ns.Subjects.Push(), []byte("not json")); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 20*time.Second, func() error {
		if n := count(t, db, `SELECT count(*) FROM planner_pushes`); n != 1 {
			return fmt.Errorf("%d pushes handled", n)
		}
		return consumerSettled(ns)
	})
	if n := count(t, db, `SELECT count(*) FROM image_rollouts WHERE push_event_id = 'ev-js' AND status = 'in_progress'`); n != 1 {
		t.Fatalf("%d rollouts", n)
	}
}

// TestCrashBeforeCommit: a push that JetStream delivered but the planner never committed (it stopped
// first) is planned exactly once after a restart of both the planner and the NATS server.
func TestCrashBeforeCommit(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	store := t.TempDir()
	ns := natstest.NewWith(t, store)
	seed(t, db, device{uuid: "d1", images: []string{"acme/app:1.0"}}, device{uuid: "d2", images: []string{"acme/app:1.0"}})
	policy(t, db, map[string]string{"image_pattern": "'acme/app'", "update_strategy": "'staged'"})

	reached := make(chan struct{}, 16)
	crash := errors.New("process killed before commit")
	stop := startService(t, db, ns, func(ctx context.Context, _ streams.PushV1) error {
		select {
		case reached <- struct{}{}:
		default:
		}
		return crash
	})
	publishPush(t, ns.JS, ns.Subjects, "crash-1", push("ev-crash", "acme/app:1.1"))
	select {
	case <-reached:
	case <-time.After(20 * time.Second):
		t.Fatal("the planner never reached the commit")
	}
	stop()
	ns.Stop()
	if n := count(t, db, `SELECT count(*) FROM image_rollouts`); n != 0 {
		t.Fatalf("%d rollouts written before the commit", n)
	}

	ns2 := natstest.NewWith(t, store)
	startService(t, db, ns2, nil)
	startService(t, db, ns2, nil) // two replicas share the durable
	wait.For(t, 30*time.Second, func() error {
		if n := count(t, db, `SELECT count(*) FROM image_rollouts WHERE push_event_id = 'ev-crash'`); n != 1 {
			return fmt.Errorf("%d rollouts", n)
		}
		return consumerSettled(ns2)
	})
	if n := count(t, db, `SELECT count(*) FROM image_rollouts`); n != 1 {
		t.Fatalf("%d rollouts", n)
	}
	if n := count(t, db, `SELECT count(*) FROM device_rollout_status`); n != 2 {
		t.Fatalf("%d device rows", n)
	}
	if n := count(t, db, `SELECT count(*) FROM outbox WHERE msg_id LIKE 'dispatch-%'`); n != 1 {
		t.Fatalf("%d dispatch commands", n)
	}
}

// TestPoisonPushDeadLettered: a push PostgreSQL can never store (a NUL character in pusher, which would
// fail with SQLSTATE 22P05) and an unreadable one are terminated and recorded in the dead-letter stream
// with their reason;
// the good push published after them is planned, and nothing stays with the consumer.
func TestPoisonPushDeadLettered(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ns := natstest.New(t)
	seed(t, db, device{uuid: "d1", images: []string{"acme/app:1.0"}})
	policy(t, db, map[string]string{"image_pattern": "'acme/app'"})
	var counted sync.Map
	svc, err := New(Config{Pool: db.Pool, JS: ns.JS, Subjects: ns.Subjects, Log: logging.Nop(), AckWait: 2 * time.Second,
		DeadLetterCount: func(consumer, reason string) { counted.Store(consumer+"/"+reason, true) }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	poison := push("ev-poison", "acme/app:1.1")
	poison.Pusher = "ci\x00"
	publishPush(t, ns.JS, ns.Subjects, "poison", poison)
	if _, err := ns.JS.Publish(context.Background(), ns.Subjects.Push(), []byte(`{"event_id":`)); err != nil {
		t.Fatal(err)
	}
	publishPush(t, ns.JS, ns.Subjects, "good", push("ev-good", "acme/app:1.2"))
	wait.For(t, 20*time.Second, func() error {
		if n := count(t, db, `SELECT count(*) FROM image_rollouts WHERE push_event_id = 'ev-good'`); n != 1 {
			return fmt.Errorf("good push: %d rollouts", n)
		}
		return consumerSettled(ns)
	})
	if n := count(t, db, `SELECT count(*) FROM planner_pushes WHERE event_id = 'ev-poison'`); n != 0 {
		t.Fatalf("poison push recorded %d times", n)
	}
	dl, err := ns.JS.Stream(context.Background(), ns.Subjects.DeadLetterStream())
	if err != nil {
		t.Fatal(err)
	}
	reasons := map[string]string{}
	for seq := uint64(1); seq <= 2; seq++ {
		m, err := dl.GetMsg(context.Background(), seq)
		if err != nil {
			t.Fatalf("dead letter %d: %v", seq, err)
		}
		if m.Subject != ns.Subjects.DeadLetter(ns.Subjects.PushesStream()) || m.Header.Get(streams.HeaderDLConsumer) != streams.ConsumerPlanner ||
			m.Header.Get(streams.HeaderDLSubject) != ns.Subjects.Push() || m.Header.Get(streams.HeaderDLSeq) == "" {
			t.Fatalf("dead letter %d: subject %s headers %v", seq, m.Subject, m.Header)
		}
		reasons[m.Header.Get(streams.HeaderDLSeq)] = m.Header.Get(streams.HeaderDLReason)
	}
	if reasons["1"] != "invalid" || reasons["2"] != "decode" {
		t.Fatalf("dead-letter reasons by stream seq: %v", reasons)
	}
	for _, k := range []string{"planner/invalid", "planner/decode"} {
		if _, ok := counted.Load(k); !ok {
			t.Fatalf("dead letter %s not counted", k)
		}
	}
}
