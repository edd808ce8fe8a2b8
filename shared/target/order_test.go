package target_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/fleetshift/fleetshift/shared/logging"
	"github.com/fleetshift/fleetshift/shared/natstest"
	"github.com/fleetshift/fleetshift/shared/outbox"
	"github.com/fleetshift/fleetshift/shared/pgtest"
	"github.com/fleetshift/fleetshift/shared/target"
	"github.com/fleetshift/fleetshift/streams"
)

// orderFixture is one device, the outbox relay, and the TARGETS stream.
type orderFixture struct {
	t     *testing.T
	db    *pgtest.DB
	ns    *natstest.Server
	relay *outbox.Relay
}

func newOrderFixture(t *testing.T, uuids ...string) *orderFixture {
	db := pgtest.New(t)
	ns := natstest.New(t)
	for _, u := range uuids {
		_, err := db.Pool.Exec(context.Background(), `INSERT INTO devices (uuid, device_name, api_key_hash) VALUES ($1, $1, decode(md5($1), 'hex'))`, u)
		must(t, err)
	}
	return &orderFixture{t: t, db: db, ns: ns, relay: outbox.NewRelay(db.Pool, ns.JS, logging.Nop(), nil)}
}

func (f *orderFixture) doc(image string) target.Apps {
	return apps(f.t, `{"1":{"appId":1,"appName":"a","services":[{"serviceName":"web","imageName":"`+image+`"}]}}`)
}

// save is the operator/rollback path: the write and its notification in the outbox (relayed later).
func (f *orderFixture) save(uuid, image string) (int64, error) {
	ctx := context.Background()
	tx, err := f.db.Pool.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(ctx)
	w, err := target.Save(ctx, tx, f.ns.Subjects, []target.Write{{DeviceUUID: uuid, Apps: f.doc(image)}})
	if err != nil {
		return 0, err
	}
	return w[0].Version, tx.Commit(ctx)
}

// apply is the dispatcher's path: the write commits, the notification is published afterwards.
func (f *orderFixture) apply(uuid, image string) (target.Current, error) {
	ctx := context.Background()
	tx, err := f.db.Pool.Begin(ctx)
	if err != nil {
		return target.Current{}, err
	}
	defer tx.Rollback(ctx)
	if _, err := target.Apply(ctx, tx, []target.Write{{DeviceUUID: uuid, Apps: f.doc(image)}}); err != nil {
		return target.Current{}, err
	}
	cur, err := target.Load(ctx, tx, []string{uuid})
	if err != nil {
		return target.Current{}, err
	}
	return cur[0], tx.Commit(ctx)
}

// lastOnSubject is the version of the device's last message in the TARGETS stream.
func (f *orderFixture) lastOnSubject(uuid string) int64 {
	ctx := context.Background()
	stream, err := f.ns.JS.Stream(ctx, f.ns.Subjects.TargetsStream())
	must(f.t, err)
	last, err := stream.GetLastMsgForSubject(ctx, f.ns.Subjects.DeviceTarget(uuid))
	must(f.t, err)
	var doc streams.TargetV1
	must(f.t, json.Unmarshal(last.Data, &doc))
	return doc[uuid].Version
}

func (f *orderFixture) stored(uuid string) int64 {
	var v int64
	must(f.t, f.db.Pool.QueryRow(context.Background(), `SELECT version FROM device_target_state WHERE device_uuid = $1`, uuid).Scan(&v))
	return v
}

// TestLateOlderNotificationNeverLandsLast: a writer whose older target is announced after a newer one
// (outbox relay late, or a direct publish late) does not replace the newer target as the device's last
// message. Each iteration forces both orders.
func TestLateOlderNotificationNeverLandsLast(t *testing.T) {
	t.Parallel()
	f := newOrderFixture(t, "d1")
	ctx := context.Background()
	for i := range 25 {
		// Outbox writer first (older), direct writer second (newer) and announced first; relay late.
		older, err := f.save("d1", fmt.Sprintf("acme/app:%d.0", i))
		must(t, err)
		newer, err := f.apply("d1", fmt.Sprintf("acme/app:%d.1", i))
		must(t, err)
		must(t, target.Publish(ctx, f.ns.JS, f.ns.Subjects, []target.Current{newer}))
		_, err = f.relay.Flush(ctx)
		must(t, err)
		if got := f.lastOnSubject("d1"); got != newer.Version || older >= newer.Version {
			t.Fatalf("iteration %d (relay late): last message v%d, newest v%d (older v%d)", i, got, newer.Version, older)
		}
		// Direct writer first (older) and announced late, outbox writer second (newer), relayed first.
		stale, err := f.apply("d1", fmt.Sprintf("acme/app:%d.2", i))
		must(t, err)
		fresh, err := f.save("d1", fmt.Sprintf("acme/app:%d.3", i))
		must(t, err)
		_, err = f.relay.Flush(ctx)
		must(t, err)
		must(t, target.Publish(ctx, f.ns.JS, f.ns.Subjects, []target.Current{stale}))
		if got := f.lastOnSubject("d1"); got != fresh {
			t.Fatalf("iteration %d (publish late): last message v%d, newest v%d", i, got, fresh)
		}
	}
}

// TestConcurrentWritersLeaveNewestLast: two writers (outbox path and direct path) and two relays race
// on a few devices, many times; once all is published, every device's last message is its stored
// (newest) version.
func TestConcurrentWritersLeaveNewestLast(t *testing.T) {
	t.Parallel()
	devices := []string{"c1", "c2", "c3"}
	f := newOrderFixture(t, devices...)
	ctx := context.Background()
	relay2 := outbox.NewRelay(f.db.Pool, f.ns.JS, logging.Nop(), nil)
	for i := range 40 {
		uuid := devices[i%len(devices)]
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for w := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := range 3 {
					image := fmt.Sprintf("acme/app:%d.%d.%d", i, w, k)
					if w == 0 {
						if _, err := f.save(uuid, image); err != nil {
							errs <- err
							return
						}
						continue
					}
					cur, err := f.apply(uuid, image)
					if err != nil {
						errs <- err
						return
					}
					if rand.IntN(2) == 0 { // sometimes let the other writer and the relays overtake
						if _, err := f.relay.Flush(ctx); err != nil {
							errs <- err
							return
						}
					}
					if err := target.Publish(ctx, f.ns.JS, f.ns.Subjects, []target.Current{cur}); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		for _, r := range []*outbox.Relay{f.relay, relay2} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 3 {
					if _, err := r.Flush(ctx); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("iteration %d: %v", i, err)
		}
		for {
			n, err := f.relay.Flush(ctx)
			must(t, err)
			if n == 0 {
				break
			}
		}
		if got, want := f.lastOnSubject(uuid), f.stored(uuid); got != want {
			t.Fatalf("iteration %d: %s's last message is v%d, stored v%d", i, uuid, got, want)
		}
	}
}
