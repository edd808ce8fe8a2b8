package server

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fleetshift/fleetshift/shared/config"
	"github.com/fleetshift/fleetshift/shared/logging"
	"github.com/fleetshift/fleetshift/shared/pgtest"
)

// lockedBuffer is a bytes.Buffer many goroutines may log to.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestEveryLogLineNamesOneComponent: the wiring names each service's logger once; no line carries two
// component fields (JSON with a duplicate key), and the rollout control responder is "control".
func TestEveryLogLineNamesOneComponent(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	cfg, err := config.FromLookup(func(k string) (string, bool) {
		v, ok := map[string]string{"DATABASE_URL": db.URL, "FLEETSHIFT_HTTP_ADDR": "127.0.0.1:0",
			"FLEETSHIFT_NATS_ADDR": "127.0.0.1:0", "FLEETSHIFT_DATA_DIR": t.TempDir()}[k]
		return v, ok
	})
	require.NoError(t, err)
	var buf lockedBuffer
	srv, err := Start(context.Background(), Options{Config: cfg, Log: logging.New(&buf, "debug", "json"), EmbedNATS: true})
	require.NoError(t, err)
	srv.Shutdown()

	components := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		require.LessOrEqual(t, strings.Count(line, `"component":`), 1, "log line names its component more than once: %s", line)
		var entry struct {
			Component string `json:"component"`
		}
		require.NoError(t, json.Unmarshal([]byte(line), &entry), line)
		components[entry.Component] = true
	}
	require.True(t, components["control"], "the control responder logs as control; saw %v", components)
}
