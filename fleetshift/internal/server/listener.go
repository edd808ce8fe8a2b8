package server

import (
	"errors"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// retryListener keeps accepting through errors that pass: when the process is out of file descriptors
// (EMFILE, ENFILE) or the kernel out of buffers, or a connection was aborted before it was accepted,
// Accept waits (5 ms doubling to 1 s) and tries again instead of returning the error, which would end
// the HTTP server (fasthttp treats every accept error but a timeout as fatal). Pending connections
// wait in the kernel's backlog meanwhile. One warning per episode.
type retryListener struct {
	net.Listener
	log       zerolog.Logger
	closeOnce sync.Once
	closed    chan struct{}
}

func newRetryListener(l net.Listener, log zerolog.Logger) *retryListener {
	return &retryListener{Listener: l, log: log, closed: make(chan struct{})}
}

// Accept implements net.Listener.
func (l *retryListener) Accept() (net.Conn, error) {
	var delay time.Duration
	for {
		c, err := l.Listener.Accept()
		if err == nil {
			if delay > 0 {
				l.log.Info().Msg("accepting connections again")
			}
			return c, nil
		}
		if !acceptErrorPasses(err) {
			return nil, err
		}
		if delay == 0 {
			l.log.Warn().Err(err).Msg("cannot accept connections for now (too many open files?); retrying")
			delay = 5 * time.Millisecond
		} else {
			delay = min(2*delay, time.Second)
		}
		t := time.NewTimer(delay)
		select {
		case <-l.closed:
			t.Stop()
			return nil, net.ErrClosed
		case <-t.C:
		}
	}
}

// Close implements net.Listener.
func (l *retryListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// acceptErrorPasses tells the accept errors worth waiting out from a closed or broken listener.
func acceptErrorPasses(err error) bool {
	for _, errno := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.EINTR} {
		if errors.Is(err, errno) {
			return true
		}
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
