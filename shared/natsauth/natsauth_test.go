package natsauth_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleetshift/fleetshift/shared/broker"
	"github.com/fleetshift/fleetshift/shared/logging"
	"github.com/fleetshift/fleetshift/shared/natsauth"
	"github.com/fleetshift/fleetshift/shared/pgtest"
	"github.com/fleetshift/fleetshift/shared/wait"
	"github.com/fleetshift/fleetshift/streams"
)

type env struct {
	url  string
	svc  *natsauth.Service
	nc   *nats.Conn
	js   jetstream.JetStream
	subj streams.Subjects
	emb  *broker.Embedded
	db   *pgtest.DB
}

func setup(t *testing.T) *env {
	t.Helper()
	return setupWith(t, nil)
}

func setupWith(t *testing.T, mutate func(*natsauth.Config)) *env {
	t.Helper()
	db := pgtest.New(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	seed, err := natsauth.NewIssuer()
	if err != nil {
		t.Fatal(err)
	}
	hook, err := natsauth.Configure(seed, broker.ServiceUser)
	if err != nil {
		t.Fatal(err)
	}
	emb, err := broker.StartEmbedded(broker.EmbeddedConfig{Addr: "127.0.0.1:0", StoreDir: t.TempDir(), ServicePassword: "svc", Configure: hook})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(emb.Shutdown)
	nc, err := broker.Connect(emb.ClientURL(), "svc", broker.Credentials{User: broker.ServiceUser, Password: "svc"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	subj := streams.New("")
	if err := subj.Ensure(ctx, js, streams.Options{}); err != nil {
		t.Fatal(err)
	}
	for _, d := range []struct{ uuid, key string }{{"dev-a", "key-a"}, {"dev-b", "key-b"}} {
		h := sha256.Sum256([]byte(d.key))
		if _, err := db.Pool.Exec(ctx, `INSERT INTO devices (uuid, device_name, api_key_hash) VALUES ($1, $1, $2)`, d.uuid, h[:]); err != nil {
			t.Fatal(err)
		}
	}
	cfg := natsauth.Config{NC: nc, Pool: db.Pool, Subjects: subj, IssuerSeed: seed, Log: logging.Nop(), Server: emb.Server,
		Operators: func(_ context.Context, token string) (string, error) {
			if token == "read-token" {
				return "read", nil
			}
			return "", errors.New("unknown")
		}}
	if mutate != nil {
		mutate(&cfg)
	}
	svc, err := natsauth.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	go svc.Run(ctx)
	select {
	case <-svc.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("auth callout not ready")
	}
	// Publish a target for each device, as the dispatcher would.
	for _, u := range []string{"dev-a", "dev-b"} {
		if _, err := js.Publish(ctx, subj.DeviceTarget(u), []byte(`{"`+u+`":{"version":1}}`)); err != nil {
			t.Fatal(err)
		}
	}
	return &env{emb: emb, url: emb.ClientURL(), svc: svc, nc: nc, js: js, subj: subj, db: db}
}

func connectDevice(t *testing.T, url, uuid, key string, errs chan<- error) (*nats.Conn, error) {
	t.Helper()
	opts := []nats.Option{nats.UserInfo(uuid, key), nats.CustomInboxPrefix(natsauth.DeviceInboxPrefix(uuid)), nats.MaxReconnects(0)}
	if errs != nil {
		opts = append(opts, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case errs <- err:
			default:
			}
		}))
	}
	return nats.Connect(url, opts...)
}

func TestDeviceSeesOnlyItsOwnSubjects(t *testing.T) {
	t.Parallel()
	e := setup(t)
	errs := make(chan error, 16)
	a, err := connectDevice(t, e.url, "dev-a", "key-a", errs)
	if err != nil {
		t.Fatalf("device A with its own key: %v", err)
	}
	defer a.Close()

	// Own target: subscribe and direct-get the latest from JetStream.
	if _, err := a.SubscribeSync(e.subj.DeviceTarget("dev-a")); err != nil {
		t.Fatal(err)
	}
	direct := "$JS.API.DIRECT.GET." + e.subj.TargetsStream() + "."
	msg, err := a.Request(direct+e.subj.DeviceTarget("dev-a"), nil, 2*time.Second)
	if err != nil || string(msg.Data) != `{"dev-a":{"version":1}}` {
		t.Fatalf("direct get own target: %v %q", err, msgData(msg))
	}
	// Own state publish lands in the REPORTS stream.
	if err := a.Publish(e.subj.DeviceState("dev-a"), []byte(`{"dev-a":{"apps":{}}}`)); err != nil {
		t.Fatal(err)
	}
	_ = a.Flush()

	// B's target: subscribing is refused.
	if _, err := a.SubscribeSync(e.subj.DeviceTarget("dev-b")); err != nil {
		t.Fatal(err)
	}
	expectPermissionError(t, errs, "subscribe to B's target")
	// B's latest target: the direct get is refused (no reply).
	if m, err := a.Request(direct+e.subj.DeviceTarget("dev-b"), nil, 500*time.Millisecond); err == nil {
		t.Fatalf("read B's target: got %q", m.Data)
	}
	expectPermissionError(t, errs, "direct get B's target")
	// B's state: publishing is refused and nothing reaches the stream.
	_ = a.Publish(e.subj.DeviceState("dev-b"), []byte(`{"dev-b":{}}`))
	_ = a.Flush()
	expectPermissionError(t, errs, "publish B's state")
	ctx := context.Background()
	stream, _ := e.js.Stream(ctx, e.subj.ReportsStream())
	wait.For(t, 5*time.Second, func() error {
		info, err := stream.Info(ctx)
		if err != nil || info.State.Msgs != 1 {
			return errors.New("want exactly A's own report in the stream")
		}
		return nil
	})
	if _, err := stream.GetLastMsgForSubject(ctx, e.subj.DeviceState("dev-b")); err == nil {
		t.Fatal("B's state was published by A")
	}
}

func TestWrongOrRevokedKeyCannotConnect(t *testing.T) {
	t.Parallel()
	e := setup(t)
	if nc, err := connectDevice(t, e.url, "dev-a", "key-b", nil); err == nil {
		nc.Close()
		t.Fatal("device A connected with B's key")
	}
	if nc, err := connectDevice(t, e.url, "nobody", "x", nil); err == nil {
		nc.Close()
		t.Fatal("unknown device connected")
	}
	if nc, err := nats.Connect(e.url, nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Fatal("anonymous client connected")
	}
	// Operators with a token; an unknown token is refused.
	if nc, err := nats.Connect(e.url, nats.Token("read-token"), nats.MaxReconnects(0)); err != nil {
		t.Fatalf("operator token: %v", err)
	} else {
		nc.Close()
	}
	if nc, err := nats.Connect(e.url, nats.Token("nope"), nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Fatal("unknown token connected")
	}

	// Revocation closes an open connection and refuses the next one.
	a, err := connectDevice(t, e.url, "dev-a", "key-a", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := e.nc.Publish(e.subj.DeviceRevoked(), []byte("dev-a")); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 5*time.Second, func() error {
		if a.IsConnected() {
			return errors.New("revoked device still connected")
		}
		return nil
	})
	if nc, err := connectDevice(t, e.url, "dev-a", "key-a", nil); err == nil {
		nc.Close()
		t.Fatal("revoked device reconnected from the key cache")
	}
}

func expectPermissionError(t *testing.T, errs <-chan error, what string) {
	t.Helper()
	select {
	case err := <-errs:
		if !errors.Is(err, nats.ErrPermissionViolation) {
			t.Fatalf("%s: want a permission violation, got %v", what, err)
		}
	case <-time.After(3 * time.Second):
		t.Fatalf("%s: no permission violation reported", what)
	}
}

func msgData(m *nats.Msg) string {
	if m == nil {
		return ""
	}
	return string(m.Data)
}

// TestLargeReportsRefused: one device key sending 30 reports of 7 MB (under the server's 8 MiB
// max_payload) stores none of them: the device's connection may not publish more than a report's size,
// and the REPORTS stream refuses larger messages from anyone (stateapi included).
func TestLargeReportsRefused(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := context.Background()
	big := make([]byte, 7<<20)
	for i := range big {
		big[i] = 'a'
	}
	for i := range 30 {
		a, err := connectDevice(t, e.url, "dev-a", "key-a", nil)
		if err != nil {
			t.Fatalf("report %d: connect: %v", i, err)
		}
		js, _ := jetstream.New(a)
		pubCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err = js.Publish(pubCtx, e.subj.DeviceState("dev-a"), big)
		cancel()
		if err == nil {
			t.Fatalf("report %d of 7 MB was accepted over the device's connection", i)
		}
		a.Close()
	}
	// The service user's connection may publish 7 MB, but the stream refuses it.
	if _, err := e.js.Publish(ctx, e.subj.DeviceState("dev-a"), big); err == nil {
		t.Fatal("the REPORTS stream stored a 7 MB report")
	}
	// A report of the largest allowed size still goes through, over the device's own connection.
	a, err := connectDevice(t, e.url, "dev-a", "key-a", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	js, _ := jetstream.New(a)
	if _, err := js.Publish(ctx, e.subj.DeviceState("dev-a"), big[:streams.MaxReportBytes]); err != nil {
		t.Fatalf("a report of %d bytes: %v", streams.MaxReportBytes, err)
	}
	stream, _ := e.js.Stream(ctx, e.subj.ReportsStream())
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("REPORTS holds %d messages, want only the allowed one", info.State.Msgs)
	}
}

// TestStormBeyondCapacityIsRefused: while every worker is stuck (the devices table is locked) and the
// queue is full, further connects are refused at once ("server busy"), so the clients back off and
// retry, instead of waiting in the server until its auth timeout; once the database answers again the
// same devices connect.
func TestStormBeyondCapacityIsRefused(t *testing.T) {
	t.Parallel()
	e := setupWith(t, func(c *natsauth.Config) { c.Workers, c.Capacity = 1, 2 })
	ctx := context.Background()
	tx, err := e.db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `LOCK TABLE devices IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 12 {
		wg.Go(func() {
			if nc, err := connectDevice(t, e.url, "dev-a", "key-a", nil); err == nil {
				nc.Close()
			}
		})
	}
	wg.Wait()
	if e.svc.Busy() == 0 {
		t.Fatal("12 connects with 1 stuck worker and room for 2 waiting: none was refused as busy")
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 10*time.Second, func() error {
		nc, err := connectDevice(t, e.url, "dev-a", "key-a", nil)
		if err != nil {
			return err
		}
		nc.Close()
		return nil
	})
}
