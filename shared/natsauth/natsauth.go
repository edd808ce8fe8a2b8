// Package natsauth admits clients to fleetshift's NATS through nats-server's auth callout: the server
// forwards every connection that is not one of fleetshift's own service users to $SYS.REQ.USER.AUTH,
// and this service answers with a signed user JWT carrying exactly the permissions that client may have.
//
// Devices connect with user = their uuid and password = their device key, and may only subscribe to
// their own target subject, read their own latest target from JetStream (direct get), publish their own
// state, and receive replies on their own inbox prefix (_INBOX_<uuid>.). Operators connect with an API
// token as the connection token and get the control and event subjects their scope allows.
package natsauth

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"github.com/rs/zerolog"

	"github.com/fleetshift/fleetshift/streams"
)

// RequestSubject is where nats-server sends authorization requests.
const RequestSubject = "$SYS.REQ.USER.AUTH"

// DeviceInboxPrefix is the inbox prefix a device must use (nats.CustomInboxPrefix) for request replies,
// e.g. for reading its latest target with a JetStream direct get.
func DeviceInboxPrefix(uuid string) string { return "_INBOX_" + uuid }

// NewIssuer creates an account key pair that signs user JWTs; keep its seed secret.
func NewIssuer() (seed string, err error) {
	kp, err := nkeys.CreateAccount()
	if err != nil {
		return "", fmt.Errorf("create nats issuer key: %w", err)
	}
	b, err := kp.Seed()
	if err != nil {
		return "", fmt.Errorf("read nats issuer seed: %w", err)
	}
	return string(b), nil
}

// Configure returns an embedded-server option hook enabling auth callout with the issuer whose seed is
// given; authUsers (fleetshift's service users) bypass the callout.
func Configure(issuerSeed string, authUsers ...string) (func(*server.Options) error, error) {
	kp, err := nkeys.FromSeed([]byte(issuerSeed))
	if err != nil {
		return nil, fmt.Errorf("nats issuer seed: %w", err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return nil, fmt.Errorf("nats issuer key: %w", err)
	}
	return func(o *server.Options) error {
		o.AuthCallout = &server.AuthCallout{Issuer: pub, AuthUsers: authUsers}
		return nil
	}, nil
}

// Grant is what a client is allowed.
type Grant struct {
	Name string
	Pub  []string
	Sub  []string
	// MaxPayload bounds each message the connection publishes (0: the server's max_payload); the
	// server closes a connection that publishes more.
	MaxPayload int64
}

// OperatorAuthenticator checks an operator token and returns its scope ("read", "operate", "admin").
type OperatorAuthenticator func(ctx context.Context, token string) (scope string, err error)

// Config configures the callout service.
type Config struct {
	NC         *nats.Conn
	Pool       *pgxpool.Pool
	Subjects   streams.Subjects
	IssuerSeed string
	Log        zerolog.Logger
	// Operators authenticates connection tokens; nil refuses token connections.
	Operators OperatorAuthenticator
	// Server, when the NATS server is embedded, lets Revoke disconnect a device at once.
	Server *server.Server
	// CacheTTL bounds how long a positive device-key check is reused (default 30s).
	CacheTTL time.Duration
	// TokenTTL is the lifetime of issued user JWTs (default 1h; clients reconnect and are re-checked).
	TokenTTL time.Duration
	// Workers answer requests concurrently (default 32): each first connect of a device costs a query.
	Workers int
	// Capacity is how many requests may wait for a worker (default 4,096). Beyond it a request is refused
	// at once (the client retries after its reconnect wait, with jitter) rather than left to time out in
	// the server, so a reconnect storm is told to back off instead of piling up.
	Capacity int
}

// Service answers authorization requests.
type Service struct {
	cfg    Config
	issuer nkeys.KeyPair
	mu     sync.Mutex
	cache  map[string]cacheEntry // device uuid -> key hash
	ready  chan struct{}
	busy   atomic.Int64
}

// Ready is closed once Run answers requests.
func (s *Service) Ready() <-chan struct{} { return s.ready }

type cacheEntry struct {
	hash    [32]byte
	revoked bool
	expires time.Time
}

// New returns the callout service.
func New(cfg Config) (*Service, error) {
	if cfg.NC == nil || cfg.Pool == nil {
		return nil, errors.New("natsauth: NC and Pool are required")
	}
	kp, err := nkeys.FromSeed([]byte(cfg.IssuerSeed))
	if err != nil {
		return nil, fmt.Errorf("natsauth: issuer seed: %w", err)
	}
	if cfg.CacheTTL == 0 {
		cfg.CacheTTL = 30 * time.Second
	}
	if cfg.TokenTTL == 0 {
		cfg.TokenTTL = time.Hour
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 32
	}
	if cfg.Capacity <= 0 {
		cfg.Capacity = 4096
	}
	return &Service{cfg: cfg, issuer: kp, cache: map[string]cacheEntry{}, ready: make(chan struct{})}, nil
}

// Run answers requests until ctx ends. It also listens for device revocations and disconnects the
// revoked device when the server is embedded.
func (s *Service) Run(ctx context.Context) error {
	// A reconnect storm (thousands of devices at once) must neither drop requests nor answer them one
	// by one: requests queue in a bounded buffer and a bounded pool answers them concurrently; a request
	// finding the buffer full is refused at once ("server busy"), so its client backs off and retries.
	work := make(chan *nats.Msg, s.cfg.Capacity)
	sub, err := s.cfg.NC.QueueSubscribe(RequestSubject, "fleetshift-auth", func(m *nats.Msg) {
		select {
		case work <- m:
		default:
			s.busy.Add(1)
			_ = m.Respond(s.refuse(m.Data, errBusy))
		}
	})
	if err == nil {
		err = sub.SetPendingLimits(-1, -1) // the bounded buffer above is the limit, not the subscription's
	}
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", RequestSubject, err)
	}
	var wg sync.WaitGroup
	for range s.cfg.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for m := range work {
				reqCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
				_ = m.Respond(s.handle(reqCtx, m.Data))
				cancel()
			}
		}()
	}
	defer func() { close(work); wg.Wait() }()
	revoked, err := s.cfg.NC.Subscribe(s.cfg.Subjects.DeviceRevoked(), func(m *nats.Msg) {
		s.Revoke(string(m.Data))
	})
	if err != nil {
		_ = sub.Unsubscribe()
		return fmt.Errorf("subscribe device revocations: %w", err)
	}
	if err := s.cfg.NC.Flush(); err != nil { // the server knows the subscriptions before Ready
		_ = sub.Unsubscribe()
		return fmt.Errorf("subscribe %s: %w", RequestSubject, err)
	}
	close(s.ready)
	<-ctx.Done()
	_ = revoked.Unsubscribe()
	return sub.Unsubscribe()
}

// Revoke refuses the device from now on (until it is looked up again and found valid in PostgreSQL)
// and, on an embedded server, closes its open connections. Callers revoke in PostgreSQL first.
func (s *Service) Revoke(uuid string) {
	s.mu.Lock()
	s.cache[uuid] = cacheEntry{revoked: true, expires: time.Now().Add(s.cfg.CacheTTL)}
	s.mu.Unlock()
	if s.cfg.Server == nil || uuid == "" {
		return
	}
	conns, err := s.cfg.Server.Connz(&server.ConnzOptions{User: uuid, Limit: 1024})
	if err != nil {
		return
	}
	for _, c := range conns.Conns {
		_ = s.cfg.Server.DisconnectClientByID(c.Cid)
	}
}

// Busy is how many requests were refused because Capacity requests were already waiting.
func (s *Service) Busy() int64 { return s.busy.Load() }

// refuse answers a request with an error, without looking at its credentials.
func (s *Service) refuse(data []byte, reason error) []byte {
	req, err := jwt.DecodeAuthorizationRequestClaims(string(data))
	if err != nil {
		return nil
	}
	resp := jwt.NewAuthorizationResponseClaims(req.UserNkey)
	resp.Audience = req.Server.ID
	resp.Error = reason.Error()
	out, err := resp.Encode(s.issuer)
	if err != nil {
		return nil
	}
	return []byte(out)
}

func (s *Service) handle(ctx context.Context, data []byte) []byte {
	req, err := jwt.DecodeAuthorizationRequestClaims(string(data))
	if err != nil {
		s.cfg.Log.Warn().Err(err).Msg("nats auth: undecodable request")
		return nil
	}
	grant, err := s.authorize(ctx, req.ConnectOptions)
	resp := jwt.NewAuthorizationResponseClaims(req.UserNkey)
	resp.Audience = req.Server.ID
	if err != nil {
		resp.Error = err.Error()
		s.cfg.Log.Debug().Str("user", req.ConnectOptions.Username).Err(err).Msg("nats auth: refused")
	} else {
		uc := jwt.NewUserClaims(req.UserNkey)
		uc.Name = grant.Name
		uc.Audience = "$G" // non-operator mode: the global account
		uc.Expires = time.Now().Add(s.cfg.TokenTTL).Unix()
		uc.Pub.Allow.Add(grant.Pub...)
		uc.Sub.Allow.Add(grant.Sub...)
		if grant.MaxPayload > 0 {
			uc.Limits.Payload = grant.MaxPayload
		}
		ujwt, err := uc.Encode(s.issuer)
		if err != nil {
			resp.Error = "internal error"
		} else {
			resp.Jwt = ujwt
		}
	}
	out, err := resp.Encode(s.issuer)
	if err != nil {
		s.cfg.Log.Error().Err(err).Msg("nats auth: encode response")
		return nil
	}
	return []byte(out)
}

// errDenied is the one answer a refused client gets, whatever the reason.
var errDenied = errors.New("authorization violation")

// errBusy refuses a request beyond Capacity.
var errBusy = errors.New("server busy: retry later")

func (s *Service) authorize(ctx context.Context, o jwt.ConnectOptions) (Grant, error) {
	switch {
	case o.Token != "" && o.Username == "":
		if s.cfg.Operators == nil {
			return Grant{}, errDenied
		}
		scope, err := s.cfg.Operators(ctx, o.Token)
		if err != nil {
			return Grant{}, errDenied
		}
		return s.operatorGrant(scope), nil
	case o.Username != "" && o.Password != "":
		if err := s.checkDevice(ctx, o.Username, o.Password); err != nil {
			return Grant{}, err
		}
		return s.DeviceGrant(o.Username), nil
	default:
		return Grant{}, errDenied
	}
}

// DeviceGrant is everything device uuid may do.
func (s *Service) DeviceGrant(uuid string) Grant {
	subj := s.cfg.Subjects
	target := subj.DeviceTarget(uuid)
	return Grant{
		Name: uuid, // the server reports it as the authorized user; Revoke finds connections by it
		Pub: []string{
			subj.DeviceState(uuid),
			"$JS.API.DIRECT.GET." + subj.TargetsStream() + "." + target,
		},
		Sub: []string{target, DeviceInboxPrefix(uuid) + ".>"},
		// A report is at most what the HTTP report route accepts; the REPORTS stream refuses more too.
		MaxPayload: streams.MaxReportBytes,
	}
}

func (s *Service) operatorGrant(scope string) Grant {
	subj := s.cfg.Subjects
	events := subj.EventsStream()
	g := Grant{
		Name: "operator (" + scope + ")",
		Pub: []string{
			"$JS.API.INFO",
			"$JS.API.STREAM.INFO." + events,
			"$JS.API.CONSUMER.CREATE." + events + ".>",
			"$JS.API.CONSUMER.CREATE." + events,
			"$JS.API.CONSUMER.MSG.NEXT." + events + ".>",
			"$JS.API.CONSUMER.DELETE." + events + ".>",
			"$JS.API.CONSUMER.INFO." + events + ".>",
			"$JS.ACK." + events + ".>",
			"$JS.FC.>",
		},
		Sub: []string{"_INBOX.>", subj.EventsAll()},
	}
	if scope == "operate" || scope == "admin" {
		g.Pub = append(g.Pub, subj.ControlAll())
	}
	return g
}

func (s *Service) checkDevice(ctx context.Context, uuid, key string) error {
	if strings.ContainsAny(uuid, ".*> \t") {
		return errDenied
	}
	presented := sha256.Sum256([]byte(key))
	s.mu.Lock()
	e, ok := s.cache[uuid]
	s.mu.Unlock()
	if ok && time.Now().Before(e.expires) {
		if e.revoked {
			return errDenied
		}
		if subtle.ConstantTimeCompare(e.hash[:], presented[:]) == 1 {
			return nil
		}
		return errDenied
	}
	var hash []byte
	err := s.cfg.Pool.QueryRow(ctx, `SELECT api_key_hash FROM devices WHERE uuid = $1 AND revoked_at IS NULL`, uuid).Scan(&hash)
	if errors.Is(err, pgx.ErrNoRows) {
		return errDenied
	}
	if err != nil {
		s.cfg.Log.Warn().Err(err).Msg("nats auth: device lookup failed")
		return errors.New("temporarily unavailable")
	}
	if subtle.ConstantTimeCompare(hash, presented[:]) != 1 {
		return errDenied
	}
	var stored [32]byte
	copy(stored[:], hash)
	s.mu.Lock()
	s.cache[uuid] = cacheEntry{hash: stored, expires: time.Now().Add(s.cfg.CacheTTL)}
	s.mu.Unlock()
	return nil
}
