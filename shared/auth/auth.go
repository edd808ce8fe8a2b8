// Package auth authenticates operators: the bootstrap admin token from configuration and the scoped API
// tokens stored (hashed) in api_tokens. HTTP routes use Require; NATS control calls Authenticate directly,
// so both check tokens the same way.
package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/fleetshift/fleetshift/shared/apierr"
)

// Scope is what a token may do. Scopes are ordered: read < operate < admin; a token passes every check
// for its own scope and every lower one.
type Scope int

// Scopes.
const (
	ScopeNone Scope = iota
	// ScopeRead reads rollouts, devices, policies and events.
	ScopeRead
	// ScopeOperate also writes: targets, policies, devices, rollout control.
	ScopeOperate
	// ScopeAdmin also manages tokens and provisioning keys.
	ScopeAdmin
)

// ParseScope parses "read", "operate" or "admin".
func ParseScope(s string) (Scope, error) {
	switch s {
	case "read":
		return ScopeRead, nil
	case "operate":
		return ScopeOperate, nil
	case "admin":
		return ScopeAdmin, nil
	}
	return ScopeNone, fmt.Errorf("scope %q: want read, operate or admin", s)
}

// String returns the scope's name as stored and sent.
func (s Scope) String() string {
	switch s {
	case ScopeRead:
		return "read"
	case ScopeOperate:
		return "operate"
	case ScopeAdmin:
		return "admin"
	}
	return "none"
}

// MarshalJSON encodes the scope as its name.
func (s Scope) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// Allows reports whether a principal of scope s may do what needs scope need.
func (s Scope) Allows(need Scope) bool { return s >= need && need > ScopeNone }

// Principal is an authenticated operator.
type Principal struct {
	// TokenID is the api_tokens id, or BootstrapTokenID for the configured admin token.
	TokenID string `json:"token_id"`
	Name    string `json:"name"`
	Scope   Scope  `json:"scope"`
}

// Actor is how the principal is recorded on events ("token:<name>").
func (p Principal) Actor() string { return "token:" + p.Name }

// BootstrapTokenID is the TokenID of the configured admin token.
const BootstrapTokenID = "bootstrap"

// Errors Authenticate returns, wrapping apierr sentinels so they map to 401 / 403.
var (
	ErrNoToken      = apierr.New(apierr.ErrUnauthorized, "unauthorized", "missing bearer token")
	ErrUnknownToken = apierr.New(apierr.ErrUnauthorized, "unauthorized", "unknown or revoked token")
)

// DefaultCacheTTL bounds how long a token check is reused: a revocation on another replica takes effect
// within it (on this replica, at once).
const DefaultCacheTTL = time.Second

// maxCacheEntries caps the cache so random tokens cannot grow it without bound.
const maxCacheEntries = 100_000

type cacheEntry struct {
	p       Principal
	ok      bool
	expires time.Time
}

// Operators checks operator tokens. It is safe for concurrent use.
type Operators struct {
	pool      *pgxpool.Pool
	bootstrap [32]byte
	hasBoot   bool
	log       zerolog.Logger
	ttl       time.Duration

	mu    sync.Mutex
	cache map[[32]byte]cacheEntry
}

// NewOperators returns an authenticator over api_tokens in pool. bootstrapAdminToken (may be empty: then
// only stored tokens work) authenticates as admin.
func NewOperators(pool *pgxpool.Pool, bootstrapAdminToken string, log zerolog.Logger) *Operators {
	o := &Operators{pool: pool, log: log, ttl: DefaultCacheTTL, cache: map[[32]byte]cacheEntry{}}
	if bootstrapAdminToken != "" {
		o.bootstrap = sha256.Sum256([]byte(bootstrapAdminToken))
		o.hasBoot = true
	}
	return o
}

// Authenticate returns the principal token stands for. An empty, unknown or revoked token is an error
// wrapping apierr.ErrUnauthorized; a database failure wraps apierr.ErrUnavailable.
func (o *Operators) Authenticate(ctx context.Context, token string) (Principal, error) {
	if token == "" {
		return Principal{}, ErrNoToken
	}
	h := sha256.Sum256([]byte(token))
	if o.hasBoot && subtle.ConstantTimeCompare(h[:], o.bootstrap[:]) == 1 {
		return Principal{TokenID: BootstrapTokenID, Name: "admin", Scope: ScopeAdmin}, nil
	}
	now := time.Now()
	o.mu.Lock()
	e, hit := o.cache[h]
	o.mu.Unlock()
	if hit && now.Before(e.expires) {
		if !e.ok {
			return Principal{}, ErrUnknownToken
		}
		return e.p, nil
	}
	var p Principal
	var scope string
	err := o.pool.QueryRow(ctx, `UPDATE api_tokens SET last_used_at = now()
		WHERE token_hash = $1 AND revoked_at IS NULL RETURNING id::text, name, scope`, h[:]).Scan(&p.TokenID, &p.Name, &scope)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		o.remember(h, cacheEntry{expires: now.Add(o.ttl)})
		return Principal{}, ErrUnknownToken
	case err != nil:
		return Principal{}, fmt.Errorf("authenticate token: %w: %v", apierr.ErrUnavailable, err)
	}
	if p.Scope, err = ParseScope(scope); err != nil {
		return Principal{}, fmt.Errorf("authenticate token %s: %w", p.TokenID, err)
	}
	o.remember(h, cacheEntry{p: p, ok: true, expires: now.Add(o.ttl)})
	return p, nil
}

// ScopeOf authenticates token and returns its scope's name ("read", "operate", "admin"), in the shape
// natsauth.Config.Operators wants, so NATS connections are checked exactly like HTTP requests.
func (o *Operators) ScopeOf(ctx context.Context, token string) (string, error) {
	p, err := o.Authenticate(ctx, token)
	if err != nil {
		return "", err
	}
	return p.Scope.String(), nil
}

func (o *Operators) remember(h [32]byte, e cacheEntry) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.cache) >= maxCacheEntries {
		clear(o.cache)
	}
	o.cache[h] = e
}

// forget drops every cached result for token id (and every negative result, so a new token works at once).
func (o *Operators) forget(id string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for h, e := range o.cache {
		if !e.ok || e.p.TokenID == id {
			delete(o.cache, h)
		}
	}
}

// Token is a stored API token as listed (never its secret).
type Token struct {
	ID         string     `json:"id"`
	Name       string     `json:"name"`
	Scope      Scope      `json:"scope"`
	CreatedAt  time.Time  `json:"created_at"`
	LastUsedAt *time.Time `json:"last_used_at"`
	RevokedAt  *time.Time `json:"revoked_at"`
}

// CreateToken stores a new token of scope named name and returns it with its secret, which is shown
// only now: only its hash is kept.
func (o *Operators) CreateToken(ctx context.Context, name string, scope Scope) (Token, string, error) {
	name = strings.TrimSpace(name)
	if name == "" || len(name) > 200 {
		return Token{}, "", apierr.Invalid("name", "required, at most 200 characters")
	}
	if scope < ScopeRead || scope > ScopeAdmin {
		return Token{}, "", apierr.Invalid("scope", "want read, operate or admin")
	}
	secret, hash, err := NewKey()
	if err != nil {
		return Token{}, "", err
	}
	t := Token{Name: name, Scope: scope}
	if err := o.pool.QueryRow(ctx, `INSERT INTO api_tokens (name, scope, token_hash) VALUES ($1, $2, $3)
		RETURNING id::text, created_at`, name, scope.String(), hash).Scan(&t.ID, &t.CreatedAt); err != nil {
		return Token{}, "", fmt.Errorf("create token %q: %w", name, err)
	}
	o.forget(t.ID)
	return t, secret, nil
}

// ListTokens returns every stored token, newest first.
func (o *Operators) ListTokens(ctx context.Context) ([]Token, error) {
	rows, err := o.pool.Query(ctx, `SELECT id::text, name, scope, created_at, last_used_at, revoked_at
		FROM api_tokens ORDER BY created_at DESC, id`)
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Token, error) {
		var t Token
		var scope string
		if err := r.Scan(&t.ID, &t.Name, &scope, &t.CreatedAt, &t.LastUsedAt, &t.RevokedAt); err != nil {
			return t, err
		}
		t.Scope, _ = ParseScope(scope)
		return t, nil
	})
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	return out, nil
}

// RevokeToken revokes token id. It takes effect at once in this process and within DefaultCacheTTL in
// others. Revoking a revoked token is harmless; an unknown id wraps apierr.ErrNotFound.
func (o *Operators) RevokeToken(ctx context.Context, id string) error {
	if _, err := uuid.Parse(id); err != nil {
		return apierr.Invalid("id", "not a token id: %q", id)
	}
	tag, err := o.pool.Exec(ctx, `UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("revoke token %s: %w", id, err)
	}
	o.forget(id)
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("token %s: %w", id, apierr.ErrNotFound)
	}
	return nil
}

// NewKey returns a new random secret (32 random bytes, URL-safe base64 without padding) and the hash to
// store for it (HashKey).
func NewKey() (key string, hash []byte, err error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", nil, fmt.Errorf("generate key: %w", err)
	}
	key = base64.RawURLEncoding.EncodeToString(b)
	return key, HashKey(key), nil
}

// HashKey returns the SHA-256 of key: how device keys, provisioning keys and tokens are stored. Keys are
// 256-bit random secrets, so a fast hash is safe and keeps checks cheap on hot paths.
func HashKey(key string) []byte {
	h := sha256.Sum256([]byte(key))
	return h[:]
}
