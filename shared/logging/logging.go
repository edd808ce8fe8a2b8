// Package logging builds zerolog loggers. Every service logger carries a component field.
package logging

import (
	"io"
	"os"
	"time"

	"github.com/rs/zerolog"
)

// New returns the root logger writing to w at level ("debug", "info", ...). format "json" writes JSON
// lines; "console" (or empty when w is a terminal) writes human-readable lines.
func New(w io.Writer, level, format string) zerolog.Logger {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil || level == "" {
		lvl = zerolog.InfoLevel
	}
	out := w
	if format == "console" || (format == "" && isTerminal(w)) {
		out = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly}
	}
	return zerolog.New(out).Level(lvl).With().Timestamp().Logger()
}

// Component returns l with component set to name.
func Component(l zerolog.Logger, name string) zerolog.Logger {
	return l.With().Str("component", name).Logger()
}

// Nop is a logger that writes nothing.
func Nop() zerolog.Logger { return zerolog.Nop() }

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
