//go:build !unix

package sim

// raiseFileLimit: no RLIMIT_NOFILE here.
func raiseFileLimit(int) error { return nil }
