//go:build !unix

package cli

import (
	"io"
	"os"
	"strconv"
)

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func termWidth(io.Writer) int {
	if n, err := strconv.Atoi(os.Getenv("COLUMNS")); err == nil && n > 0 {
		return n
	}
	return 80
}

type resize struct{ c chan os.Signal }

func resizeSignal() resize { return resize{} }
func (resize) stop()       {}
