package target_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/fleetshift/fleetshift/shared/natstest"
	"github.com/fleetshift/fleetshift/shared/pgtest"
	"github.com/fleetshift/fleetshift/shared/target"
	"github.com/fleetshift/fleetshift/streams"
)

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestLoadAndPublishNotifyEachDeviceOnce(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ns := natstest.New(t)
	ctx := context.Background()
	const n = 2500 // more than two publish windows
	_, err := db.Pool.Exec(ctx, `INSERT INTO devices (uuid, device_name, api_key_hash)
		SELECT 'n' || g, 'n' || g, decode(md5('n' || g), 'hex') FROM generate_series(1, $1) g`, n)
	must(t, err)
	a := apps(t, `{"1":{"appId":1,"appName":"a","services":[{"serviceName":"web","imageName":"acme/app:1.0"}]}}`)
	writes := make([]target.Write, n)
	uuids := make([]string, n)
	for i := range writes {
		uuids[i] = fmt.Sprintf("n%d", i+1)
		writes[i] = target.Write{DeviceUUID: uuids[i], Apps: a, Config: json.RawMessage(`{"k":"v"}`)}
	}
	tx, err := db.Pool.Begin(ctx)
	must(t, err)
	_, err = target.Apply(ctx, tx, writes)
	must(t, err)
	must(t, tx.Commit(ctx))

	sub, err := ns.NC.SubscribeSync(ns.Subjects.DeviceTarget("n7"))
	must(t, err)
	must(t, ns.NC.Flush())

	cur, err := target.Load(ctx, db.Pool, append(uuids, "no-such-device"))
	must(t, err)
	if len(cur) != n {
		t.Fatalf("loaded %d targets, want %d", len(cur), n)
	}
	must(t, target.Publish(ctx, ns.JS, ns.Subjects, cur))

	live, err := sub.NextMsg(5 * time.Second)
	must(t, err)
	var doc streams.TargetV1
	must(t, json.Unmarshal(live.Data, &doc))
	if doc["n7"].Version != 1 || string(doc["n7"].Config) != `{"k": "v"}` || live.Header.Get(nats.MsgIdHdr) != "n7-1" {
		t.Fatalf("live message: %s %v", live.Data, live.Header)
	}

	stream, err := ns.JS.Stream(ctx, ns.Subjects.TargetsStream())
	must(t, err)
	info, err := stream.Info(ctx)
	must(t, err)
	if info.State.Msgs != n {
		t.Fatalf("TARGETS holds %d messages, want %d", info.State.Msgs, n)
	}
	last, err := stream.GetLastMsgForSubject(ctx, ns.Subjects.DeviceTarget("n2500"))
	must(t, err)
	doc = nil
	must(t, json.Unmarshal(last.Data, &doc))
	if !strings.Contains(string(doc["n2500"].Apps), "acme/app:1.0") {
		t.Fatalf("last target of n2500: %s", last.Data)
	}

	// The same generation again is a duplicate: the stream's sequence does not move.
	must(t, target.Publish(ctx, ns.JS, ns.Subjects, cur))
	info2, err := stream.Info(ctx)
	must(t, err)
	if info2.State.LastSeq != info.State.LastSeq {
		t.Fatalf("re-publishing the same versions moved the stream from %d to %d", info.State.LastSeq, info2.State.LastSeq)
	}
}
