package deviceapi

import (
	"crypto/sha256"
	"fmt"
	"testing"
	"time"
)

func TestDeviceCache(t *testing.T) {
	t.Parallel()
	now := time.Now()
	key := sha256.Sum256([]byte("k"))
	other := sha256.Sum256([]byte("other"))
	c := newDeviceCache(time.Minute, 1024)

	fillAt := func(uuid string, version int64, etag string) {
		f := c.begin(uuid)
		c.store(f, key, version, etag, []byte("body"), now)
		c.end(f)
	}

	// Not live: nothing is answered or kept.
	fillAt("a", 1, "1-x")
	if _, ok := c.lookup("a", key, now); ok {
		t.Fatal("answered while not live")
	}
	c.setLive(true)
	fillAt("a", 1, "1-x")
	if s, ok := c.lookup("a", key, now); !ok || s.etag != "1-x" || string(s.body) != "body" {
		t.Fatalf("fresh entry not answered: %+v %v", s, ok)
	}
	if _, ok := c.lookup("a", other, now); ok {
		t.Fatal("answered a wrong key")
	}
	if _, ok := c.lookup("a", key, now.Add(2*time.Minute)); ok {
		t.Fatal("answered past the TTL")
	}

	// An older or equal announcement changes nothing; a newer one makes the entry stale.
	c.announce("a", 1)
	if _, ok := c.lookup("a", key, now); !ok {
		t.Fatal("equal version made the entry stale")
	}
	c.announce("a", 2)
	if _, ok := c.lookup("a", key, now); ok {
		t.Fatal("stale entry answered after a newer target")
	}
	if !c.keyMatches("a", key, now) {
		t.Fatal("key forgotten with the target")
	}
	// A read of the old version (racing the message) does not make it fresh again.
	fillAt("a", 1, "1-x")
	if _, ok := c.lookup("a", key, now); ok {
		t.Fatal("older read revived a stale entry")
	}
	fillAt("a", 2, "2-y")
	if s, ok := c.lookup("a", key, now); !ok || s.etag != "2-y" {
		t.Fatal("newest read not answered")
	}

	// A message arriving while the first read of a device is in flight is not lost.
	f := c.begin("b")
	if !c.has("b") {
		t.Fatal("in-flight read not visible to the message handler")
	}
	c.announce("b", 6)
	c.store(f, key, 5, "5-z", []byte("old"), now)
	c.end(f)
	if _, ok := c.lookup("b", key, now); ok {
		t.Fatal("a read older than a message that arrived meanwhile was cached as fresh")
	}

	// Large bodies are not kept, but 304s are still answered.
	big := make([]byte, 2048)
	f = c.begin("c")
	c.store(f, key, 1, "1-c", big, now)
	c.end(f)
	if s, ok := c.lookup("c", key, now); !ok || s.body != nil {
		t.Fatal("large body handling")
	}

	c.evict("a")
	if c.has("a") {
		t.Fatal("evicted entry kept")
	}
	c.flush()
	if c.len() != 0 {
		t.Fatal("flush kept entries")
	}
}

func BenchmarkCacheLookup(b *testing.B) {
	c := newDeviceCache(time.Hour, 1024)
	c.setLive(true)
	key := sha256.Sum256([]byte("k"))
	now := time.Now()
	for i := range 10000 {
		f := c.begin(fmt.Sprint(i))
		c.store(f, key, 1, "1-x", []byte(`{"x":{}}`), now)
		c.end(f)
	}
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			c.lookup(fmt.Sprint(i%10000), key, now)
			i++
		}
	})
}
