package health_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/fleetshift/fleetshift/agent/health"
	"github.com/fleetshift/fleetshift/agent/wire"
)

func run(t *testing.T, doc string, probe health.ContainerProbe) health.Result {
	t.Helper()
	c, err := health.Parse(json.RawMessage(doc))
	if err != nil {
		t.Fatalf("parse %s: %v", doc, err)
	}
	return health.Run(context.Background(), c, probe)
}

func expect(t *testing.T, r health.Result, status string) {
	t.Helper()
	if r.Status != status {
		t.Fatalf("result %+v, want %s", r, status)
	}
}

func TestHTTP(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			fmt.Fprint(w, `{"status":"all good"}`)
		case "/teapot":
			w.WriteHeader(http.StatusTeapot)
			fmt.Fprint(w, "short and stout")
		default:
			http.Error(w, "boom", http.StatusInternalServerError)
		}
	}))
	t.Cleanup(srv.Close)
	fast := `"interval_seconds":0.01,"retries":2`
	expect(t, run(t, `{"type":"http","url":"`+srv.URL+`/ok",`+fast+`}`, nil), wire.Healthy)
	expect(t, run(t, `{"type":"http","url":"`+srv.URL+`/ok","expected_status":200,"body_contains":"all good",`+fast+`}`, nil), wire.Healthy)
	expect(t, run(t, `{"type":"http","url":"`+srv.URL+`/teapot","expected_status":418,`+fast+`}`, nil), wire.Healthy)
	expect(t, run(t, `{"type":"http","url":"`+srv.URL+`/ok","body_contains":"degraded",`+fast+`}`, nil), wire.Unhealthy)
	expect(t, run(t, `{"type":"http","url":"`+srv.URL+`/broken",`+fast+`}`, nil), wire.Unhealthy)
	expect(t, run(t, `{"type":"http","url":"`+srv.URL+`/teapot","expected_status":200,`+fast+`}`, nil), wire.Unhealthy)
	r := run(t, `{"type":"http","url":"`+srv.URL+`/broken",`+fast+`}`, nil)
	if r.Attempts != 2 || !strings.Contains(r.Detail, "500") {
		t.Fatalf("failing check: %+v, want 2 attempts and the status in its detail", r)
	}
}

func TestTCP(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	expect(t, run(t, `{"type":"tcp","address":"`+l.Addr().String()+`","interval_seconds":0.01}`, nil), wire.Healthy)
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := closed.Addr().String()
	closed.Close()
	expect(t, run(t, `{"type":"tcp","address":"`+addr+`","retries":2,"interval_seconds":0.01}`, nil), wire.Unhealthy)
}

func TestCommand(t *testing.T) {
	t.Parallel()
	expect(t, run(t, `{"type":"command","command":["true"]}`, nil), wire.Healthy)
	expect(t, run(t, `{"type":"command","command":["sh","-c","exit 0"]}`, nil), wire.Healthy)
	expect(t, run(t, `{"type":"command","command":["false"],"retries":2,"interval_seconds":0.01}`, nil), wire.Unhealthy)
	expect(t, run(t, `{"type":"command","command":["/nonexistent/check"],"retries":1}`, nil), wire.Unhealthy)
}

func TestContainer(t *testing.T) {
	t.Parallel()
	probe := func(status, h string, err error) health.ContainerProbe {
		return func(context.Context) (string, string, error) { return status, h, err }
	}
	fast := `{"type":"container","retries":2,"interval_seconds":0.01}`
	expect(t, run(t, fast, probe("running", "", nil)), wire.Healthy)
	expect(t, run(t, fast, probe("running", "healthy", nil)), wire.Healthy)
	expect(t, run(t, fast, probe("running", "unhealthy", nil)), wire.Unhealthy)
	expect(t, run(t, fast, probe("running", "starting", nil)), wire.Unhealthy)
	expect(t, run(t, fast, probe("exited", "", nil)), wire.Unhealthy)
	expect(t, run(t, fast, probe("", "", errors.New("docker gone"))), wire.Unhealthy)

	// Docker health goes from starting to healthy within the retries: the check passes.
	calls := 0
	becomesHealthy := func(context.Context) (string, string, error) {
		calls++
		if calls < 3 {
			return "running", "starting", nil
		}
		return "running", "healthy", nil
	}
	r := run(t, `{"type":"container","retries":5,"interval_seconds":0.01}`, becomesHealthy)
	if r.Status != wire.Healthy || r.Attempts != 3 {
		t.Fatalf("result %+v, want healthy on attempt 3", r)
	}
}

func TestDeadlineEndsTheCheck(t *testing.T) {
	t.Parallel()
	// Many retries, long interval, short deadline: the deadline decides.
	r := run(t, `{"type":"command","command":["false"],"retries":100,"interval_seconds":60,"health_check_timeout_seconds":0.1}`, nil)
	if r.Status != wire.Unhealthy || r.Attempts != 1 || !strings.Contains(r.Detail, "deadline") {
		t.Fatalf("result %+v, want unhealthy after the deadline on attempt 1", r)
	}
}

func TestParseRejectsBadDocuments(t *testing.T) {
	t.Parallel()
	for _, doc := range []string{`{"type":"http"}`, `{"type":"tcp"}`, `{"type":"command"}`, `{"type":"smoke"}`, `[]`} {
		if _, err := health.Parse(json.RawMessage(doc)); err == nil {
			t.Errorf("Parse(%s) accepted", doc)
		}
	}
	c, err := health.Parse(json.RawMessage(`{"url":"http://x"}`))
	if err != nil || c.Type != health.TypeHTTP || c.Retries != 3 || c.IntervalSeconds != 5 || c.DeadlineSeconds != 300 {
		t.Fatalf("defaults: %+v %v", c, err)
	}
}
