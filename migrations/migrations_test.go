package migrations_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/fleetshift/fleetshift/migrations"
)

// freshDatabase creates an empty database on the test server and returns its URL (dropped at cleanup).
// (shared/pgtest clones an already migrated template; these tests need the empty state.)
func freshDatabase(t *testing.T) string {
	t.Helper()
	server := os.Getenv("TEST_DATABASE_URL")
	if server == "" {
		server = os.Getenv("DATABASE_URL")
	}
	if server == "" {
		server = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	}
	cfg, err := pgx.ParseConfig(server)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Database = "postgres"
	ctx := context.Background()
	admin, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("no PostgreSQL at %s:%d (set TEST_DATABASE_URL): %v", cfg.Host, cfg.Port, err)
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	name := "fleetshift_migr_" + hex.EncodeToString(b)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = admin.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
		admin.Close(context.Background())
	})
	return fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", cfg.User, cfg.Host, cfg.Port, name)
}

// TestConcurrentStartsMigrateOnce: several processes starting at once all succeed and leave one schema.
func TestConcurrentStartsMigrateOnce(t *testing.T) {
	t.Parallel()
	url := freshDatabase(t)
	var wg sync.WaitGroup
	errs := make(chan error, 6)
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- migrations.ApplyURL(context.Background(), url)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent migrate: %v", err)
		}
	}
	// Applying again is a no-op.
	if err := migrations.ApplyURL(context.Background(), url); err != nil {
		t.Fatal(err)
	}
}

// TestSeedDocumentedSQLRunsUnchanged: the seed's documented policy INSERT and monitoring SELECTs run as written.
func TestSeedDocumentedSQLRunsUnchanged(t *testing.T) {
	t.Parallel()
	url := freshDatabase(t)
	ctx := context.Background()
	if err := migrations.ApplyURL(ctx, url); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	seed := []string{
		`INSERT INTO image_update_policies (image_pattern, update_strategy, staged_batches, batch_delay_minutes,
    health_check_enabled, health_check_timeout_seconds, auto_rollback_enabled, max_failure_rate, enabled) VALUES
    ('iotistic/myapp:*', 'staged', 3, 30, true, 300, true, 0.2, true);`,
		`SELECT * FROM active_rollouts;`,
		`SELECT rollout_id, image_name, old_tag, new_tag, strategy, status, current_batch, total_devices,
    updated_devices, failed_devices, created_at FROM image_rollouts ORDER BY created_at DESC LIMIT 10;`,
		`SELECT d.device_name, drs.device_uuid, drs.batch_number, drs.status, drs.old_image_tag, drs.new_image_tag,
    drs.scheduled_at FROM device_rollout_status drs JOIN devices d ON drs.device_uuid = d.uuid
    ORDER BY drs.batch_number, d.device_name;`,
		`SELECT rollout_id, device_uuid, event_type, message, timestamp FROM rollout_events ORDER BY timestamp DESC LIMIT 50;`,
		`SELECT uuid, device_name, fleet_id, tags FROM devices;`,
		`SELECT device_uuid FROM device_target_state; SELECT device_uuid FROM device_current_state;`,
	}
	for _, q := range seed {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("seed SQL failed: %v\n%s", err, q)
		}
	}
	// The inserted policy carries the defaults the planner relies on.
	var batches, minSample int
	var pct []int32
	if err := conn.QueryRow(ctx, `SELECT staged_batches, min_sample_size, batch_percentages FROM image_update_policies`).Scan(&batches, &minSample, &pct); err != nil {
		t.Fatal(err)
	}
	if batches != 3 || pct != nil {
		t.Fatalf("seed policy: %d batches, percentages %v", batches, pct)
	}
}
