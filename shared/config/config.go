// Package config reads fleetshift's configuration from the environment (docs/contract.md, "Configuration").
package config

import (
	"cmp"
	"fmt"
	"os"
	"strconv"
	"time"
)

// Config is the process configuration. Zero values mean "use the default" where a default exists.
type Config struct {
	// DatabaseURL is the PostgreSQL connection string (DATABASE_URL).
	DatabaseURL string
	// DefaultDatabaseURL is where serve looks for PostgreSQL when DATABASE_URL is unset
	// (FLEETSHIFT_DEFAULT_DATABASE_URL, default the local server's fleetshift database); when nothing
	// answers there, serve runs a cluster of its own under DataDir.
	DefaultDatabaseURL string
	// PostgresBin is the directory with initdb and pg_ctl for serve's own cluster (FLEETSHIFT_POSTGRES_BIN);
	// empty means PATH, then the newest /usr/lib/postgresql/*/bin.
	PostgresBin string
	// NATSURL is an external NATS server or cluster (NATS_URL); empty means serve embeds one.
	NATSURL string
	// NATSCredentials authenticates services against an external NATS (NATS_CREDS, NATS_USER/NATS_PASSWORD, NATS_TOKEN).
	NATSUser, NATSPassword, NATSToken, NATSCreds string
	// NATSSystemUser and NATSSystemPassword are a user of an external NATS cluster's system account
	// (FLEETSHIFT_NATS_SYSTEM_USER, FLEETSHIFT_NATS_SYSTEM_PASSWORD; the password defaults to
	// NATS_PASSWORD): healthwatch follows the server's connect and disconnect advisories through it, so a
	// device whose connection closes is offline at once. Unset: offline by missed heartbeats only. The
	// embedded server has its own system user and ignores these.
	NATSSystemUser, NATSSystemPassword string
	// NATSIssuerSeed is the account seed signing device/operator NATS credentials through the auth
	// callout (FLEETSHIFT_NATS_ISSUER_SEED); generated into the data dir for the embedded server. With an
	// external cluster, configure its auth_callout issuer with the matching public key.
	NATSIssuerSeed string
	// HTTPAddr is the HTTP listen address (FLEETSHIFT_HTTP_ADDR, default :3001).
	HTTPAddr string
	// NATSAddr is the embedded NATS listen address (FLEETSHIFT_NATS_ADDR, default 127.0.0.1:4222; port 0 picks one).
	NATSAddr string
	// PublicNATSURL is the NATS URL handed to devices at registration (FLEETSHIFT_PUBLIC_NATS_URL);
	// empty means the embedded server's client URL or NATSURL.
	PublicNATSURL string
	// DataDir holds JetStream data and generated secrets (FLEETSHIFT_DATA_DIR, default ./.data).
	DataDir string
	// AdminToken is the bootstrap admin bearer token (FLEETSHIFT_ADMIN_TOKEN); generated when empty.
	AdminToken string
	// WebhookToken is the registries' shared token (FLEETSHIFT_WEBHOOK_TOKEN); generated when empty.
	WebhookToken string
	// WebhookSecret is the HMAC-SHA256 secret for X-Hub-Signature-256 (DOCKER_WEBHOOK_SECRET).
	WebhookSecret string
	// SubjectPrefix is the NATS subject prefix (FLEETSHIFT_SUBJECT_PREFIX, default "fleet").
	SubjectPrefix string
	// StreamReplicas is the JetStream replica count (FLEETSHIFT_STREAM_REPLICAS, default 1).
	StreamReplicas int
	// LogLevel is the zerolog level (FLEETSHIFT_LOG_LEVEL, default info).
	LogLevel string
	// LogFormat is "json" or "console" (FLEETSHIFT_LOG_FORMAT; default console on a terminal).
	LogFormat string
	// ShutdownTimeout bounds graceful shutdown (FLEETSHIFT_SHUTDOWN_TIMEOUT, default 15s).
	ShutdownTimeout time.Duration
	// HeartbeatSeconds is the report period devices are expected to keep (FLEETSHIFT_HEARTBEAT_SECONDS,
	// default 30); a device is offline after OfflineAfterMissed heartbeats without a report
	// (FLEETSHIFT_OFFLINE_AFTER_MISSED, default 3).
	HeartbeatSeconds, OfflineAfterMissed int
}

// FromEnv reads the configuration from the process environment.
func FromEnv() (Config, error) {
	return FromLookup(os.LookupEnv)
}

// FromLookup reads the configuration through lookup, so tests can supply their own environment.
func FromLookup(lookup func(string) (string, bool)) (Config, error) {
	get := func(k string) string { v, _ := lookup(k); return v }
	c := Config{
		DatabaseURL:        get("DATABASE_URL"),
		DefaultDatabaseURL: get("FLEETSHIFT_DEFAULT_DATABASE_URL"),
		PostgresBin:        get("FLEETSHIFT_POSTGRES_BIN"),
		NATSURL:            get("NATS_URL"),
		NATSUser:           get("NATS_USER"),
		NATSPassword:       get("NATS_PASSWORD"),
		NATSToken:          get("NATS_TOKEN"),
		NATSCreds:          get("NATS_CREDS"),
		NATSIssuerSeed:     get("FLEETSHIFT_NATS_ISSUER_SEED"),
		HTTPAddr:           cmp.Or(get("FLEETSHIFT_HTTP_ADDR"), ":3001"),
		NATSAddr:           cmp.Or(get("FLEETSHIFT_NATS_ADDR"), "127.0.0.1:4222"),
		PublicNATSURL:      get("FLEETSHIFT_PUBLIC_NATS_URL"),
		NATSSystemUser:     get("FLEETSHIFT_NATS_SYSTEM_USER"),
		NATSSystemPassword: cmp.Or(get("FLEETSHIFT_NATS_SYSTEM_PASSWORD"), get("NATS_PASSWORD")),
		DataDir:            cmp.Or(get("FLEETSHIFT_DATA_DIR"), ".data"),
		AdminToken:         get("FLEETSHIFT_ADMIN_TOKEN"),
		WebhookToken:       get("FLEETSHIFT_WEBHOOK_TOKEN"),
		WebhookSecret:      get("DOCKER_WEBHOOK_SECRET"),
		SubjectPrefix:      cmp.Or(get("FLEETSHIFT_SUBJECT_PREFIX"), "fleet"),
		LogLevel:           cmp.Or(get("FLEETSHIFT_LOG_LEVEL"), "info"),
		LogFormat:          get("FLEETSHIFT_LOG_FORMAT"),
	}
	var err error
	if c.StreamReplicas, err = intEnv(get, "FLEETSHIFT_STREAM_REPLICAS", 1); err != nil {
		return Config{}, err
	}
	if c.HeartbeatSeconds, err = intEnv(get, "FLEETSHIFT_HEARTBEAT_SECONDS", 30); err != nil {
		return Config{}, err
	}
	if c.OfflineAfterMissed, err = intEnv(get, "FLEETSHIFT_OFFLINE_AFTER_MISSED", 3); err != nil {
		return Config{}, err
	}
	if c.HeartbeatSeconds < 1 || c.OfflineAfterMissed < 1 {
		return Config{}, fmt.Errorf("FLEETSHIFT_HEARTBEAT_SECONDS and FLEETSHIFT_OFFLINE_AFTER_MISSED: want integers of at least 1, got %d and %d",
			c.HeartbeatSeconds, c.OfflineAfterMissed)
	}
	c.ShutdownTimeout = 15 * time.Second
	if v := get("FLEETSHIFT_SHUTDOWN_TIMEOUT"); v != "" {
		if c.ShutdownTimeout, err = time.ParseDuration(v); err != nil {
			return Config{}, fmt.Errorf("FLEETSHIFT_SHUTDOWN_TIMEOUT: %w", err)
		}
	}
	return c, nil
}

func intEnv(get func(string) string, key string, def int) (int, error) {
	v := get(key)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("%s: want an integer, got %q", key, v)
	}
	return n, nil
}
