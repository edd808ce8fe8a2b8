package outbox

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleetshift/fleetshift/shared/natstest"
)

// TestBatchedLastReadsMatchSingleGets: the batched direct get (multi_last, several requests for 2,500
// subjects) reads exactly what one direct get per subject reads: sequence and version of each subject's
// last message, nothing for a subject without one; and the server answers it (no fallback).
func TestBatchedLastReadsMatchSingleGets(t *testing.T) {
	t.Parallel()
	ns := natstest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stream := ns.Subjects.TargetsStream()
	const n = 2*multiLastBatch + 500
	msgs := make([]Ordered, n)
	for i := range msgs {
		subj := ns.Subjects.DeviceTarget("dev-" + strconv.Itoa(i))
		msgs[i] = Ordered{Stream: stream, Version: int64(i + 10), Msg: nats.NewMsg(subj)}
		for v := range i % 3 { // none, one or two stored messages: the last one counts
			m := nats.NewMsg(subj)
			m.Header.Set(HeaderVersion, strconv.Itoa(i+v))
			m.Data = []byte(`{}`)
			if _, err := ns.JS.PublishMsgAsync(m); err != nil {
				t.Fatal(err)
			}
		}
	}
	select {
	case <-ns.JS.PublishAsyncComplete():
	case <-ctx.Done():
		t.Fatal("publishes not acknowledged")
	}
	got, err := readLastsBatched(ctx, ns.NC, msgs)
	if err != nil {
		t.Fatalf("batched read: %v", err)
	}
	s, err := ns.JS.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	want, err := readLasts(ctx, map[string]jetstream.Stream{stream: s}, msgs)
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	for i := range msgs {
		if got[i] != want[i] {
			t.Fatalf("subject %d: batched %+v, single %+v", i, got[i], want[i])
		}
		if i%3 > 0 {
			found++
			if got[i].seq == 0 || got[i].version != int64(i+i%3-1) {
				t.Fatalf("subject %d: last %+v, want version %d", i, got[i], i+i%3-1)
			}
		} else if got[i] != (last{}) {
			t.Fatalf("subject %d has no message, read %+v", i, got[i])
		}
	}
	if found == 0 {
		t.Fatal("no subject had a message")
	}
}
