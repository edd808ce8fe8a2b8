package localpg

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestNotInstalled: with no initdb and pg_ctl to be found, Start says so (ErrNotInstalled) and creates
// nothing.
func TestNotInstalled(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "postgres")
	_, err := Start(context.Background(), Options{Dir: dir, Database: "fleetshift", BinDirs: []string{t.TempDir()}})
	if !errors.Is(err, ErrNotInstalled) {
		t.Fatalf("want ErrNotInstalled, got %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("the cluster dir was created: %v", err)
	}
}

// TestSocketPathTooLong: a data dir too deep for a unix socket is refused with what to do.
func TestSocketPathTooLong(t *testing.T) {
	t.Parallel()
	dir := "/" + strings.Repeat("d", 120)
	_, err := Start(context.Background(), Options{Dir: dir, Database: "fleetshift"})
	if err == nil || !strings.Contains(err.Error(), "FLEETSHIFT_DATA_DIR") {
		t.Fatalf("want a too-long error naming FLEETSHIFT_DATA_DIR, got %v", err)
	}
}

// TestFindBinPrefersTheExistingClustersVersion: an existing cluster is started with binaries of its
// own major version, and a mismatch says which versions there are.
func TestFindBinPrefersTheExistingClustersVersion(t *testing.T) {
	t.Parallel()
	fake := func(version string) string {
		d := t.TempDir()
		for _, p := range []string{"initdb", "pg_ctl"} {
			script := "#!/bin/sh\necho '" + p + " (PostgreSQL) " + version + ".1'\n"
			if err := os.WriteFile(filepath.Join(d, p), []byte(script), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		return d
	}
	v15, v17 := fake("15"), fake("17")
	if got, v, err := findBin([]string{v15, v17}, 0); err != nil || got != v17 || v != 17 {
		t.Fatalf("new cluster: want the newest (17), got %s %d %v", got, v, err)
	}
	if got, v, err := findBin([]string{v17, v15}, 15); err != nil || got != v15 || v != 15 {
		t.Fatalf("existing 15 cluster: want 15, got %s %d %v", got, v, err)
	}
	if _, _, err := findBin([]string{v17}, 15); err == nil || !strings.Contains(err.Error(), "PostgreSQL 15") {
		t.Fatalf("want a version mismatch error, got %v", err)
	}
}
