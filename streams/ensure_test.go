package streams

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// flakyJS answers CreateOrUpdateStream with errs in turn, then succeeds.
type flakyJS struct {
	jetstream.JetStream
	errs  []error
	calls int
}

func (f *flakyJS) CreateOrUpdateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	f.calls++
	if len(f.errs) > 0 {
		err := f.errs[0]
		f.errs = f.errs[1:]
		return nil, err
	}
	return nil, nil
}

// TestEnsureWaitsOutAJetStreamStillRecovering: the first start after a kill -9 used to fail with
// "ensure stream FLEET_REPORTS: context deadline exceeded" while the embedded JetStream recovered its
// store; timeouts and 503s are now asked again, and any other error still fails at once.
func TestEnsureWaitsOutAJetStreamStillRecovering(t *testing.T) {
	subj := New("fleet")
	o := Options{Wait: 10 * time.Second, Attempt: time.Second}
	n := len(subj.StreamConfigs(o))

	js := &flakyJS{errs: []error{context.DeadlineExceeded, &jetstream.APIError{Code: 503, Description: "JetStream system temporarily unavailable"}}}
	if err := subj.Ensure(context.Background(), js, o); err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	if js.calls != n+2 {
		t.Fatalf("%d calls, want %d streams + 2 retries", js.calls, n)
	}

	refused := &jetstream.APIError{Code: 400, Description: "stream name already in use with a different configuration"}
	js = &flakyJS{errs: []error{refused}}
	if err := subj.Ensure(context.Background(), js, o); !errors.Is(err, refused) || js.calls != 1 {
		t.Fatalf("Ensure after a refusal: %v after %d calls, want the refusal at once", err, js.calls)
	}

	js = &flakyJS{errs: []error{context.DeadlineExceeded, context.DeadlineExceeded, context.DeadlineExceeded}}
	o.Wait = 300 * time.Millisecond
	if err := subj.Ensure(context.Background(), js, o); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Ensure past its wait: %v, want the timeout", err)
	}
}
