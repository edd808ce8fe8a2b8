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

// A publish refused with "wrong last sequence: N" carries N into the next round, which reads the message
// at N by sequence instead of trusting a read by subject that returned the replaced message: the next
// publish then expects N and goes through.
func TestRefusedPublishReadsTheNamedSequence(t *testing.T) {
	t.Parallel()
	ns := natstest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stream := ns.Subjects.TargetsStream()
	subj := ns.Subjects.DeviceTarget("dev-refused")
	var seqs []uint64
	for v := 1; v <= 2; v++ {
		m := nats.NewMsg(subj)
		m.Header.Set(HeaderVersion, strconv.Itoa(v))
		m.Data = []byte(`{}`)
		ack, err := ns.JS.PublishMsg(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, ack.Sequence)
	}

	// A publish expecting the replaced message's sequence is refused, naming the real last one.
	m := nats.NewMsg(subj)
	m.Data = []byte(`{}`)
	m.Header.Set(HeaderVersion, "3")
	m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(seqs[0], 10))
	again, err := publishExpecting(ctx, ns.JS, []Ordered{{Stream: stream, Version: 3, Msg: m}})
	if err != nil {
		t.Fatal(err)
	}
	if len(again) != 1 || again[0].lastSeq != seqs[1] {
		t.Fatalf("refusal carried %+v, want last sequence %d", again, seqs[1])
	}

	// A stale read (the replaced message) is corrected by the sequence JetStream named.
	lasts := []last{{seq: seqs[0], version: 1}}
	correctLasts(ctx, ns.NC, again, lasts)
	if lasts[0] != (last{seq: seqs[1], version: 2}) {
		t.Fatalf("corrected last %+v, want seq %d version 2", lasts[0], seqs[1])
	}

	// And the whole publish ends with version 3 last.
	if err := PublishOrdered(ctx, ns.JS, []Ordered{{Stream: stream, Version: 3, Msg: nats.NewMsg(subj)}}); err != nil {
		t.Fatal(err)
	}
	s, err := ns.JS.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := s.GetLastMsgForSubject(ctx, subj)
	if err != nil {
		t.Fatal(err)
	}
	if versionOf(raw.Header) != 3 {
		t.Fatalf("last version %d, want 3", versionOf(raw.Header))
	}
}

func TestWrongLastSeq(t *testing.T) {
	t.Parallel()
	for desc, want := range map[string]uint64{
		"wrong last sequence: 407": 407, "wrong last sequence: x": 0, "other": 0, "": 0,
	} {
		if got := wrongLastSeq(desc); got != want {
			t.Errorf("wrongLastSeq(%q) = %d, want %d", desc, got, want)
		}
	}
}
