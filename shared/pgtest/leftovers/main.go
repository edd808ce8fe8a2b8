// Command leftovers fails when tests left something behind: pgtest databases that no live test process
// owns on the test server (TEST_DATABASE_URL), or a "jetstream" folder in the system temp dir (a NATS
// server started without a store dir). `make test` runs it after every module's tests.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/fleetshift/fleetshift/shared/pgtest"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// The reapers of test processes that just ended may still be dropping theirs.
	var left []string
	var err error
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(500 * time.Millisecond) {
		if left, err = pgtest.Leftovers(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "leftovers:", err)
			os.Exit(1)
		}
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
	}
	failed := false
	for _, name := range left {
		fmt.Fprintf(os.Stderr, "leftovers: database %s was left on the test server\n", name)
		failed = true
	}
	js := filepath.Join(os.TempDir(), "jetstream")
	if _, err := os.Stat(js); err == nil {
		fmt.Fprintf(os.Stderr, "leftovers: %s was left (a NATS server ran without a store dir)\n", js)
		failed = true
	}
	if failed {
		os.Exit(1)
	}
	fmt.Println("leftovers: none")
}
