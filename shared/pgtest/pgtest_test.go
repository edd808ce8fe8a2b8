package pgtest_test

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/fleetshift/fleetshift/shared/pgtest"
)

const helperEnv = "PGTEST_HELPER_LEAVE_DATABASE"

// TestHelperLeaveDatabase is run by TestDatabasesOfAnEndedProcessAreDropped in a child process: it makes
// a database and exits at once, skipping every cleanup, as a crashed or killed test would.
func TestHelperLeaveDatabase(t *testing.T) {
	if os.Getenv(helperEnv) == "" {
		return // only as a child
	}
	db := pgtest.New(t)
	os.Stdout.WriteString("DB " + db.Name + "\n")
	os.Exit(0)
}

// TestDatabasesOfAnEndedProcessAreDropped: what a test process still owned when it ended is dropped by
// its reaper, and Leftovers does not count what a live process owns.
func TestDatabasesOfAnEndedProcessAreDropped(t *testing.T) {
	mine := pgtest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	left, err := pgtest.Leftovers(ctx)
	require.NoError(t, err)
	require.NotContains(t, left, mine.Name, "a live process's database is not left over")

	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperLeaveDatabase$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	out, err := cmd.Output()
	require.NoError(t, err)
	var name string
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if n, ok := strings.CutPrefix(sc.Text(), "DB "); ok {
			name = n
		}
	}
	require.NotEmpty(t, name, "child output: %s", out)

	admin, err := pgx.Connect(ctx, pgtest.ServerURL())
	require.NoError(t, err)
	defer admin.Close(ctx)
	deadline := time.Now().Add(time.Minute)
	for {
		var n int
		require.NoError(t, admin.QueryRow(ctx, "SELECT count(*) FROM pg_database WHERE datname = $1", name).Scan(&n))
		if n == 0 {
			break
		}
		require.True(t, time.Now().Before(deadline), "database %s of the ended process was not dropped", name)
		time.Sleep(100 * time.Millisecond)
	}
}
