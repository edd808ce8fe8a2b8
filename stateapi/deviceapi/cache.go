package deviceapi

import (
	"crypto/subtle"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"
)

const cacheShards = 256

// deviceCache answers unchanged polls without a database query. Per device it keeps the key hash, the
// highest target version known, and the ETag and body of the version last read from the database.
// An entry answers a poll only while its ETag belongs to the highest known version, its last database
// check is younger than the TTL, and the cache is live (subscribed to target messages).
//
// Entries are values in sharded maps (no pointer per device): about 150 bytes plus the body, so a
// million polling devices with small targets fit in a few hundred MB.
type deviceCache struct {
	seed    maphash.Seed
	shards  [cacheShards]cacheShard
	ttl     int64 // nanoseconds
	maxBody int
	live    atomic.Bool
}

type cacheShard struct {
	mu sync.RWMutex
	m  map[string]cacheEntry
	// pending are database reads in flight for devices without an entry: a target message arriving
	// meanwhile must not be lost, or the read would cache a version already superseded.
	pending map[string]*fill
}

// fill is one in-flight database read for a device (see begin).
type fill struct {
	uuid      string
	refs      int
	announced int64 // highest version announced while the read was in flight
}

type cacheEntry struct {
	keyHash     [32]byte
	version     int64 // highest version known (from the database or a target message)
	etagVersion int64 // the version etag and body belong to
	etag        string
	body        []byte // nil when too large to keep
	checkedAt   int64  // unix nanoseconds of the last database read
}

// snapshot is what a fresh entry answers a poll with.
type snapshot struct {
	etag string
	body []byte
}

func newDeviceCache(ttl time.Duration, maxBody int) *deviceCache {
	c := &deviceCache{seed: maphash.MakeSeed(), ttl: int64(ttl), maxBody: maxBody}
	for i := range c.shards {
		c.shards[i].m = map[string]cacheEntry{}
		c.shards[i].pending = map[string]*fill{}
	}
	return c
}

func (c *deviceCache) shard(uuid string) *cacheShard {
	return &c.shards[maphash.String(c.seed, uuid)%cacheShards]
}

func (c *deviceCache) setLive(v bool) {
	c.live.Store(v)
	if !v {
		c.flush()
	}
}

// lookup returns the entry's snapshot when uuid has a fresh entry whose key hash equals keyHash
// (compared in constant time). ok false means: ask the database.
func (c *deviceCache) lookup(uuid string, keyHash [32]byte, now time.Time) (snapshot, bool) {
	if !c.live.Load() {
		return snapshot{}, false
	}
	sh := c.shard(uuid)
	sh.mu.RLock()
	e, found := sh.m[uuid]
	sh.mu.RUnlock()
	if !found || e.etag == "" || e.etagVersion != e.version || now.UnixNano()-e.checkedAt > c.ttl {
		return snapshot{}, false
	}
	if subtle.ConstantTimeCompare(e.keyHash[:], keyHash[:]) != 1 {
		return snapshot{}, false
	}
	return snapshot{etag: e.etag, body: e.body}, true
}

// keyMatches reports whether uuid's cached key hash is keyHash, whatever the freshness of its target.
func (c *deviceCache) keyMatches(uuid string, keyHash [32]byte, now time.Time) bool {
	if !c.live.Load() {
		return false
	}
	sh := c.shard(uuid)
	sh.mu.RLock()
	e, found := sh.m[uuid]
	sh.mu.RUnlock()
	return found && now.UnixNano()-e.checkedAt <= c.ttl && subtle.ConstantTimeCompare(e.keyHash[:], keyHash[:]) == 1
}

// begin registers a database read of uuid about to start; pass the result to store and always to end.
// It returns nil when the cache is not live.
func (c *deviceCache) begin(uuid string) *fill {
	if !c.live.Load() {
		return nil
	}
	sh := c.shard(uuid)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	f := sh.pending[uuid]
	if f == nil {
		f = &fill{uuid: uuid}
		sh.pending[uuid] = f
	}
	f.refs++
	return f
}

// end unregisters a read begun with begin.
func (c *deviceCache) end(f *fill) {
	if f == nil {
		return
	}
	sh := c.shard(f.uuid)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if f.refs--; f.refs <= 0 && sh.pending[f.uuid] == f {
		delete(sh.pending, f.uuid)
	}
}

// store records what a database read begun with f said about its device at version. A read older than
// a version announced meanwhile (or before) leaves the entry stale, so the next poll reads again.
func (c *deviceCache) store(f *fill, keyHash [32]byte, version int64, etag string, body []byte, now time.Time) {
	if f == nil || !c.live.Load() {
		return
	}
	if len(body) > c.maxBody {
		body = nil
	}
	sh := c.shard(f.uuid)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	known := f.announced
	if e, found := sh.m[f.uuid]; found {
		known = max(known, e.version)
	}
	e := cacheEntry{keyHash: keyHash, version: version, etagVersion: version, etag: etag, body: body, checkedAt: now.UnixNano()}
	if known > version {
		e.version, e.body = known, nil // stale from the start: keep the key, not the target
	}
	sh.m[f.uuid] = e
}

// announce records that uuid's target reached version (from a target message). A cached entry with an
// older version becomes stale; devices not cached are not added.
func (c *deviceCache) announce(uuid string, version int64) {
	sh := c.shard(uuid)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e, found := sh.m[uuid]
	if !found {
		if f := sh.pending[uuid]; f != nil {
			f.announced = max(f.announced, version)
		}
		return
	}
	if version <= e.version {
		return
	}
	e.version = version
	e.body = nil
	sh.m[uuid] = e
}

// has reports whether uuid has an entry or a database read in flight.
func (c *deviceCache) has(uuid string) bool {
	sh := c.shard(uuid)
	sh.mu.RLock()
	_, ok := sh.m[uuid]
	pending := len(sh.pending) > 0 && sh.pending[uuid] != nil
	sh.mu.RUnlock()
	return ok || pending
}

// evict forgets uuid (revoked or deleted).
func (c *deviceCache) evict(uuid string) {
	sh := c.shard(uuid)
	sh.mu.Lock()
	delete(sh.m, uuid)
	sh.mu.Unlock()
}

// flush forgets every entry.
func (c *deviceCache) flush() {
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.Lock()
		clear(sh.m)
		sh.mu.Unlock()
	}
}

// len returns the number of cached devices.
func (c *deviceCache) len() int {
	n := 0
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.RLock()
		n += len(sh.m)
		sh.mu.RUnlock()
	}
	return n
}
