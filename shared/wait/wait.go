// Package wait polls for a condition with a deadline: tests never sleep to wait.
package wait

import (
	"testing"
	"time"
)

// For calls check every 20ms until it returns nil or timeout passes, then fails the test with the
// last error.
func For(t testing.TB, timeout time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = check(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
