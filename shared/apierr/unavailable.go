package apierr

import (
	"context"
	"errors"
	"net"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// DefaultRetryAfter is the Retry-After given with a 503 for an unreachable dependency.
const DefaultRetryAfter = 5 * time.Second

// Unreachable reports whether err means a dependency (PostgreSQL) cannot be reached or refuses work for
// now: a failed connect, a connection dropped or terminated by the server (pg_terminate_backend, shutdown),
// a server not accepting connections, too many connections, a closed pool or a pool acquire that timed
// out. Such errors are answered 503 with Retry-After, code "unavailable", never 500.
func Unreachable(err error) bool {
	if err == nil {
		return false
	}
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return true
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case strings.HasPrefix(pe.Code, "08"), // connection exception
			pe.Code == "57P01", pe.Code == "57P02", pe.Code == "57P03", // admin/crash shutdown, cannot connect now
			pe.Code == "53300", // too many connections
			pe.Code == "3D000": // database does not exist (renamed or dropped under us)
			return true
		}
		return false
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	if pgconn.Timeout(err) && !errors.Is(err, context.Canceled) {
		return true // a pool acquire or connect that ran out of time
	}
	msg := err.Error()
	return strings.Contains(msg, "closed pool") || strings.Contains(msg, "conn closed") ||
		strings.Contains(msg, "unexpected EOF") || strings.Contains(msg, "failed to connect")
}

// unavailableBody is the client-facing error for an unreachable database.
func unavailableBody() BodyError {
	return BodyError{Code: "unavailable", Message: "the database is unreachable; retry later"}
}

// Contended reports whether PostgreSQL rolled err's transaction back because of concurrent work: a
// deadlock it broke (40P01) or a serialization failure (40001). The transaction changed nothing, and
// running it again is safe and usually succeeds.
func Contended(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40P01" || pe.Code == "40001")
}
