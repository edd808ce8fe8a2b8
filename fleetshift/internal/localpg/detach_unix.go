//go:build unix

package localpg

import (
	"os/exec"
	"syscall"
)

// detach puts cmd (and the postmaster it may start) in a process group of its own.
func detach(cmd *exec.Cmd) { cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} }
