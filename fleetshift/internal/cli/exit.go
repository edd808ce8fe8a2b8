package cli

import "errors"

// Exit codes of the operator CLI (README "Exit codes"). Any other error exits ExitError.
const (
	ExitOK = 0
	// ExitError: bad usage, an API error (one line on stderr), anything not listed below.
	ExitError = 1
	// ExitRolloutFailed: the watched rollout ended failed, rolled back, cancelled or superseded.
	ExitRolloutFailed = 2
	// ExitRolloutPaused: the watched rollout is paused (by an operator or automatically) and needs an operator.
	ExitRolloutPaused = 3
	// ExitConnectionLost: the server could not be reached for longer than --reconnect-timeout.
	ExitConnectionLost = 4
)

// ExitCodeError is an error that asks for a particular exit code.
type ExitCodeError struct {
	Code int
	Err  error
}

func (e *ExitCodeError) Error() string { return e.Err.Error() }
func (e *ExitCodeError) Unwrap() error { return e.Err }

// ExitCode is the process exit code for err (nil: 0).
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var ec *ExitCodeError
	if errors.As(err, &ec) {
		return ec.Code
	}
	return ExitError
}
