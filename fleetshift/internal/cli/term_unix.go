//go:build unix

package cli

import (
	"io"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// termWidth is w's width in columns: the terminal's own, else $COLUMNS, else 80.
func termWidth(w io.Writer) int {
	if f, ok := w.(*os.File); ok {
		if ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ); err == nil && ws.Col > 0 {
			return int(ws.Col)
		}
	}
	if n, err := strconv.Atoi(os.Getenv("COLUMNS")); err == nil && n > 0 {
		return n
	}
	return 80
}

// resize delivers a value whenever the terminal is resized (SIGWINCH).
type resize struct {
	c chan os.Signal
}

func resizeSignal() resize {
	r := resize{c: make(chan os.Signal, 1)}
	signal.Notify(r.c, syscall.SIGWINCH)
	return r
}

func (r resize) stop() { signal.Stop(r.c) }
