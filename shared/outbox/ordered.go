package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// HeaderVersion carries the version of an ordered message (see Ordered).
const HeaderVersion = "Fleetshift-Version"

// orderedPrefix marks, in an outbox row's subject, a message to publish with PublishOrdered:
// <orderedPrefix><stream>.<version>.<subject>. Stream names hold no dots.
const orderedPrefix = "$fleetshift.ordered."

// Ordered is a message for a stream that keeps one message per subject (a "last value" per subject,
// such as each device's target): it replaces the subject's last message only when its Version is
// higher than that message's, so two writers racing on one subject never leave the older version last.
type Ordered struct {
	Stream string // the stream holding Msg.Subject, with direct get allowed
	// Version orders the messages of one subject; it never goes backwards for a subject.
	Version int64
	Msg     *nats.Msg

	// lastSeq, when set, is the subject's last sequence as JetStream named it when it refused a publish
	// ("wrong last sequence: N"): the next round reads that message by sequence.
	lastSeq uint64
}

// OrderedMessage returns an outbox message that the relay publishes with PublishOrdered.
func OrderedMessage(stream string, version int64, id, subject string, payload []byte) Message {
	return Message{ID: id, Subject: orderedPrefix + stream + "." + strconv.FormatInt(version, 10) + "." + subject, Payload: payload}
}

// parseOrdered splits a stored ordered subject; ok is false for a plain subject.
func parseOrdered(stored string) (stream string, version int64, subject string, ok bool) {
	rest, ok := strings.CutPrefix(stored, orderedPrefix)
	if !ok {
		return "", 0, "", false
	}
	stream, rest, ok1 := strings.Cut(rest, ".")
	v, subject, ok2 := strings.Cut(rest, ".")
	version, err := strconv.ParseInt(v, 10, 64)
	if !ok1 || !ok2 || err != nil || stream == "" || subject == "" {
		return "", 0, "", false
	}
	return stream, version, subject, true
}

// orderedRounds bounds how often PublishOrdered re-reads a subject another writer changed meanwhile.
const orderedRounds = 20

// orderedReaders is how many last-message reads PublishOrdered keeps in flight.
const orderedReaders = 32

// PublishOrdered publishes msgs so that each subject's last message in its stream is never replaced by
// an older version: for each subject it publishes only its newest message of msgs, and only if the
// subject's current last message (read with a direct get) has a lower version; the publish expects that
// last message's sequence (Nats-Expected-Last-Subject-Sequence), so a writer that slipped in between
// makes JetStream refuse it, and the subject is read and decided again. A message whose version is
// already there (or older) is not published: a newer target has superseded it. It returns once JetStream
// has acknowledged every publish. Each message carries its version in HeaderVersion.
func PublishOrdered(ctx context.Context, js jetstream.JetStream, msgs []Ordered) error {
	if len(msgs) == 0 {
		return nil
	}
	// Only the newest message per subject matters: the stream keeps one per subject.
	newest := make(map[string]Ordered, len(msgs))
	for _, m := range msgs {
		if cur, ok := newest[m.Msg.Subject]; !ok || m.Version > cur.Version {
			newest[m.Msg.Subject] = m
		}
	}
	todo := make([]Ordered, 0, len(newest))
	for _, m := range newest {
		if m.Msg.Header == nil {
			m.Msg.Header = nats.Header{}
		}
		m.Msg.Header.Set(HeaderVersion, strconv.FormatInt(m.Version, 10))
		todo = append(todo, m)
	}
	streams := map[string]jetstream.Stream{}
	for round := 0; len(todo) > 0; round++ {
		if round == orderedRounds {
			return fmt.Errorf("publish %s: other writers kept changing it (%d subjects left)", todo[0].Msg.Subject, len(todo))
		}
		for _, m := range todo {
			if _, ok := streams[m.Stream]; !ok {
				s, err := js.Stream(ctx, m.Stream)
				if err != nil {
					return fmt.Errorf("publish %s: stream %s: %w", m.Msg.Subject, m.Stream, err)
				}
				streams[m.Stream] = s
			}
		}
		lasts, err := readLastsBatched(ctx, js.Conn(), todo)
		if errors.Is(err, errNoMultiLast) {
			lasts, err = readLasts(ctx, streams, todo)
		}
		if err != nil {
			return err
		}
		correctLasts(ctx, js.Conn(), todo, lasts)
		var send []Ordered
		for i, m := range todo {
			if lasts[i].version >= m.Version {
				continue // this version, or a newer one, is there already
			}
			m.Msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(lasts[i].seq, 10))
			send = append(send, m)
		}
		if todo, err = publishExpecting(ctx, js, send); err != nil {
			return err
		}
	}
	return nil
}

// last is what a subject's last message says: its sequence (0: none) and version.
type last struct {
	seq     uint64
	version int64
}

// multiLastBatch is how many subjects one batched direct get asks for (the server answers at most 1,024
// messages a request).
const multiLastBatch = 1000

// multiLastReaders is how many batched direct gets readLastsBatched keeps in flight.
const multiLastReaders = 4

// errNoMultiLast: the server did not answer a batched direct get (older server, direct get off); read
// one subject at a time instead.
var errNoMultiLast = errors.New("batched direct get not answered")

// readLastsBatched reads the last message of every subject of msgs with batched direct gets
// ($JS.API.DIRECT.GET.<stream> with "multi_last": up to multiLastBatch subjects a request, the
// answers streamed back and ended by a 204 EOB status): a large batch of devices costs a hundredth of
// the round trips of one get per subject.
func readLastsBatched(ctx context.Context, nc *nats.Conn, msgs []Ordered) ([]last, error) {
	out := make([]last, len(msgs))
	type chunk struct {
		stream string
		idx    []int
	}
	var chunks []chunk
	byStream := map[string][]int{}
	for i, m := range msgs {
		byStream[m.Stream] = append(byStream[m.Stream], i)
	}
	for stream, idx := range byStream {
		for lo := 0; lo < len(idx); lo += multiLastBatch {
			chunks = append(chunks, chunk{stream, idx[lo:min(lo+multiLastBatch, len(idx))]})
		}
	}
	errs := make([]error, len(chunks))
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(multiLastReaders, len(chunks)) {
		wg.Go(func() {
			for c := range next {
				errs[c] = readMultiLast(ctx, nc, chunks[c].stream, msgs, chunks[c].idx, out)
			}
		})
	}
	for c := range chunks {
		next <- c
	}
	close(next)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for _, e := range errs {
			if e != nil && !errors.Is(e, errNoMultiLast) {
				return nil, err
			}
		}
		return nil, errNoMultiLast
	}
	return out, nil
}

// readMultiLast asks stream for the last messages of the subjects of msgs[idx...] and records each one's
// sequence and version in out (subjects without a message keep the zero last).
func readMultiLast(ctx context.Context, nc *nats.Conn, stream string, msgs []Ordered, idx []int, out []last) error {
	subjects := make([]string, len(idx))
	at := make(map[string]int, len(idx))
	for k, i := range idx {
		subjects[k] = msgs[i].Msg.Subject
		at[msgs[i].Msg.Subject] = i
	}
	body, err := json.Marshal(struct {
		MultiLast []string `json:"multi_last"`
		Batch     int      `json:"batch"`
	}{subjects, len(subjects)})
	if err != nil {
		return fmt.Errorf("read last messages of %s: %w", stream, err)
	}
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return fmt.Errorf("read last messages of %s: %w", stream, err)
	}
	defer sub.Unsubscribe()
	_ = sub.SetPendingLimits(-1, -1)
	if err := nc.PublishRequest("$JS.API.DIRECT.GET."+stream, inbox, body); err != nil {
		return fmt.Errorf("read last messages of %s: %w", stream, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			return fmt.Errorf("read last messages of %s: %w", stream, err)
		}
		switch st := m.Header.Get("Status"); st {
		case "":
		case "204": // end of batch
			return nil
		case "404":
			if m.Header.Get("Description") == "No Results" { // none of the subjects has a message
				return nil
			}
			return fmt.Errorf("read last messages of %s: status 404 %s: %w", stream, m.Header.Get("Description"), errNoMultiLast)
		default:
			return fmt.Errorf("read last messages of %s: status %s %s: %w", stream, st, m.Header.Get("Description"), errNoMultiLast)
		}
		i, ok := at[m.Header.Get(jetstream.SubjectHeader)]
		if !ok {
			continue
		}
		seq, err := strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
		if err != nil {
			return fmt.Errorf("read last messages of %s: sequence %q of %s: %w", stream, m.Header.Get(jetstream.SequenceHeader), msgs[i].Msg.Subject, errNoMultiLast)
		}
		out[i] = last{seq: seq, version: versionOf(m.Header)}
	}
}

// readLasts reads the last message of every subject of msgs, orderedReaders at a time.
func readLasts(ctx context.Context, streams map[string]jetstream.Stream, msgs []Ordered) ([]last, error) {
	out := make([]last, len(msgs))
	errs := make([]error, len(msgs))
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(orderedReaders, len(msgs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				m := msgs[i]
				raw, err := streams[m.Stream].GetLastMsgForSubject(ctx, m.Msg.Subject)
				switch {
				case errors.Is(err, jetstream.ErrMsgNotFound):
				case err != nil:
					errs[i] = fmt.Errorf("publish %s: read its last message: %w", m.Msg.Subject, err)
				default:
					out[i] = last{seq: raw.Sequence, version: versionOf(raw.Header)}
				}
			}
		}()
	}
	for i := range msgs {
		next <- i
	}
	close(next)
	wg.Wait()
	return out, errors.Join(errs...)
}

// versionOf reads a stored message's version: HeaderVersion, else the "-<n>" suffix of its Nats-Msg-Id
// (messages published before versions were carried), else 0.
func versionOf(h nats.Header) int64 {
	if v, err := strconv.ParseInt(h.Get(HeaderVersion), 10, 64); err == nil {
		return v
	}
	id := h.Get(jetstream.MsgIDHeader)
	if i := strings.LastIndexByte(id, '-'); i >= 0 {
		if v, err := strconv.ParseInt(id[i+1:], 10, 64); err == nil {
			return v
		}
	}
	return 0
}

// publishExpecting publishes msgs asynchronously (at most publishWindow awaiting acknowledgement) and
// returns those JetStream refused because their subject's last sequence moved meanwhile.
func publishExpecting(ctx context.Context, js jetstream.JetStream, msgs []Ordered) ([]Ordered, error) {
	var again []Ordered
	timer := time.NewTimer(30 * time.Second)
	defer timer.Stop()
	type inflight struct {
		m Ordered
		f jetstream.PubAckFuture
	}
	pending := make([]inflight, 0, min(len(msgs), publishWindow))
	await := func() error {
		for _, p := range pending {
			select {
			case <-p.f.Ok():
			case err := <-p.f.Err():
				var apiErr *jetstream.APIError
				if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
					apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
					m := p.m
					m.lastSeq = wrongLastSeq(apiErr.Description)
					again = append(again, m)
					continue
				}
				return fmt.Errorf("publish %s: %w", p.m.Msg.Subject, err)
			case <-timer.C:
				return fmt.Errorf("publish %s: no acknowledgement within 30s", p.m.Msg.Subject)
			case <-ctx.Done():
				return fmt.Errorf("publish %s: %w", p.m.Msg.Subject, ctx.Err())
			}
		}
		pending = pending[:0]
		timer.Reset(30 * time.Second)
		return nil
	}
	for _, m := range msgs {
		if len(pending) == publishWindow {
			if err := await(); err != nil {
				return nil, err
			}
		}
		f, err := js.PublishMsgAsync(m.Msg)
		if errors.Is(err, jetstream.ErrTooManyStalledMsgs) && len(pending) > 0 {
			// The client is shared: make room by waiting for ours, then try once more.
			if err := await(); err != nil {
				return nil, err
			}
			f, err = js.PublishMsgAsync(m.Msg)
		}
		if err != nil {
			return nil, fmt.Errorf("publish %s: %w", m.Msg.Subject, err)
		}
		pending = append(pending, inflight{m: m, f: f})
	}
	if err := await(); err != nil {
		return nil, err
	}
	return again, nil
}

// wrongLastSeq is the sequence JetStream names in a "wrong last sequence: N" refusal (0 if none).
func wrongLastSeq(desc string) uint64 {
	_, n, ok := strings.Cut(desc, "wrong last sequence: ")
	if !ok {
		return 0
	}
	seq, err := strconv.ParseUint(strings.TrimSpace(n), 10, 64)
	if err != nil {
		return 0
	}
	return seq
}

// correctLasts replaces, for each message JetStream refused naming its subject's last sequence, the
// last read by subject with the message at that sequence (read by sequence). A read of a subject's last
// message has been seen to return the message a newer one replaced while JetStream's publish check
// names the newer one; reading the named sequence settles it. A failed read keeps what was read before.
func correctLasts(ctx context.Context, nc *nats.Conn, msgs []Ordered, lasts []last) {
	for i, m := range msgs {
		if m.lastSeq == 0 || m.lastSeq <= lasts[i].seq {
			continue
		}
		body, _ := json.Marshal(struct {
			Seq uint64 `json:"seq"`
		}{m.lastSeq})
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		reply, err := nc.RequestWithContext(rctx, "$JS.API.DIRECT.GET."+m.Stream, body)
		cancel()
		if err != nil || reply.Header.Get("Status") != "" || reply.Header.Get(jetstream.SubjectHeader) != m.Msg.Subject {
			continue
		}
		lasts[i] = last{seq: m.lastSeq, version: versionOf(reply.Header)}
	}
}
