// Package console serves fleetshift's web console at /ui and the few operator routes it needs beyond
// the rest of the API: who a token is (GET /api/v1/whoami), which images run where
// (GET /api/v1/images) and a live event feed (GET /api/v1/events/stream, Server-Sent Events fed from the
// EVENTS JetStream stream).
//
// The console itself is static HTML, CSS and JavaScript embedded in the binary; it talks to the
// operator HTTP API with the token the operator signs in with, exactly as any other client does, so
// it depends on the API's contract and on nothing inside the services.
package console

import (
	"cmp"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"mime"
	"path"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/auth"
	"github.com/fleetshift/fleetshift/streams"
)

//go:embed web
var webFS embed.FS

// Prefix is where the console is served.
const Prefix = "/ui"

// Config configures the console.
type Config struct {
	Pool      *pgxpool.Pool
	JS        jetstream.JetStream
	Subjects  streams.Subjects
	Operators *auth.Operators
	Log       zerolog.Logger
	// Heartbeat is how often an idle event stream sends a comment line (default 15 s), which also
	// detects a client that went away.
	Heartbeat time.Duration
}

// Console serves the web console and its routes.
type Console struct {
	cfg    Config
	assets fs.FS
}

// New validates cfg and returns the console.
func New(cfg Config) (*Console, error) {
	if cfg.Pool == nil || cfg.JS == nil || cfg.Operators == nil {
		return nil, errors.New("console: Pool, JS and Operators are required")
	}
	if cfg.Subjects.Prefix == "" {
		cfg.Subjects = streams.New("")
	}
	cfg.Heartbeat = cmp.Or(cfg.Heartbeat, 15*time.Second)
	assets, err := fs.Sub(webFS, "web")
	if err != nil {
		return nil, fmt.Errorf("console: open embedded assets: %w", err)
	}
	return &Console{cfg: cfg, assets: assets}, nil
}

// Register adds the console's API routes and the /ui pages to r.
func (c *Console) Register(r fiber.Router) {
	read := c.cfg.Operators.Require(auth.ScopeRead)
	r.Get("/api/v1/whoami", read, c.whoami)
	r.Get("/api/v1/images", read, c.images)
	r.Get("/api/v1/events/stream", c.stream)
	r.Use(Prefix, c.static)
}

// whoami: GET /api/v1/whoami -> {"scope", "name"} of the presented token.
func (c *Console) whoami(ctx *fiber.Ctx) error {
	p, ok := auth.PrincipalFrom(ctx)
	if !ok {
		return auth.ErrNoToken
	}
	return ctx.JSON(fiber.Map{"scope": p.Scope.String(), "name": p.Name})
}

// imageCount is how many devices of one fleet have one image in their target.
type imageCount struct {
	Repository string  `json:"repository"`
	Tag        string  `json:"tag"`
	FleetID    *string `json:"fleet_id"`
	Devices    int     `json:"devices"`
	Online     int     `json:"online"`
}

// images: GET /api/v1/images?fleet_id=&tag= -> {"images": [{repository, tag, fleet_id, devices, online}]},
// the image versions in the (non-revoked) devices' targets, counted per fleet; tag filters devices by
// their tags (all must match, as in GET /api/v1/devices).
func (c *Console) images(ctx *fiber.Ctx) error {
	var fleet any
	if f := strings.TrimSpace(ctx.Query("fleet_id")); f != "" {
		fleet = f
	}
	var tags []string
	for _, v := range ctx.Context().QueryArgs().PeekMulti("tag") {
		if t := strings.TrimSpace(string(v)); t != "" {
			tags = append(tags, t)
		}
	}
	rows, err := c.cfg.Pool.Query(ctx.UserContext(), `SELECT i.repository, i.tag, d.fleet_id,
			count(DISTINCT d.uuid)::int, count(DISTINCT d.uuid) FILTER (WHERE d.is_online)::int
		FROM device_images i JOIN devices d ON d.uuid = i.device_uuid
		WHERE d.revoked_at IS NULL AND ($1::text IS NULL OR d.fleet_id = $1) AND ($2::text[] IS NULL OR d.tags @> $2)
		GROUP BY i.repository, i.tag, d.fleet_id
		ORDER BY i.repository, i.tag, d.fleet_id NULLS FIRST LIMIT 1000`, fleet, tags)
	if err != nil {
		return fmt.Errorf("count images by fleet: %w", err)
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (imageCount, error) {
		var ic imageCount
		err := r.Scan(&ic.Repository, &ic.Tag, &ic.FleetID, &ic.Devices, &ic.Online)
		return ic, err
	})
	if err != nil {
		return fmt.Errorf("count images by fleet: %w", err)
	}
	if list == nil {
		list = []imageCount{}
	}
	return ctx.JSON(fiber.Map{"images": list})
}

// static serves the embedded pages: /ui redirects to /ui/, /ui/ is index.html, anything else is a file
// or a 404.
func (c *Console) static(ctx *fiber.Ctx) error {
	if ctx.Method() != fiber.MethodGet && ctx.Method() != fiber.MethodHead {
		return fiber.ErrMethodNotAllowed
	}
	p := strings.TrimPrefix(ctx.Path(), Prefix)
	if p == "" {
		return ctx.Redirect(Prefix+"/", fiber.StatusMovedPermanently)
	}
	name := strings.TrimPrefix(path.Clean(p), "/")
	if name == "" {
		name = "index.html"
	}
	body, err := fs.ReadFile(c.assets, name)
	if err != nil {
		return apierr.New(apierr.ErrNotFound, "not_found", "no console page %s", p)
	}
	ctype := mime.TypeByExtension(path.Ext(name))
	if ctype == "" {
		ctype = "application/octet-stream"
	}
	ctx.Set(fiber.HeaderContentType, ctype)
	ctx.Set(fiber.HeaderCacheControl, "no-cache")
	ctx.Set("X-Content-Type-Options", "nosniff")
	ctx.Set("Referrer-Policy", "no-referrer")
	ctx.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "+
		"img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
	return ctx.Send(body)
}
