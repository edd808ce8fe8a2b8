package healthwatch

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fleetshift/fleetshift/shared/imageref"
)

func TestDerive(t *testing.T) {
	t.Parallel()
	row := func(newImage string) rowImage {
		ref, err := imageref.Parse(newImage)
		require.NoError(t, err)
		return rowImage{repository: ref.Repository, newRef: ref}
	}
	const dg = "sha256:0123456789012345678901234567890123456789012345678901234567890123"
	const other = "sha256:9999999999999999999999999999999999999999999999999999999999999999"
	cases := []struct {
		name   string
		row    string
		checks bool
		report []byte
		want   string
	}{
		{"old still running", "acme/app:2.0", true, web("d", "acme/app:1.0", "running", "healthy"), statusScheduled},
		{"pulling", "acme/app:2.0", true, web("d", "acme/app:2.0", "Downloading", ""), statusUpdating},
		{"old stopped", "acme/app:2.0", true, web("d", "acme/app:1.0", "exited", ""), statusUpdating},
		{"old gone", "acme/app:2.0", true, body("d", svc{"cache", "redis:7", "running", ""}), statusUpdating},
		{"new starting", "acme/app:2.0", true, web("d", "acme/app:2.0", "running", "starting"), statusHealthChecking},
		{"new no health", "acme/app:2.0", true, web("d", "acme/app:2.0", "running", ""), statusHealthChecking},
		{"new healthy", "acme/app:2.0", true, web("d", "acme/app:2.0", "Running", "healthy"), statusCompleted},
		{"checks off", "acme/app:2.0", false, web("d", "acme/app:2.0", "running", ""), statusCompleted},
		{"unhealthy", "acme/app:2.0", true, web("d", "acme/app:2.0", "running", "unhealthy"), statusFailed},
		{"exited", "acme/app:2.0", true, web("d", "acme/app:2.0", "exited", ""), statusFailed},
		{"dead, checks off", "acme/app:2.0", false, web("d", "acme/app:2.0", "dead", ""), statusFailed},
		{"normalised name", "acme/app:2.0", true, web("d", "docker.io/acme/app:2.0", "running", "healthy"), statusCompleted},
		{"library image", "nginx:1.27", true, web("d", "docker.io/library/nginx:1.27", "running", "healthy"), statusCompleted},
		{"other tag is not new", "acme/app:2.0", true, web("d", "acme/app:2.1", "running", "healthy"), statusScheduled},
		{"other repository ignored", "acme/app:2.0", true, body("d", svc{"web", "evilacme/app:2.0", "running", "healthy"}), statusUpdating},
		{"digest matches", "acme/app:2.0@" + dg, true, web("d", "acme/app:2.0@"+dg, "running", "healthy"), statusCompleted},
		{"digest only", "acme/app:2.0@" + dg, true, web("d", "acme/app@"+dg, "running", "healthy"), statusCompleted},
		{"digest differs", "acme/app:2.0@" + dg, true, web("d", "acme/app:2.0@"+other, "running", "healthy"), statusScheduled},
		{"digest missing", "acme/app:2.0@" + dg, true, web("d", "acme/app:2.0", "running", "healthy"), statusScheduled},
		{"two services, one healthy one old", "acme/app:2.0", true,
			body("d", svc{"a", "acme/app:2.0", "running", "healthy"}, svc{"b", "acme/app:1.0", "running", ""}), statusUpdating},
		{"two services, both new, one starting", "acme/app:2.0", true,
			body("d", svc{"a", "acme/app:2.0", "running", "healthy"}, svc{"b", "acme/app:2.0", "running", "starting"}), statusHealthChecking},
		{"two services, one failed", "acme/app:2.0", true,
			body("d", svc{"a", "acme/app:2.0", "running", "healthy"}, svc{"b", "acme/app:2.0", "exited", ""}), statusFailed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := derive(decodeReport(t, "d", c.report).body, row(c.row), c.checks)
			require.Equal(t, c.want, got.status)
			if got.status == statusFailed {
				require.NotEmpty(t, got.reason)
			}
		})
	}
}

func TestFoldNeverGoesBack(t *testing.T) {
	t.Parallel()
	v := func(s string) verdict { return verdict{status: s} }
	require.Equal(t, statusCompleted, fold(statusScheduled, []verdict{v(statusHealthChecking), v(statusCompleted), v(statusFailed)}).status)
	require.Equal(t, statusFailed, fold(statusScheduled, []verdict{v(statusFailed), v(statusCompleted)}).status)
	require.Equal(t, statusHealthChecking, fold(statusHealthChecking, []verdict{v(statusUpdating), v(statusScheduled)}).status)
	require.Equal(t, statusCompleted, fold(statusCompleted, []verdict{v(statusFailed)}).status)
}

func TestPolicySnapshot(t *testing.T) {
	t.Parallel()
	p := parsePolicy([]byte(`{}`))
	require.True(t, p.HealthCheckEnabled)
	require.Equal(t, 0.2, p.MaxFailureRate)
	require.EqualValues(t, 1, p.MinSampleSize)
	require.Zero(t, p.BatchDelay)
	p = parsePolicy([]byte(`{"batch_delay_minutes": 5, "batch_delay_seconds": 2, "health_check_enabled": false,
		"max_failure_rate": 0.5, "min_sample_size": 20, "auto_rollback_enabled": true}`))
	require.Equal(t, 2*time.Second, p.BatchDelay, "batch_delay_seconds wins")
	require.False(t, p.HealthCheckEnabled)
	require.True(t, p.AutoRollbackEnabled)
	require.Equal(t, 5*time.Minute, parsePolicy([]byte(`{"batch_delay_minutes": 5, "batch_delay_seconds": null}`)).BatchDelay)
	require.False(t, p.exceeded(10, 19), "below min_sample_size")
	require.True(t, p.exceeded(11, 20))
	require.False(t, p.exceeded(10, 20), "equal to the maximum is not above it")
}
