// Package secrets generates and keeps the server's own secrets (admin token, webhook token, NATS service
// password) in the data directory, so they survive restarts and are shown only when first made.
package secrets

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Value is a secret and whether this call generated it.
type Value struct {
	Secret    string
	Generated bool
}

// Ensure returns the secret stored in dir/name, generating and saving it (mode 0600) when absent.
// An explicit value (from the environment) wins and is not saved.
func Ensure(dir, name, explicit string) (Value, error) {
	return EnsureWith(dir, name, explicit, func() (string, error) { return New(), nil })
}

// EnsureWith is Ensure with a generator of its own (e.g. an nkey seed).
func EnsureWith(dir, name, explicit string, generate func() (string, error)) (Value, error) {
	if explicit != "" {
		return Value{Secret: explicit}, nil
	}
	path := filepath.Join(dir, name)
	b, err := os.ReadFile(path)
	if err == nil {
		if s := strings.TrimSpace(string(b)); s != "" {
			return Value{Secret: s}, nil
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return Value{}, fmt.Errorf("read secret %s: %w: check FLEETSHIFT_DATA_DIR and its permissions", path, pathCause(err))
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Value{}, fmt.Errorf("create data dir %s: %w: set FLEETSHIFT_DATA_DIR to a directory fleetshift may write", dir, pathCause(err))
	}
	s, err := generate()
	if err != nil {
		return Value{}, fmt.Errorf("generate secret %s: %w", name, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) { // another process made it first
		return EnsureWith(dir, name, "", generate)
	}
	if err != nil {
		return Value{}, fmt.Errorf("save secret %s: %w", path, err)
	}
	if _, err := f.WriteString(s + "\n"); err != nil {
		f.Close()
		return Value{}, fmt.Errorf("save secret %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return Value{}, fmt.Errorf("save secret %s: %w", path, err)
	}
	return Value{Secret: s, Generated: true}, nil
}

// New returns a random 32-byte secret, URL-safe.
func New() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("crypto/rand failed: %v", err)) // never happens on supported platforms
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// pathCause is the cause of a file system error without the path repeated ("not a directory").
func pathCause(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
