package client

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A server at its limit answers 503 or 429 with Retry-After; the client waits that long (plus jitter)
// and tries again instead of failing the device's registration or report.
func TestRefusalsWithRetryAfterAreWaitedOut(t *testing.T) {
	t.Parallel()
	for _, code := range []int{http.StatusServiceUnavailable, http.StatusTooManyRequests} {
		var calls atomic.Int32
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if calls.Add(1) <= 2 {
				w.Header().Set("Retry-After", "1")
				w.WriteHeader(code)
				_, _ = w.Write([]byte(`{"error":{"code":"overloaded","message":"at the limit"}}`))
				return
			}
			_, _ = w.Write([]byte(`{"uuid":"u1","api_key":"k1"}`))
		}))
		t.Cleanup(srv.Close)
		c, err := New(srv.URL, nil)
		require.NoError(t, err)
		start := time.Now()
		id, err := c.Register(context.Background(), "pk", "dev", nil)
		require.NoError(t, err, "status %d", code)
		require.Equal(t, "u1", id.UUID)
		require.EqualValues(t, 3, calls.Load())
		require.GreaterOrEqual(t, time.Since(start), 2*time.Second, "each refusal's Retry-After is honoured")
	}
}

// Without Retry-After a refusal is an error at once; a cancelled context ends the wait.
func TestRefusalsWithoutRetryAfterOrCancelledFail(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("wait") != "" || r.Header.Get("X-Wait") != "" {
			w.Header().Set("Retry-After", "30")
		}
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	t.Cleanup(srv.Close)
	c, err := New(srv.URL, nil)
	require.NoError(t, err)
	_, err = c.Register(context.Background(), "pk", "dev", nil)
	require.True(t, IsStatus(err, http.StatusServiceUnavailable), "got %v", err)

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = c.do(ctx, http.MethodGet, "/x", http.Header{"X-Wait": {"1"}}, nil, nil)
	require.Error(t, err)
	require.Less(t, time.Since(start), 5*time.Second, "a cancelled context ends a 30 s Retry-After wait")
}

func TestWithJitterStaysInRange(t *testing.T) {
	t.Parallel()
	for range 1000 {
		d := withJitter(2 * time.Second)
		require.GreaterOrEqual(t, d, 2*time.Second)
		require.Less(t, d, 3*time.Second+time.Nanosecond)
	}
}

// TestDefaultClientBoundsConnections: many devices sharing the default client never hold more than
// MaxConns connections to the server at once; the requests beyond wait and then succeed.
func TestDefaultClientBoundsConnections(t *testing.T) {
	t.Parallel()
	var open, peak atomic.Int64
	release := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		<-release
		w.Header().Set("ETag", `"1"`)
		w.WriteHeader(http.StatusNotModified)
	}))
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		switch st {
		case http.StateNew:
			n := open.Add(1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
		case http.StateClosed, http.StateHijacked:
			open.Add(-1)
		}
	}
	srv.Start()
	defer srv.Close()
	c, err := New(srv.URL, nil)
	require.NoError(t, err)
	const n = MaxConns + 100
	errs := make(chan error, n)
	for range n {
		go func() {
			_, err := c.GetState(context.Background(), "u", "k", `"1"`)
			errs <- err
		}()
	}
	require.Eventually(t, func() bool { return open.Load() >= MaxConns }, 10*time.Second, 10*time.Millisecond)
	time.Sleep(200 * time.Millisecond) // room for any connection beyond the bound to open
	close(release)
	for range n {
		require.NoError(t, <-errs)
	}
	require.LessOrEqual(t, peak.Load(), int64(MaxConns))
}
