//go:build !unix

package localpg

import "os/exec"

func detach(*exec.Cmd) {}
