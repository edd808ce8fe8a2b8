package devicestore

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/fleetshift/fleetshift/shared/pgtest"
	"github.com/fleetshift/fleetshift/shared/wait"
	"github.com/fleetshift/fleetshift/streams"
)

func appsRunning(image string) string {
	return `{"1": {"appId": 1, "appName": "main", "services": [{"serviceId": 1, "serviceName": "web", "imageName": "` +
		image + `", "config": {"image": "` + image + `"}}]}}`
}

// TestRegistrationBehindACompletingRolloutStartsOnTheMovedDefault: a device registers into a fleet
// whose default runs acme/app:1.0 while the rollout of acme/app:2.0 completes. The completion (as
// healthwatch does it: rollout locked, the fleet's default moved to 2.0, status completed) commits while
// the registration, which read the default before, waits on the rollout's lock to join it. The rollout
// is over by then, so the device joins nothing: it must start on the moved default (2.0), not on the
// 1.0 it read, or it is left behind on the old image in no rollout.
func TestRegistrationBehindACompletingRolloutStartsOnTheMovedDefault(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	subj := streams.New("")
	id := uuid.NewString()
	if _, err := db.Pool.Exec(ctx, `INSERT INTO fleet_target_state (fleet_id, apps) VALUES ('plant', $1::jsonb)`,
		appsRunning("acme/app:1.0")); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool.Exec(ctx, `INSERT INTO image_rollouts (rollout_id, image_name, repository, old_tag, new_tag,
			new_image, strategy, status, current_batch, total_batches, batch_sizes, total_devices, policy)
		VALUES ($1, 'acme/app', 'docker.io/acme/app', '1.0', '2.0', 'acme/app:2.0', 'staged', 'in_progress', 1, 1, '{0}', 0, '{}')`,
		id); err != nil {
		t.Fatal(err)
	}

	completion, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer completion.Rollback(ctx)
	for _, q := range []string{
		`SELECT 1 FROM image_rollouts WHERE rollout_id = '` + id + `' FOR UPDATE`,
		`UPDATE fleet_target_state SET apps = '` + appsRunning("acme/app:2.0") + `'::jsonb, version = version + 1 WHERE fleet_id = 'plant'`,
		`UPDATE image_rollouts SET status = 'completed', completed_at = now() WHERE rollout_id = '` + id + `'`,
	} {
		if _, err := completion.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}

	type result struct {
		created Created
		err     error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		r.err = pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
			var err error
			r.created, err = Insert(ctx, tx, subj, New{Name: "late", FleetID: "plant"})
			return err
		})
		done <- r
	}()
	// The registration waits on the rollout's row lock (it read the default already).
	wait.For(t, 20*time.Second, func() error {
		var n int
		if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n); err != nil {
			return err
		}
		if n != 1 {
			return fmt.Errorf("%d sessions wait on a lock, want the registration", n)
		}
		return nil
	})
	if err := completion.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	var r result
	select {
	case r = <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("the registration never finished")
	}
	if r.err != nil {
		t.Fatal(r.err)
	}

	var apps string
	var rows int
	var version int64
	if err := db.Pool.QueryRow(ctx, `SELECT t.apps::text, t.version, (SELECT count(*) FROM device_rollout_status s WHERE s.device_uuid = t.device_uuid)
		FROM device_target_state t WHERE t.device_uuid = $1`, r.created.UUID).Scan(&apps, &version, &rows); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(apps, "acme/app:2.0") || strings.Contains(apps, "acme/app:1.0") {
		t.Fatalf("the device registered behind the completion starts on %s, want the moved default (acme/app:2.0)", apps)
	}
	if rows != 0 {
		t.Fatalf("the device joined %d rollouts; the only one was over", rows)
	}
	// What the caller announces to the device is the target it ends with.
	if w := r.created.Written; len(w) == 0 || w[len(w)-1].DeviceUUID != r.created.UUID || w[len(w)-1].Version != version {
		t.Fatalf("written targets reported: %+v, the device's target is version %d", w, version)
	}
}
