package notify

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/auth"
)

// API serves the subscription endpoints under /api/v1/notifications. Creating and deleting need admin
// scope; reading needs read scope, but a token below admin sees each URL cut to its scheme and host
// (a webhook URL's path and query are often the receiver's credential, as with Slack's), also inside a
// delivery's last error. The secret is only ever in the create answer.
type API struct {
	Pool      *pgxpool.Pool
	Operators *auth.Operators
}

// Register mounts the routes on r.
func (a *API) Register(r fiber.Router) {
	admin := a.Operators.Require(auth.ScopeAdmin)
	read := a.Operators.Require(auth.ScopeRead)
	r.Post("/api/v1/notifications", admin, a.create)
	r.Get("/api/v1/notifications", read, a.list)
	r.Get("/api/v1/notifications/:id", read, a.get)
	r.Delete("/api/v1/notifications/:id", admin, a.remove)
	r.Get("/api/v1/notifications/:id/deliveries", read, a.deliveries)
}

// Subscription is a webhook subscription as the API shows it (the secret only in the create answer).
type Subscription struct {
	ID         string    `json:"id"`
	Name       string    `json:"name"`
	URL        string    `json:"url"`
	Format     string    `json:"format"`
	EventTypes []string  `json:"event_types"`
	CreatedBy  *string   `json:"created_by"`
	CreatedAt  time.Time `json:"created_at"`
	Secret     string    `json:"secret,omitempty"`
	// Delivery counts by status.
	Pending   int `json:"pending"`
	Delivered int `json:"delivered"`
	Failed    int `json:"failed"`
	// LatestDelivery is the newest delivery (nil before the first).
	LatestDelivery *LatestDelivery `json:"latest_delivery"`
}

// LatestDelivery is the newest delivery of a subscription, as the list shows it.
type LatestDelivery struct {
	ID             int64      `json:"id"`
	EventType      string     `json:"event_type"`
	Status         string     `json:"status"`
	Attempts       int        `json:"attempts"`
	LastStatusCode *int       `json:"last_status_code"`
	LastAttemptAt  *time.Time `json:"last_attempt_at"`
	CreatedAt      time.Time  `json:"created_at"`
}

type createRequest struct {
	Name       string   `json:"name"`
	URL        string   `json:"url"`
	Format     string   `json:"format"`
	EventTypes []string `json:"event_types"`
}

// validate checks and normalises a create request; every error names its field.
func (r *createRequest) validate() error {
	r.Name = strings.TrimSpace(r.Name)
	if r.Name == "" || len(r.Name) > 128 {
		return apierr.Invalid("name", "required, at most 128 characters")
	}
	if err := apierr.CheckText("name", r.Name); err != nil {
		return err
	}
	u, err := url.Parse(strings.TrimSpace(r.URL))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || len(r.URL) > 2048 {
		return apierr.Invalid("url", "want an absolute http:// or https:// URL")
	}
	r.URL = u.String()
	switch r.Format {
	case "":
		r.Format = "json"
	case "json", "slack":
	default:
		return apierr.Invalid("format", "want json or slack, got %q", r.Format)
	}
	if len(r.EventTypes) == 0 {
		r.EventTypes = Kinds()
	}
	var kinds []string
	for _, t := range r.EventTypes {
		k := strings.TrimSpace(t)
		if EventType(k) == "" {
			if kk := kindOf(k); kk != "" { // the full event type names the same kind
				k = kk
			} else {
				return apierr.Invalid("event_types", "unknown event type %q: want %s", t, strings.Join(Kinds(), ", "))
			}
		}
		if !slices.Contains(kinds, k) {
			kinds = append(kinds, k)
		}
	}
	r.EventTypes = kinds
	return nil
}

func (a *API) create(c *fiber.Ctx) error {
	var req createRequest
	if err := apierr.DecodeJSON(c.Body(), &req, true); err != nil {
		return err
	}
	if err := req.validate(); err != nil {
		return err
	}
	secret, err := newSecret()
	if err != nil {
		return err
	}
	var createdBy *string
	if p, ok := auth.PrincipalFrom(c); ok {
		actor := p.Actor()
		createdBy = &actor
	}
	s := Subscription{Name: req.Name, URL: req.URL, Format: req.Format, EventTypes: req.EventTypes, CreatedBy: createdBy, Secret: secret}
	err = a.Pool.QueryRow(c.UserContext(), `INSERT INTO notification_subscriptions (name, url, format, event_types, secret, created_by)
		VALUES ($1, $2, $3, $4, $5, $6) RETURNING id::text, created_at`,
		s.Name, s.URL, s.Format, s.EventTypes, secret, createdBy).Scan(&s.ID, &s.CreatedAt)
	if err != nil {
		return fmt.Errorf("create notification subscription: %w", err)
	}
	return c.Status(fiber.StatusCreated).JSON(s)
}

// subscriptionColumns and subscriptionFrom read a subscription with its delivery counts and its newest
// delivery (the subscription index serves both, newest first).
const subscriptionColumns = `s.id::text, s.name, s.url, s.format, s.event_types, s.created_by, s.created_at,
	(SELECT count(*) FROM notification_deliveries d WHERE d.subscription_id = s.id AND d.status = 'pending'),
	(SELECT count(*) FROM notification_deliveries d WHERE d.subscription_id = s.id AND d.status = 'delivered'),
	(SELECT count(*) FROM notification_deliveries d WHERE d.subscription_id = s.id AND d.status = 'failed'),
	l.id, l.event_type, l.status, l.attempts, l.last_status_code, l.last_attempt_at, l.created_at`

const subscriptionFrom = ` FROM notification_subscriptions s LEFT JOIN LATERAL (
		SELECT d.id, d.event_type, d.status, d.attempts, d.last_status_code, d.last_attempt_at, d.created_at
		FROM notification_deliveries d WHERE d.subscription_id = s.id ORDER BY d.id DESC LIMIT 1) l ON true`

func scanSubscription(r pgx.Row) (Subscription, error) {
	var s Subscription
	var l struct {
		id                 *int64
		typ, status        *string
		attempts, code     *int
		attemptAt, created *time.Time
	}
	err := r.Scan(&s.ID, &s.Name, &s.URL, &s.Format, &s.EventTypes, &s.CreatedBy, &s.CreatedAt, &s.Pending, &s.Delivered, &s.Failed,
		&l.id, &l.typ, &l.status, &l.attempts, &l.code, &l.attemptAt, &l.created)
	if err == nil && l.id != nil {
		s.LatestDelivery = &LatestDelivery{ID: *l.id, EventType: *l.typ, Status: *l.status, Attempts: *l.attempts,
			LastStatusCode: l.code, LastAttemptAt: l.attemptAt, CreatedAt: *l.created}
	}
	return s, err
}

// seesURLs reports whether the caller may see subscription URLs whole (admin scope).
func seesURLs(c *fiber.Ctx) bool {
	p, ok := auth.PrincipalFrom(c)
	return ok && p.Scope.Allows(auth.ScopeAdmin)
}

// RedactURL is raw cut to its scheme and host, followed by "/…" when it had more (path, query,
// fragment); user information is dropped. What a token below admin sees of a subscription's URL.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "…"
	}
	out := u.Scheme + "://" + u.Host
	if strings.Trim(u.EscapedPath(), "/") != "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		out += "/…"
	}
	return out
}

// redactError replaces the subscription's URL inside a delivery error (Go's HTTP client quotes the URL
// it failed to reach, with any password replaced by "***") with its redacted form.
func redactError(msg, raw string) string {
	red := RedactURL(raw)
	forms := []string{raw}
	if u, err := url.Parse(raw); err == nil {
		forms = append(forms, u.String(), u.Redacted())
		if pass, ok := u.User.Password(); ok { // net/http's own way of hiding it
			forms = append(forms, strings.Replace(u.String(), pass+"@", "***@", 1))
		}
	}
	for _, f := range forms {
		if f != "" {
			msg = strings.ReplaceAll(msg, f, red)
		}
	}
	return msg
}

func (a *API) list(c *fiber.Ctx) error {
	rows, err := a.Pool.Query(c.UserContext(), `SELECT `+subscriptionColumns+subscriptionFrom+` ORDER BY s.created_at, s.id`)
	if err != nil {
		return fmt.Errorf("list notification subscriptions: %w", err)
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Subscription, error) { return scanSubscription(r) })
	if err != nil {
		return fmt.Errorf("list notification subscriptions: %w", err)
	}
	if list == nil {
		list = []Subscription{}
	}
	if !seesURLs(c) {
		for i := range list {
			list[i].URL = RedactURL(list[i].URL)
		}
	}
	return c.JSON(fiber.Map{"notifications": list})
}

func idParam(c *fiber.Ctx) (string, error) {
	id := strings.Clone(c.Params("id"))
	if len(id) != 36 || strings.Trim(strings.ToLower(id), "0123456789abcdef-") != "" {
		return "", apierr.Invalid("id", "not a notification subscription id")
	}
	return id, nil
}

func notFound(id string) error {
	return apierr.New(apierr.ErrNotFound, "notification_not_found", "notification subscription %s not found", id)
}

func (a *API) get(c *fiber.Ctx) error {
	id, err := idParam(c)
	if err != nil {
		return err
	}
	s, err := scanSubscription(a.Pool.QueryRow(c.UserContext(), `SELECT `+subscriptionColumns+subscriptionFrom+` WHERE s.id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) || isBadUUID(err) {
		return notFound(id)
	}
	if err != nil {
		return fmt.Errorf("read notification subscription %s: %w", id, err)
	}
	if !seesURLs(c) {
		s.URL = RedactURL(s.URL)
	}
	return c.JSON(s)
}

func (a *API) remove(c *fiber.Ctx) error {
	id, err := idParam(c)
	if err != nil {
		return err
	}
	tag, err := a.Pool.Exec(c.UserContext(), `DELETE FROM notification_subscriptions WHERE id = $1`, id)
	if isBadUUID(err) {
		return notFound(id)
	}
	if err != nil {
		return fmt.Errorf("delete notification subscription %s: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return notFound(id)
	}
	return c.SendStatus(fiber.StatusNoContent)
}

// Delivery is one event's notification to one subscription.
type Delivery struct {
	ID             int64      `json:"id"`
	EventID        string     `json:"event_id"`
	EventType      string     `json:"event_type"`
	RolloutID      *string    `json:"rollout_id"`
	Status         string     `json:"status"`
	Attempts       int        `json:"attempts"`
	LastStatusCode *int       `json:"last_status_code"`
	LastError      *string    `json:"last_error"`
	NextAttemptAt  *time.Time `json:"next_attempt_at"`
	LastAttemptAt  *time.Time `json:"last_attempt_at"`
	DeliveredAt    *time.Time `json:"delivered_at"`
	CreatedAt      time.Time  `json:"created_at"`
}

// deliveries: GET /api/v1/notifications/:id/deliveries?status=&limit=, newest first.
func (a *API) deliveries(c *fiber.Ctx) error {
	id, err := idParam(c)
	if err != nil {
		return err
	}
	var status any
	if s := strings.TrimSpace(c.Query("status")); s != "" {
		if s != "pending" && s != "delivered" && s != "failed" {
			return apierr.Invalid("status", "want pending, delivered or failed")
		}
		status = s
	}
	limit := 100
	if l := c.Query("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > 500 {
			return apierr.Invalid("limit", "want an integer from 1 to 500")
		}
		limit = n
	}
	var subURL string
	err = a.Pool.QueryRow(c.UserContext(), `SELECT url FROM notification_subscriptions WHERE id = $1`, id).Scan(&subURL)
	if errors.Is(err, pgx.ErrNoRows) || isBadUUID(err) {
		return notFound(id)
	}
	if err != nil {
		return fmt.Errorf("read notification subscription %s: %w", id, err)
	}
	rows, err := a.Pool.Query(c.UserContext(), `SELECT id, event_id::text, event_type, rollout_id::text, status, attempts,
			last_status_code, last_error, CASE WHEN status = 'pending' THEN next_attempt_at END, last_attempt_at,
			delivered_at, created_at
		FROM notification_deliveries WHERE subscription_id = $1 AND ($2::text IS NULL OR status = $2)
		ORDER BY id DESC LIMIT $3`, id, status, limit)
	if err != nil {
		return fmt.Errorf("list deliveries of %s: %w", id, err)
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Delivery, error) {
		var d Delivery
		err := r.Scan(&d.ID, &d.EventID, &d.EventType, &d.RolloutID, &d.Status, &d.Attempts, &d.LastStatusCode,
			&d.LastError, &d.NextAttemptAt, &d.LastAttemptAt, &d.DeliveredAt, &d.CreatedAt)
		return d, err
	})
	if err != nil {
		return fmt.Errorf("list deliveries of %s: %w", id, err)
	}
	if list == nil {
		list = []Delivery{}
	}
	if !seesURLs(c) {
		for i := range list {
			if list[i].LastError != nil {
				e := redactError(*list[i].LastError, subURL)
				list[i].LastError = &e
			}
		}
	}
	return c.JSON(fiber.Map{"notification_id": id, "deliveries": list})
}

func isBadUUID(err error) bool {
	var pg *pgconn.PgError
	return errors.As(err, &pg) && pg.Code == "22P02"
}

func newSecret() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate notification secret: %w", err)
	}
	return hex.EncodeToString(b), nil
}
