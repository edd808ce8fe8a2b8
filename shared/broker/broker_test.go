package broker

import (
	"net"
	"strconv"
	"strings"
	"testing"
)

func TestBusyPortFallsBackToTheNextFreeOne(t *testing.T) {
	t.Parallel()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	port := busy.Addr().(*net.TCPAddr).Port
	addr := "127.0.0.1:" + strconv.Itoa(port)

	if _, err := StartEmbedded(EmbeddedConfig{Addr: addr, ServicePassword: "x", StoreDir: t.TempDir()}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("without fallback: want a clear 'in use' error, got %v", err)
	}
	e, err := StartEmbedded(EmbeddedConfig{Addr: addr, ServicePassword: "x", FallbackOnBusy: true, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Shutdown()
	got := e.Server.Addr().(*net.TCPAddr).Port
	if !e.FellBack || got <= port || got > port+77 {
		t.Fatalf("fell back=%v to port %d, want the next free port after %d", e.FellBack, got, port)
	}
	if _, err := StartEmbedded(EmbeddedConfig{Addr: addr, StoreDir: t.TempDir()}); err == nil {
		t.Fatal("a server without a service password must not start")
	}
}

// TestEmbeddedNeedsAStoreDir: without one, nats-server would leave a "jetstream" folder in the system
// temp dir behind.
func TestEmbeddedNeedsAStoreDir(t *testing.T) {
	t.Parallel()
	if _, err := StartEmbedded(EmbeddedConfig{Addr: "127.0.0.1:0", ServicePassword: "x"}); err == nil ||
		!strings.Contains(err.Error(), "store directory") {
		t.Fatalf("want a store directory error, got %v", err)
	}
}
