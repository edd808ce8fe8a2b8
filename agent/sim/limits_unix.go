//go:build unix

package sim

import (
	"fmt"
	"syscall"
)

// fileMargin is the open files a simulation needs beyond one socket per NATS device.
const fileMargin = 1024

// raiseFileLimit raises RLIMIT_NOFILE so that n NATS devices (one socket each) fit, as far as the
// process may, and says so in one line when they cannot.
func raiseFileLimit(n int) error {
	want := uint64(n) + fileMargin
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("sim: read RLIMIT_NOFILE: %w", err)
	}
	if lim.Cur >= want {
		return nil
	}
	if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: max(want, lim.Max)}) == nil {
		return nil
	}
	if lim.Max > lim.Cur { // at least the soft limit up to the hard one
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: lim.Max, Max: lim.Max}) == nil {
			lim.Cur = lim.Max
		}
	}
	if lim.Cur >= want {
		return nil
	}
	return fmt.Errorf("sim: %d NATS devices need %d open files; RLIMIT_NOFILE allows %d (hard limit %d): raise it (ulimit -n, LimitNOFILE) or simulate fewer devices",
		n, want, lim.Cur, lim.Max)
}
