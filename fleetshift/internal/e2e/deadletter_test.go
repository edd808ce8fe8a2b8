package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fleetshift/fleetshift/shared/wait"
)

// TestDeadLetterMetric: a report that can never be applied, published to a running server, is counted
// in /metrics as fleetshift_deadletter_total by consumer and reason, and lands in the dead-letter stream.
func TestDeadLetterMetric(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start()
	ctx := context.Background()
	if _, err := e.srv.JS.Publish(ctx, e.srv.Subjects.DeviceState("dl-1"), []byte(`{"dl-1":`)); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 20*time.Second, func() error {
		body := string(e.call("GET", "/metrics", nil, nil).body)
		for _, want := range []string{
			`fleetshift_deadletter_total{consumer="healthwatch",reason="decode"} 1`,
			`fleetshift_stream_messages_total{stream="FLEET_DEADLETTER"} 1`,
		} {
			if !strings.Contains(body, want) {
				return fmt.Errorf("/metrics lacks %s", want)
			}
		}
		return nil
	})
	st, err := e.srv.JS.Stream(ctx, e.srv.Subjects.DeadLetterStream())
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetLastMsgForSubject(ctx, e.srv.Subjects.DeadLetter(e.srv.Subjects.ReportsStream()))
	if err != nil {
		t.Fatal(err)
	}
	if string(m.Data) != `{"dl-1":` {
		t.Fatalf("dead letter holds %q", m.Data)
	}
}
