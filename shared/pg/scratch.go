package pg

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"strings"

	"github.com/jackc/pgx/v5"
)

// WithDatabase returns connString naming database name instead; user, password, host and every
// parameter are kept. Both URL and key=value forms are accepted.
func WithDatabase(connString, name string) (string, error) {
	if strings.HasPrefix(connString, "postgres://") || strings.HasPrefix(connString, "postgresql://") {
		u, err := url.Parse(connString)
		if err != nil {
			return "", fmt.Errorf("database url %s: %w", Redact(connString), err)
		}
		u.Path = "/" + name
		u.RawPath = ""
		return u.String(), nil
	}
	if _, err := pgx.ParseConfig(connString); err != nil {
		return "", fmt.Errorf("database url %s: %w", Redact(connString), err)
	}
	return connString + " dbname=" + name, nil // the last dbname wins
}

// Scratch is a database created for one run (a demo, a benchmark) and dropped by Drop.
type Scratch struct {
	URL, Name string
	admin     string
}

// CreateScratch creates an empty database <prefix><random> on the server of serverURL (only the server
// is taken from it; the database it names is never touched).
func CreateScratch(ctx context.Context, serverURL, prefix string) (*Scratch, error) {
	admin, err := WithDatabase(serverURL, "postgres")
	if err != nil {
		return nil, err
	}
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	name := prefix + hex.EncodeToString(rnd[:])
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		return nil, fmt.Errorf("connect to %s to create a database: %w", Redact(admin), err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return nil, fmt.Errorf("create database %s: %w", name, err)
	}
	dbURL, err := WithDatabase(serverURL, name)
	if err != nil {
		return nil, err
	}
	return &Scratch{URL: dbURL, Name: name, admin: admin}, nil
}

// Drop drops the database, terminating leftover sessions; it runs even when ctx has ended.
func (s *Scratch) Drop(ctx context.Context) error {
	ctx = context.WithoutCancel(ctx)
	conn, err := pgx.Connect(ctx, s.admin)
	if err != nil {
		return fmt.Errorf("connect to drop %s: %w", s.Name, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{s.Name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop database %s: %w", s.Name, err)
	}
	return nil
}
