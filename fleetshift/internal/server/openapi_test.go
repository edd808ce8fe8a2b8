package server

import (
	"context"
	"sort"
	"strings"
	"testing"

	"github.com/gofiber/fiber/v2"

	"github.com/fleetshift/fleetshift/shared/config"
	"github.com/fleetshift/fleetshift/shared/logging"
	"github.com/fleetshift/fleetshift/shared/pgtest"
)

// routesOf lists "METHOD /path" of every route registered on app, in OpenAPI path syntax.
func routesOf(app *fiber.App) []string {
	seen := map[string]bool{}
	for _, r := range app.GetRoutes(true) {
		if r.Method == fiber.MethodHead || r.Method == fiber.MethodOptions || r.Path == "/" {
			continue
		}
		segs := strings.Split(r.Path, "/")
		for i, s := range segs {
			if strings.HasPrefix(s, ":") {
				segs[i] = "{" + strings.TrimPrefix(s, ":") + "}"
			}
		}
		seen[strings.ToLower(r.Method)+" "+strings.Join(segs, "/")] = true
	}
	out := make([]string, 0, len(seen))
	for k := range seen {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func described() map[string]bool {
	m := map[string]bool{}
	for path, item := range OpenAPI()["paths"].(map[string]any) {
		for method := range item.(map[string]any) {
			m[method+" "+path] = true
		}
	}
	return m
}

// TestOpenAPIDescribesEveryRoute: every route the server registers is in the document, and every
// documented route exists.
func TestOpenAPIDescribesEveryRoute(t *testing.T) {
	t.Parallel()
	srv := startForTest(t)
	registered := routesOf(srv.app)
	doc := described()
	for _, r := range registered {
		if !doc[r] {
			t.Errorf("route %s is not described in openapi.json", r)
		}
		delete(doc, r)
	}
	for r := range doc {
		t.Errorf("openapi.json describes %s, which no handler serves", r)
	}
}

func startForTest(t *testing.T) *Server {
	t.Helper()
	db := pgtest.New(t)
	dir := t.TempDir()
	cfg, err := config.FromLookup(func(k string) (string, bool) {
		v, ok := map[string]string{"DATABASE_URL": db.URL, "FLEETSHIFT_HTTP_ADDR": "127.0.0.1:0",
			"FLEETSHIFT_NATS_ADDR": "127.0.0.1:0", "FLEETSHIFT_DATA_DIR": dir}[k]
		return v, ok
	})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := Start(context.Background(), Options{Config: cfg, Log: logging.Nop(), EmbedNATS: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	return srv
}
