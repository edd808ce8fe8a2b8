package policy_test

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/pgtest"
	"github.com/fleetshift/fleetshift/shared/policy"
)

// TestValidateNamesFieldAndShape: every bad field is a 400 that names the field and the JSON shape it
// expects, never a Go type.
func TestValidateNamesFieldAndShape(t *testing.T) {
	t.Parallel()
	cases := []struct {
		body, field, says string
	}{
		{`{}`, "image_pattern", "required"},
		{`{"image_pattern":"acme/app:*","update_strategy":"yolo"}`, "update_strategy", "expected one of auto, staged, manual, scheduled"},
		{`{"image_pattern":"acme/app:*","staged_batches":0}`, "staged_batches", "expected an integer from 1 to 100"},
		{`{"image_pattern":"acme/app:*","staged_batches":3000000000}`, "staged_batches", "integer from -2147483648 to 2147483647"},
		{`{"image_pattern":"acme/app:*","staged_batches":2.5}`, "staged_batches", "integer"},
		{`{"image_pattern":"acme/app:*","staged_batches":"3"}`, "staged_batches", "expected integer"},
		{`{"image_pattern":"acme/app:*","batch_percentages":[50,40,100]}`, "batch_percentages", "increasing integers from 1 to 100"},
		{`{"image_pattern":"acme/app:*","batch_percentages":[10,50]}`, "batch_percentages", "last percentage to be 100"},
		{`{"image_pattern":"acme/app:*","batch_percentages":[]}`, "batch_percentages", "array of 1 to 100"},
		{`{"image_pattern":"acme/app:*","batch_delay_minutes":-1}`, "batch_delay_minutes", "expected an integer from 0 to 525600"},
		{`{"image_pattern":"acme/app:*","batch_delay_seconds":2147483647}`, "batch_delay_seconds", "expected an integer from 0 to 31536000"},
		{`{"image_pattern":"acme/app:*","health_check_timeout_seconds":0}`, "health_check_timeout_seconds", "expected an integer from 1 to 2592000"},
		{`{"image_pattern":"acme/app:*","health_check_config":[1]}`, "health_check_config", "expected an object"},
		{`{"image_pattern":"acme/app:*","health_check_config":{"cmd":"a\u0000b"}}`, "health_check_config", "NUL"},
		{`{"image_pattern":"acme/app:*","max_failure_rate":1.5}`, "max_failure_rate", "expected a number from 0 to 1"},
		{`{"image_pattern":"acme/app:*","max_failure_rate":"high"}`, "max_failure_rate", "expected number"},
		{`{"image_pattern":"acme/app:*","min_sample_size":-1}`, "min_sample_size", "expected an integer from 0 to 2147483647"},
		{`{"image_pattern":"acme/app:*","maintenance_window_start":"25:00","maintenance_window_end":"03:00"}`, "maintenance_window_start", "HH:MM"},
		{`{"image_pattern":"acme/app:*","maintenance_window_start":"02:00"}`, "maintenance_window_end", "needs both"},
		{`{"image_pattern":"acme/app:*","update_strategy":"scheduled"}`, "maintenance_window_start", "needs a maintenance window"},
		{`{"image_pattern":"acme/app:*","timezone":"Mars/Olympus"}`, "timezone", "IANA name"},
		{`{"image_pattern":"acme/app:*","fleet_id":"` + strings.Repeat("f", 200) + `"}`, "fleet_id", "at most 128 bytes"},
		{`{"image_pattern":"acme/app:*","device_tags":5}`, "device_tags", "array of strings or an object"},
		{`{"image_pattern":"acme/app:*","device_uuids":["ok","not ok"]}`, "device_uuids", "expected device uuids"},
		{`{"image_pattern":"acme/app:*","device_uuids":"dev-1"}`, "device_uuids", "expected array"},
		{`{"image_pattern":"acme/app:*","priority":99999999999}`, "priority", "integer from -2147483648 to 2147483647"},
		{`{"image_pattern":"acme/app:*","enabled":"yes"}`, "enabled", "expected boolean"},
		{`{"image_pattern":"acme/app:*","description":"` + strings.Repeat("d", 2001) + `"}`, "description", "at most 2000 bytes"},
		{`{"image_pattern":"acme/app:*","description":"a\u0000b"}`, "description", "NUL"},
		{`{"image_pattern":"acme/\u0000app"}`, "image_pattern", "NUL"},
		{"{\"image_pattern\":\"acme/app\xff\"}", "image_pattern", "UTF-8"},
		{`{"image_pattern":"acme/app:*","tag_policy":"regex"}`, "tag_policy", `expected "glob" or "semver"`},
		{`{"image_pattern":"acme/app:*","semver_range":">=1.0"}`, "semver_range", `needs tag_policy "semver"`},
		{`{"image_pattern":"acme/app:*","colour":"blue"}`, "colour", "unknown field"},
		{`{"image_pattern":"acme/app:*","update_strategy":"rate"}`, "rate_base_per_minute", "required for update_strategy \"rate\""},
		{`{"image_pattern":"acme/app:*","update_strategy":"rate","rate_base_per_minute":0}`, "rate_base_per_minute", "expected an integer from 1 to 1000000"},
		{`{"image_pattern":"acme/app:*","update_strategy":"rate","rate_base_per_minute":1000001}`, "rate_base_per_minute", "expected an integer from 1 to 1000000"},
		{`{"image_pattern":"acme/app:*","update_strategy":"rate","rate_base_per_minute":3000000000}`, "rate_base_per_minute", "integer from -2147483648 to 2147483647"},
		{`{"image_pattern":"acme/app:*","update_strategy":"rate","rate_base_per_minute":6,"rate_increment_factor":1}`, "rate_increment_factor", "above 1 and at most 5"},
		{`{"image_pattern":"acme/app:*","update_strategy":"rate","rate_base_per_minute":6,"rate_increment_factor":5.5}`, "rate_increment_factor", "above 1 and at most 5"},
		{`{"image_pattern":"acme/app:*","update_strategy":"rate","rate_base_per_minute":6,"rate_increment_factor":"2"}`, "rate_increment_factor", "expected number"},
		{`{"image_pattern":"acme/app:*","update_strategy":"rate","rate_base_per_minute":6,"rate_increase_criteria":"healthy"}`, "rate_increase_criteria", `expected "notified" or "succeeded"`},
		{`{"image_pattern":"acme/app:*","update_strategy":"rate","rate_base_per_minute":6,"rate_increase_threshold":0}`, "rate_increase_threshold", "expected an integer from 1 to 2147483647"},
		{`{"image_pattern":"acme/app:*","update_strategy":"rate","rate_base_per_minute":6,"rate_increase_threshold":2147483648}`, "rate_increase_threshold", "integer from -2147483648 to 2147483647"},
		{`{"image_pattern":"acme/app:*","update_strategy":"rate","rate_base_per_minute":6,"rate_maximum_per_minute":5}`, "rate_maximum_per_minute", "from rate_base_per_minute (6) to 1000000"},
		{`{"image_pattern":"acme/app:*","update_strategy":"rate","rate_base_per_minute":6,"rate_maximum_per_minute":1000001}`, "rate_maximum_per_minute", "from rate_base_per_minute (6) to 1000000"},
		{`{"image_pattern":"acme/app:*","update_strategy":"staged","rate_base_per_minute":6}`, "rate_base_per_minute", `only applies to update_strategy "rate"`},
		{`{"image_pattern":"acme/app:*","rate_increment_factor":2}`, "rate_increment_factor", `only applies to update_strategy "rate"`},
		{`{"image_pattern":"acme/app:*","update_strategy":"manual","rate_increase_criteria":"notified"}`, "rate_increase_criteria", `only applies to update_strategy "rate"`},
		{`{"image_pattern":"acme/app:*","update_strategy":"scheduled","maintenance_window_start":"22:00","maintenance_window_end":"02:00","rate_increase_threshold":3}`, "rate_increase_threshold", `only applies`},
		{`{"image_pattern":"acme/app:*","update_strategy":"auto","rate_maximum_per_minute":60}`, "rate_maximum_per_minute", `only applies`},
		{`{"image_pattern":"acme/app:*","download_ahead":true}`, "download_ahead", `needs update_strategy "scheduled"`},
		{`{"image_pattern":"acme/app:*","update_strategy":"staged","download_ahead":true}`, "download_ahead", `got "staged"`},
		{`{"image_pattern":"acme/app:*","download_ahead":"yes"}`, "download_ahead", "expected boolean"},
	}
	for _, c := range cases {
		_, err := policy.Decode([]byte(c.body))
		if !errors.Is(err, apierr.ErrInvalid) {
			t.Errorf("%s: want a 400, got %v", c.body, err)
			continue
		}
		var ae *apierr.Error
		if !errors.As(err, &ae) {
			t.Errorf("%s: not an apierr.Error: %v", c.body, err)
			continue
		}
		if ae.Field != c.field && !strings.HasPrefix(ae.Field, c.field+".") {
			t.Errorf("%s: field %q, want %q (%s)", c.body, ae.Field, c.field, ae.Message)
		}
		if !strings.Contains(ae.Message, c.says) {
			t.Errorf("%s: message %q does not say %q", c.body, ae.Message, c.says)
		}
		for _, goType := range []string{"int32", "int64", "float64", "*string", "[]string", "struct", "policy.", "Input"} {
			if strings.Contains(ae.Message, goType) {
				t.Errorf("%s: message %q names a Go type (%s)", c.body, ae.Message, goType)
			}
		}
	}
}

// TestValidateFillsDefaults: an operator who writes only a pattern gets Defaults.
func TestValidateFillsDefaults(t *testing.T) {
	t.Parallel()
	p, err := policy.Decode([]byte(`{"image_pattern":" acme/app:* ","id":7,"created_at":"x"}`))
	if err != nil {
		t.Fatal(err)
	}
	want := policy.Defaults()
	want.ImagePattern = "acme/app:*"
	if !reflect.DeepEqual(p, want) {
		t.Fatalf("got %+v\nwant %+v", p, want)
	}
}

// TestDefaultsMatchSchema: a policy row inserted with only a pattern (the seed's SQL path) reads back as
// Defaults, so the column defaults and the Go defaults cannot drift apart; and a validated policy
// written with Columns/Args reads back unchanged.
func TestDefaultsMatchSchema(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	var id int64
	if err := db.Pool.QueryRow(ctx, `INSERT INTO image_update_policies (image_pattern) VALUES ('acme/app:*') RETURNING id`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	got, err := policy.Load(ctx, db.Pool, id)
	if err != nil {
		t.Fatal(err)
	}
	want := policy.Defaults()
	want.ID, want.ImagePattern = id, "acme/app:*"
	if !reflect.DeepEqual(*got, want) {
		t.Fatalf("column defaults %+v\nGo defaults %+v", *got, want)
	}

	in, err := policy.Decode([]byte(`{"image_pattern":"acme/*","update_strategy":"scheduled","batch_percentages":[5,100],
		"batch_delay_seconds":30,"health_check_config":{"http":"/health"},"max_failure_rate":0.5,"min_sample_size":4,
		"maintenance_window_start":"22:00","maintenance_window_end":"04:30","timezone":"Europe/Berlin","fleet_id":"f1",
		"device_tags":{"env":"prod"},"device_uuids":["d-1"],"priority":-3,"tag_policy":"semver","semver_range":">=1.0.0",
		"batch_approval":true,"description":"nightly","download_ahead":true}`))
	if err != nil {
		t.Fatal(err)
	}
	if !in.DownloadAhead {
		t.Fatal("download_ahead of a scheduled policy not kept")
	}
	if err := db.Pool.QueryRow(ctx, `INSERT INTO image_update_policies (`+policy.Columns+`) VALUES (`+policy.Placeholders+`)
		RETURNING id`, in.Args()...).Scan(&in.ID); err != nil {
		t.Fatal(err)
	}
	back, err := policy.Load(ctx, db.Pool, in.ID)
	if err != nil {
		t.Fatal(err)
	}
	var a, b any
	ja, _ := json.Marshal(in)
	jb, _ := json.Marshal(back)
	_ = json.Unmarshal(ja, &a)
	_ = json.Unmarshal(jb, &b)
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("written %s\nread back %s", ja, jb)
	}
	// A rate policy, with its defaults filled, reads back unchanged too.
	rate, err := policy.Decode([]byte(`{"image_pattern":"acme/rate:*","update_strategy":"rate","rate_base_per_minute":6,
		"rate_increment_factor":1.5,"rate_increase_criteria":"notified"}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Pool.QueryRow(ctx, `INSERT INTO image_update_policies (`+policy.Columns+`) VALUES (`+policy.Placeholders+`)
		RETURNING id`, rate.Args()...).Scan(&rate.ID); err != nil {
		t.Fatal(err)
	}
	rateBack, err := policy.Load(ctx, db.Pool, rate.ID)
	if err != nil {
		t.Fatal(err)
	}
	ja, _ = json.Marshal(rate)
	jb, _ = json.Marshal(rateBack)
	if string(ja) != string(jb) || *rateBack.RateIncreaseThreshold != 6 || *rateBack.RateMaximumPerMinute != 60 {
		t.Fatalf("rate policy written %s\nread back %s", ja, jb)
	}
	// The schema refuses what validation refuses: rate fields on another strategy, a rate policy
	// without its fields, a maximum below the base.
	for _, bad := range []string{
		`INSERT INTO image_update_policies (image_pattern, rate_base_per_minute) VALUES ('x', 5)`,
		`INSERT INTO image_update_policies (image_pattern, update_strategy) VALUES ('x', 'rate')`,
		`INSERT INTO image_update_policies (image_pattern, update_strategy, rate_base_per_minute, rate_increment_factor,
			rate_increase_criteria, rate_increase_threshold, rate_maximum_per_minute) VALUES ('x', 'rate', 10, 2, 'notified', 10, 9)`,
		`INSERT INTO image_update_policies (image_pattern, update_strategy, rate_base_per_minute, rate_increment_factor,
			rate_increase_criteria, rate_increase_threshold, rate_maximum_per_minute) VALUES ('x', 'rate', 10, 2, 'notified', 10, NULL)`,
	} {
		if _, err := db.Pool.Exec(ctx, bad); err == nil {
			t.Fatalf("the schema accepted %s", bad)
		}
	}
	if _, err := policy.Load(ctx, db.Pool, in.ID+1000); !errors.Is(err, policy.ErrNotFound) {
		t.Fatalf("missing policy: %v", err)
	}
}

// TestFromJSONLayers: later documents win field by field, missing fields fall back, unreadable
// documents are skipped, and the derived values follow.
func TestFromJSONLayers(t *testing.T) {
	t.Parallel()
	live := []byte(`{"health_check_timeout_seconds":60,"max_failure_rate":0.1,"batch_delay_minutes":2}`)
	snap := []byte(`{"max_failure_rate":0.4,"batch_delay_seconds":5,"health_check_config":{"http":"/h"}}`)
	p := policy.FromJSON(live, snap, []byte(`{"max_failure_rate":"oops"}`))
	if p.MaxFailureRate != 0.4 || p.HealthCheckTimeoutSeconds != 60 || p.MinSampleSize != policy.DefaultMinSampleSize {
		t.Fatalf("layers: %+v", p)
	}
	if p.BatchDelay() != 5*time.Second {
		t.Fatalf("batch delay %s: seconds win over minutes", p.BatchDelay())
	}
	hc := p.HealthCheck()
	if hc["http"] != "/h" || hc["health_check_timeout_seconds"] != float64(60) {
		t.Fatalf("health check %v", hc)
	}
	p.HealthCheckEnabled = false
	if p.HealthCheck() != nil {
		t.Fatal("health check handed out while checks are off")
	}
	if d := policy.FromJSON([]byte(`{"batch_delay_minutes":2147483647}`)).BatchDelay(); d != policy.MaxBatchDelayMinutes*time.Minute {
		t.Fatalf("an old snapshot's huge delay must be capped, not overflow: %s", d)
	}
	if !policy.FromJSON(nil).Exceeded(1, 4) || policy.FromJSON(nil).Exceeded(1, 5) || policy.FromJSON(nil).Exceeded(0, 0) {
		t.Fatal("default max_failure_rate 0.2")
	}
	if _, set, ok := policy.FromJSON([]byte(`{"maintenance_window_start":"22:00","maintenance_window_end":"04:00","timezone":"Nowhere/x"}`)).Window(); !set || ok {
		t.Fatal("an unreadable window is reported as such")
	}
	if got := policy.Defaults(); got.BatchSizes(10)[0] != 10 {
		t.Fatalf("auto is one batch: %v", got.BatchSizes(10))
	}
	staged := policy.Defaults()
	staged.UpdateStrategy = policy.Staged
	if got := staged.BatchSizes(10); !reflect.DeepEqual(got, []int{1, 4, 5}) {
		t.Fatalf("staged default 10/50/100 of 10: %v", got)
	}
}
