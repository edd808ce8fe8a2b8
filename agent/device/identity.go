package device

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/fleetshift/fleetshift/agent/client"
)

// IdentityFile is the name of the file in the state directory that keeps a registered device's
// identity (uuid, api key, NATS url), readable only by its owner.
const IdentityFile = "identity.json"

// LoadIdentity reads the identity kept in stateDir; ok is false when there is none.
func LoadIdentity(stateDir string) (id client.Identity, ok bool, err error) {
	b, err := os.ReadFile(filepath.Join(stateDir, IdentityFile))
	if errors.Is(err, os.ErrNotExist) {
		return client.Identity{}, false, nil
	}
	if err != nil {
		return client.Identity{}, false, fmt.Errorf("read device identity: %w", err)
	}
	if err := json.Unmarshal(b, &id); err != nil {
		return client.Identity{}, false, fmt.Errorf("decode device identity %s: %w", filepath.Join(stateDir, IdentityFile), err)
	}
	if id.UUID == "" || id.APIKey == "" {
		return client.Identity{}, false, fmt.Errorf("device identity %s lacks uuid or api_key", filepath.Join(stateDir, IdentityFile))
	}
	return id, true, nil
}

// SaveIdentity writes id to stateDir with mode 0600.
func SaveIdentity(stateDir string, id client.Identity) error {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return fmt.Errorf("save device identity: %w", err)
	}
	b, err := json.MarshalIndent(id, "", "  ")
	if err != nil {
		return fmt.Errorf("save device identity: %w", err)
	}
	path := filepath.Join(stateDir, IdentityFile)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("save device identity: %w", err)
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fmt.Errorf("save device identity: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("save device identity: %w", err)
	}
	return nil
}

// Provision returns the identity kept in stateDir, or registers the device with provisioningKey and
// keeps the identity it gets. A device registers once: later starts reuse the kept identity and never
// present the provisioning key again.
func Provision(ctx context.Context, stateDir string, c *client.Client, provisioningKey, name string, tags []string) (client.Identity, error) {
	id, ok, err := LoadIdentity(stateDir)
	if err != nil || ok {
		return id, err
	}
	if provisioningKey == "" {
		return client.Identity{}, errors.New("device is not registered yet: a provisioning key is needed")
	}
	id, err = c.Register(ctx, provisioningKey, name, tags)
	if err != nil {
		return client.Identity{}, err
	}
	if err := SaveIdentity(stateDir, id); err != nil {
		return client.Identity{}, err
	}
	return id, nil
}
