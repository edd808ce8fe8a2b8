package bench

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// fileMargin is the open files beyond one socket per simulated NATS device (which the simulator and the
// server each hold) that a process needs for everything else.
const fileMargin = 1024

// CheckFileLimit tells whether this process (and so the children it starts, which inherit it) may open
// a socket per device for n devices: RLIMIT_NOFILE is raised as far as allowed first.
func CheckFileLimit(n int) error {
	want := uint64(n + fileMargin)
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("read RLIMIT_NOFILE: %w", err)
	}
	if lim.Cur >= want {
		return nil
	}
	raised := unix.Rlimit{Cur: max(want, lim.Cur), Max: max(want, lim.Max)}
	if unix.Setrlimit(unix.RLIMIT_NOFILE, &raised) == nil {
		return nil
	}
	if lim.Max > lim.Cur {
		lim.Cur = lim.Max
		_ = unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	}
	if lim.Cur >= want {
		return nil
	}
	return fmt.Errorf("%d NATS devices need %d open files in the simulator and in the server; RLIMIT_NOFILE allows %d (hard limit %d, not raisable here)",
		n, want, lim.Cur, lim.Max)
}

// MaxFileLimitDevices is the most NATS devices CheckFileLimit can allow here (the hard limit less the
// margin), rounded down to a thousand.
func MaxFileLimitDevices() (int, error) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("read RLIMIT_NOFILE: %w", err)
	}
	if lim.Max == unix.RLIM_INFINITY || lim.Max > 1<<30 {
		return 1 << 30, nil
	}
	n := int(lim.Max) - fileMargin
	if n >= 1000 {
		n -= n % 1000
	}
	return max(n, 0), nil
}
