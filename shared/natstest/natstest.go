// Package natstest runs an embedded JetStream server for a test, on a random port with its store in
// the test's temporary directory, with fleetshift's streams created.
package natstest

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleetshift/fleetshift/shared/broker"
	"github.com/fleetshift/fleetshift/streams"
)

// Password is the service password of test servers.
const Password = "test-service-password"

// Server is a running test server and a service connection to it.
type Server struct {
	Embedded *broker.Embedded
	URL      string
	NC       *nats.Conn
	JS       jetstream.JetStream
	Subjects streams.Subjects
	StoreDir string
}

// New starts a server, connects to it, and creates the streams. Everything stops at cleanup.
func New(t testing.TB) *Server {
	t.Helper()
	return NewWith(t, "")
}

// NewWith is New over an existing store directory (empty: a new one).
func NewWith(t testing.TB, storeDir string) *Server {
	t.Helper()
	if storeDir == "" {
		storeDir = t.TempDir()
	}
	emb, err := broker.StartEmbedded(broker.EmbeddedConfig{Addr: "127.0.0.1:0", StoreDir: storeDir, ServicePassword: Password})
	if err != nil {
		t.Fatalf("natstest: %v", err)
	}
	nc, err := broker.Connect(emb.ClientURL(), "test", Creds())
	if err != nil {
		emb.Shutdown()
		t.Fatalf("natstest: %v", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("natstest: jetstream: %v", err)
	}
	subj := streams.New("")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := subj.Ensure(ctx, js, streams.Options{}); err != nil {
		t.Fatalf("natstest: %v", err)
	}
	s := &Server{Embedded: emb, URL: emb.ClientURL(), NC: nc, JS: js, Subjects: subj, StoreDir: storeDir}
	t.Cleanup(s.Stop)
	return s
}

// Creds are the service credentials for a test server.
func Creds() broker.Credentials {
	return broker.Credentials{User: broker.ServiceUser, Password: Password}
}

// Stop closes the connection and shuts the server down; calling it twice is harmless.
func (s *Server) Stop() {
	if s.NC != nil {
		s.NC.Close()
	}
	if s.Embedded != nil && s.Embedded.Server.Running() {
		s.Embedded.Shutdown()
	}
}
