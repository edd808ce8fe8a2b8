package deviceapi

import (
	"fmt"
	"hash/maphash"
	"sync"
	"time"

	"github.com/fleetshift/fleetshift/shared/apierr"
)

// limiter caps work in flight. It never queues: over the cap the caller is refused at once with
// 503 overloaded and Retry-After, which costs the server nothing and tells the client when to return.
type limiter struct {
	what       string
	slots      chan struct{}
	retryAfter time.Duration
}

func newLimiter(what string, n int, retryAfter time.Duration) *limiter {
	return &limiter{what: what, slots: make(chan struct{}, n), retryAfter: retryAfter}
}

// acquire takes a slot; the caller must release it. Over the cap it returns the 503.
func (l *limiter) acquire() error {
	select {
	case l.slots <- struct{}{}:
		return nil
	default:
		return &apierr.Error{Kind: apierr.ErrUnavailable, Code: "overloaded", RetryAfter: l.retryAfter,
			Message: fmt.Sprintf("the server is at its limit of %d %s in flight; retry after the Retry-After delay", cap(l.slots), l.what)}
	}
}

func (l *limiter) release() { <-l.slots }

const rateShards = 64

// rateLimiter is a token bucket per device: a burst of `burst` reports, refilled at one per `every`.
// Buckets that are full again are pruned, so memory follows the devices reporting right now.
type rateLimiter struct {
	seed   maphash.Seed
	burst  float64
	every  time.Duration
	shards [rateShards]rateShard
}

type rateShard struct {
	mu sync.Mutex
	m  map[string]bucket
}

type bucket struct {
	tokens float64
	at     int64 // unix nanoseconds of the last update
}

func newRateLimiter(burst int, every time.Duration) *rateLimiter {
	r := &rateLimiter{seed: maphash.MakeSeed(), burst: float64(burst), every: every}
	for i := range r.shards {
		r.shards[i].m = map[string]bucket{}
	}
	return r
}

func (r *rateLimiter) refill(b bucket, now int64) bucket {
	if elapsed := now - b.at; elapsed > 0 {
		b.tokens = min(r.burst, b.tokens+float64(elapsed)/float64(r.every))
		b.at = now
	}
	return b
}

// allow takes one token of device's bucket; without one it returns how long until one is there.
func (r *rateLimiter) allow(device string, now time.Time) (bool, time.Duration) {
	sh := &r.shards[maphash.String(r.seed, device)%rateShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	b, ok := sh.m[device]
	if !ok {
		b = bucket{tokens: r.burst, at: now.UnixNano()}
	}
	b = r.refill(b, now.UnixNano())
	if b.tokens < 1 {
		sh.m[device] = b
		return false, time.Duration((1 - b.tokens) * float64(r.every))
	}
	b.tokens--
	sh.m[device] = b
	return true, 0
}

// prune drops buckets that are full again (indistinguishable from a device never seen).
func (r *rateLimiter) prune(now time.Time) {
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.Lock()
		for k, b := range sh.m {
			if r.refill(b, now.UnixNano()).tokens >= r.burst {
				delete(sh.m, k)
			}
		}
		sh.mu.Unlock()
	}
}
