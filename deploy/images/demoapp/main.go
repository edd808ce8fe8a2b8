// Command demoapp is the tiny HTTP service the Docker-backed tests roll out: GET /version answers the
// version baked in at build time (-ldflags "-X main.version=v1"), GET /healthz answers 200 "ok" unless
// the app is told to fail. `demoapp healthcheck` probes /healthz on the local port and exits 0 or 1 (the
// image's Docker HEALTHCHECK, and a command a device-side check can run with docker exec).
//
// Environment:
//
//	DEMOAPP_ADDR  listen address (default ":8080")
//	DEMOAPP_FAIL  "exit": exit 1 at start; "healthz": /healthz answers 503; "none" or unset: healthy.
//	              The default is baked in at build time (-X main.defaultFail=healthz for the broken image).
package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

var (
	version     = "dev"
	defaultFail = "none"
)

func main() {
	addr := cmp.Or(os.Getenv("DEMOAPP_ADDR"), ":8080")
	if len(os.Args) > 1 && os.Args[1] == "healthcheck" {
		os.Exit(healthcheck(addr))
	}
	fail := cmp.Or(os.Getenv("DEMOAPP_FAIL"), defaultFail)
	switch fail {
	case "exit":
		fmt.Fprintf(os.Stderr, "demoapp %s: told to fail (DEMOAPP_FAIL=exit)\n", version)
		os.Exit(1)
	case "healthz", "none":
	default:
		fmt.Fprintf(os.Stderr, "demoapp %s: DEMOAPP_FAIL must be exit, healthz or none, not %q\n", version, fail)
		os.Exit(2)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /version", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, version)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if fail == "healthz" {
			http.Error(w, "failing (DEMOAPP_FAIL=healthz)", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	fmt.Fprintf(os.Stderr, "demoapp %s listening on %s (fail=%s)\n", version, addr, fail)
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintf(os.Stderr, "demoapp %s: serve %s: %v\n", version, addr, err)
		os.Exit(1)
	}
}

// healthcheck GETs /healthz on the local listener and returns the exit code.
func healthcheck(addr string) int {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "healthcheck: DEMOAPP_ADDR %q: %v\n", addr, err)
		return 1
	}
	if host == "" || strings.HasPrefix(host, "0.") || host == "::" {
		host = "127.0.0.1"
	}
	client := &http.Client{Timeout: 3 * time.Second}
	resp, err := client.Get("http://" + net.JoinHostPort(host, port) + "/healthz")
	if err != nil {
		fmt.Fprintf(os.Stderr, "healthcheck: %v\n", err)
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(os.Stderr, "healthcheck: /healthz answered %d\n", resp.StatusCode)
		return 1
	}
	return 0
}
