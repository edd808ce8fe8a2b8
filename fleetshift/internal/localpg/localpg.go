// Package localpg runs a PostgreSQL cluster of fleetshift's own under the data directory, with the
// machine's initdb and pg_ctl, for `fleetshift serve` when no DATABASE_URL is set and no server answers
// on the default address. The cluster listens only on a unix socket inside its directory (no TCP port,
// trust authentication guarded by the directory's 0700 mode), survives restarts, and is stopped by Stop.
package localpg

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Port names the socket file (.s.PGSQL.<Port>); as the socket lives in the cluster's own directory it
// never collides with another server.
const Port = 5432

// maxSocketPath is the longest unix socket path Linux accepts (sun_path is 108 bytes with the NUL).
const maxSocketPath = 107

// Options configure Start.
type Options struct {
	// Dir is the cluster's data directory (absolute); created when missing.
	Dir string
	// Database is the database the URL names (created by the caller, e.g. with pg.EnsureDatabase).
	Database string
	// BinDirs are searched for initdb and pg_ctl; nil means PATH, then /usr/lib/postgresql/*/bin.
	BinDirs []string
}

// Cluster is a running cluster.
type Cluster struct {
	// Dir is the data directory; LogFile the server's log.
	Dir, LogFile string
	// URL connects to Options.Database as the superuser postgres over the socket.
	URL string
	// Version is the PostgreSQL major version running it.
	Version int

	bin    string
	runAs  []string // "runuser -u postgres --" when fleetshift runs as root
	stderr bytes.Buffer
}

// ErrNotInstalled means no initdb and pg_ctl were found.
var ErrNotInstalled = errors.New("PostgreSQL is not installed (no initdb and pg_ctl in PATH, /usr/lib/postgresql/*/bin or FLEETSHIFT_POSTGRES_BIN)")

// Start initialises the cluster in o.Dir when it has none, starts it (or adopts the one already running
// there) and returns once it accepts connections. The caller stops it with Stop, also when its own
// start-up fails later.
func Start(ctx context.Context, o Options) (*Cluster, error) {
	if !filepath.IsAbs(o.Dir) {
		return nil, fmt.Errorf("local PostgreSQL: data directory %q is not absolute", o.Dir)
	}
	if n := len(filepath.Join(o.Dir, fmt.Sprintf(".s.PGSQL.%d", Port))); n > maxSocketPath {
		return nil, fmt.Errorf("local PostgreSQL: the socket path under %s would be %d bytes, longer than unix sockets allow (%d): "+
			"set FLEETSHIFT_DATA_DIR to a shorter path", o.Dir, n, maxSocketPath)
	}
	existing := 0
	if b, err := os.ReadFile(filepath.Join(o.Dir, "PG_VERSION")); err == nil {
		existing, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	bin, version, err := findBin(o.BinDirs, existing)
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: o.Dir, LogFile: filepath.Join(o.Dir, "server.log"), Version: version, bin: bin,
		URL: "postgres://postgres@/" + url.PathEscape(o.Database) + "?host=" + url.QueryEscape(o.Dir) +
			"&port=" + strconv.Itoa(Port) + "&sslmode=disable"}
	if err := c.prepareDir(); err != nil {
		return nil, err
	}
	if existing == 0 {
		if err := c.run(ctx, "initdb", "-D", c.Dir, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale"); err != nil {
			return nil, fmt.Errorf("local PostgreSQL: initdb in %s failed: %s", c.Dir, c.lastOutput(err))
		}
	}
	if c.running(ctx) {
		return c, nil // left by a fleetshift that did not stop it; ours now
	}
	opts := fmt.Sprintf("-c listen_addresses='' -k %s -p %d -c unix_socket_permissions=0700", shellQuote(c.Dir), Port)
	if err := c.run(ctx, "pg_ctl", "-D", c.Dir, "-l", c.LogFile, "-o", opts, "-w", "-t", "60", "start"); err != nil {
		return nil, fmt.Errorf("local PostgreSQL: start in %s failed: %s (log: %s)", c.Dir, c.lastLog(err), c.LogFile)
	}
	return c, nil
}

// Stop shuts the cluster down (fast: open sessions are ended) and waits for it.
func (c *Cluster) Stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if !c.running(ctx) {
		return nil
	}
	if err := c.run(ctx, "pg_ctl", "-D", c.Dir, "-m", "fast", "-w", "-t", "60", "stop"); err != nil {
		return fmt.Errorf("stop local PostgreSQL in %s: %s", c.Dir, c.lastOutput(err))
	}
	return nil
}

// running reports whether a postmaster serves c.Dir (pg_ctl status exits 0).
func (c *Cluster) running(ctx context.Context) bool {
	return c.run(ctx, "pg_ctl", "-D", c.Dir, "status") == nil
}

// prepareDir creates the data directory. As root, PostgreSQL runs as user postgres, which must own the
// directory and reach it.
func (c *Cluster) prepareDir() error {
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return fmt.Errorf("local PostgreSQL: create %s: %w", c.Dir, err)
	}
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return fmt.Errorf("local PostgreSQL: fleetshift runs as root, and PostgreSQL refuses to; it runs it as user postgres, which does not exist: " +
			"create it (useradd --system postgres) or set DATABASE_URL")
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	err = filepath.WalkDir(c.Dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
	if err != nil {
		return fmt.Errorf("local PostgreSQL: give %s to user postgres: %w", c.Dir, err)
	}
	// The data dir above it is fleetshift's (mode 0700): let postgres pass through, not list it.
	if parent := filepath.Dir(c.Dir); parent != c.Dir {
		if fi, err := os.Stat(parent); err == nil && fi.Mode().Perm()&0o001 == 0 {
			_ = os.Chmod(parent, fi.Mode().Perm()|0o011)
		}
	}
	c.runAs = []string{"runuser", "-u", "postgres", "--"}
	if err := exec.Command("runuser", "-u", "postgres", "--", "test", "-w", c.Dir).Run(); err != nil {
		return fmt.Errorf("local PostgreSQL: user postgres cannot reach %s (a directory above it is not searchable by others): "+
			"set FLEETSHIFT_DATA_DIR to a directory it can reach (e.g. under /var/lib), or set DATABASE_URL", c.Dir)
	}
	return nil
}

// run runs a PostgreSQL program from c.bin (as postgres when root), in its own process group so a
// terminal's Ctrl-C reaches fleetshift, which stops the cluster in order, and not the postmaster.
func (c *Cluster) run(ctx context.Context, prog string, args ...string) error {
	argv := append(slices.Clone(c.runAs), append([]string{filepath.Join(c.bin, prog)}, args...)...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = c.Dir
	c.stderr.Reset()
	cmd.Stdout, cmd.Stderr = &c.stderr, &c.stderr
	detach(cmd)
	return cmd.Run()
}

// lastOutput is the last non-empty line the previous program printed, or err.
func (c *Cluster) lastOutput(err error) string {
	return lastLine(c.stderr.String(), err)
}

// lastLog is the last line of the server log (why the postmaster did not start), or the program's output.
func (c *Cluster) lastLog(err error) string {
	b, rerr := os.ReadFile(c.LogFile)
	if rerr != nil {
		return c.lastOutput(err)
	}
	return lastLine(string(b), err)
}

func lastLine(text string, err error) string {
	lines := strings.Split(strings.TrimSpace(text), "\n")
	if l := strings.TrimSpace(lines[len(lines)-1]); l != "" {
		return l
	}
	return err.Error()
}

var versionRE = regexp.MustCompile(`\(PostgreSQL\) (\d+)`)

// findBin returns the directory with initdb and pg_ctl and its major version: the one matching an
// existing cluster's version, else the newest found.
func findBin(dirs []string, want int) (string, int, error) {
	if dirs == nil {
		if p, err := exec.LookPath("initdb"); err == nil {
			if real, err := filepath.EvalSymlinks(p); err == nil {
				p = real
			}
			dirs = append(dirs, filepath.Dir(p))
		}
		matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
		dirs = append(dirs, matches...)
	}
	best, bestVersion := "", 0
	var found []string
	for _, d := range dirs {
		if !executable(filepath.Join(d, "initdb")) || !executable(filepath.Join(d, "pg_ctl")) {
			continue
		}
		out, err := exec.Command(filepath.Join(d, "pg_ctl"), "--version").Output()
		if err != nil {
			continue
		}
		m := versionRE.FindSubmatch(out)
		if m == nil {
			continue
		}
		v, _ := strconv.Atoi(string(m[1]))
		found = append(found, strconv.Itoa(v))
		if (want == 0 && v > bestVersion) || (want != 0 && v == want && best == "") {
			best, bestVersion = d, v
		}
	}
	switch {
	case best != "":
		return best, bestVersion, nil
	case len(found) == 0:
		return "", 0, ErrNotInstalled
	default:
		return "", 0, fmt.Errorf("the cluster in the data dir is PostgreSQL %d but only %s is installed: install PostgreSQL %d, "+
			"or move the data dir's postgres folder away to start afresh", want, strings.Join(found, ", "), want)
	}
}

func executable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

// shellQuote quotes s for the /bin/sh that pg_ctl starts the postmaster with.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
