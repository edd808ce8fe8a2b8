package planner

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/fleetshift/fleetshift/shared/apierr"
	"github.com/fleetshift/fleetshift/shared/match"
	"github.com/fleetshift/fleetshift/shared/pgtest"
)

const digestA = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
const digestB = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"

func TestWinningPolicy(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	broad := policy(t, db, map[string]string{"image_pattern": "'acme/*'"})
	exact := policy(t, db, map[string]string{"image_pattern": "'acme/app'", "update_strategy": "'staged'"})
	disabled := policy(t, db, map[string]string{"image_pattern": "'acme/app:1.1'", "enabled": "false"})
	hiPrio := policy(t, db, map[string]string{"image_pattern": "'docker.io/acme/web'", "priority": "5"})
	loPrio := policy(t, db, map[string]string{"image_pattern": "'acme/web'", "priority": "1"})
	sameA := policy(t, db, map[string]string{"image_pattern": "'acme/api'"})
	_ = policy(t, db, map[string]string{"image_pattern": "'docker.io/acme/api'"})
	semver := policy(t, db, map[string]string{"image_pattern": "'acme/svc'", "tag_policy": "'semver'", "semver_range": "'>=2.0.0 <3.0.0'"})
	evil := policy(t, db, map[string]string{"image_pattern": "'myapp:*'"})
	_ = loPrio
	cases := []struct {
		image string
		want  int64 // 0: no policy
	}{
		{"acme/app:1.1", exact},    // most specific wins over acme/*; the disabled acme/app:1.1 is ignored
		{"acme/other:1", broad},    // only acme/* matches
		{"acme/web:1", hiPrio},     // same specificity: higher priority wins
		{"acme/api:1", sameA},      // same specificity and priority: lowest id wins
		{"acme/svc:2.4.0", semver}, // semver policy admits a tag inside its range
		{"acme/svc:3.0.0", broad},  // outside the range the semver policy does not apply
		{"acme/svc:latest", broad}, // nor to a non-semver tag
		{"evilacme/app:1", 0},      // anchored
		{"acme/a/b:1", 0},          // * stays within one segment
		{"myapp-evil:1", 0},        // myapp:* is not a prefix
		{"myapp:1", evil},
		{"ghcr.io/acme/app:1", 0}, // another registry
	}
	for _, c := range cases {
		p, err := Plan(ctx, db.Pool, push("e", c.image))
		if err != nil {
			t.Fatalf("plan %s: %v", c.image, err)
		}
		got := int64(0)
		if p.Policy != nil {
			got = p.Policy.ID
		} else if p.Reason != ReasonNoPolicy {
			t.Errorf("%s: no policy but reason %q", c.image, p.Reason)
		}
		if got != c.want {
			t.Errorf("%s: policy %d, want %d", c.image, got, c.want)
		}
	}
	_ = disabled
}

func TestPlanAffectedDevices(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	seed(t, db,
		device{uuid: "a1", fleet: "f1", tags: []string{"eu", "edge"}, images: []string{"acme/app:1.0"}},
		device{uuid: "a2", fleet: "f1", tags: []string{"eu"}, images: []string{"docker.io/acme/app:1.0", "redis:7"}},
		device{uuid: "a3", fleet: "f2", tags: []string{"eu", "edge"}, images: []string{"acme/app:0.9"}},
		device{uuid: "a4", fleet: "f1", tags: []string{"eu", "edge"}, images: []string{"acme/app:1.1@" + digestA}},
		device{uuid: "a5", fleet: "f1", tags: []string{"eu", "edge"}, images: []string{"acme/app:1.1"}},
		device{uuid: "a6", fleet: "f1", tags: []string{"eu", "edge"}, images: []string{"acme/app:2.0-beta"}},
		device{uuid: "o1", fleet: "f1", tags: []string{"eu", "edge"}, images: []string{"acme/other:1.0"}},
		device{uuid: "o2", fleet: "f1", tags: []string{"eu", "edge"}, images: []string{"evilacme/app:1.0"}},
	)
	policy(t, db, map[string]string{"image_pattern": "'acme/app:1.*'", "fleet_id": "'f1'", "device_tags": "'{edge}'"})
	p, err := Plan(ctx, db.Pool, push("e1", "acme/app:1.1@"+digestA))
	if err != nil {
		t.Fatal(err)
	}
	if p.NewImage != "acme/app:1.1@"+digestA {
		t.Fatalf("new image %q", p.NewImage)
	}
	wantDevices := []DevicePlan{
		{DeviceUUID: "a1", Batch: 1, OldImage: "acme/app:1.0", OldTag: "1.0"},
		{DeviceUUID: "a5", Batch: 1, OldImage: "acme/app:1.1", OldTag: "1.1"}, // same tag, new digest
	}
	if !slices.Equal(p.Devices, wantDevices) {
		t.Errorf("devices %+v, want %+v", p.Devices, wantDevices)
	}
	wantExcluded := []Exclusion{
		{"a2", ReasonTags},
		{"a3", ReasonFleet},
		{"a4", ReasonAlreadyOnImage},
		{"a6", ReasonTagNotMatched},
	}
	if !slices.Equal(p.Excluded, wantExcluded) {
		t.Errorf("excluded %+v, want %+v", p.Excluded, wantExcluded)
	}
	if p.OldTag() != "1.0" {
		t.Errorf("old tag %q", p.OldTag())
	}
}

func TestPlanFiltersUUIDsAndRevoked(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	seed(t, db,
		device{uuid: "d1", images: []string{"nginx:1.24"}},
		device{uuid: "d2", images: []string{"docker.io/library/nginx:1.24"}},
		device{uuid: "d3", images: []string{"nginx:1.24"}},
		device{uuid: "d4", images: []string{"nginx:1.24"}},
	)
	if _, err := db.Pool.Exec(ctx, `UPDATE devices SET revoked_at = now() WHERE uuid = 'd4'`); err != nil {
		t.Fatal(err)
	}
	policy(t, db, map[string]string{"image_pattern": "'nginx'", "device_uuids": "'{d1,d2,d4}'"})
	p, err := Plan(ctx, db.Pool, push("e", "docker.io/library/nginx:1.25"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range p.Devices {
		got = append(got, d.DeviceUUID)
	}
	if !slices.Equal(got, []string{"d1", "d2"}) {
		t.Errorf("devices %v", got)
	}
	if !slices.Equal(p.Excluded, []Exclusion{{"d3", ReasonUUIDs}, {"d4", ReasonRevoked}}) {
		t.Errorf("excluded %+v", p.Excluded)
	}
	if p.Image.Familiar != "nginx" || p.NewImage != "nginx:1.25" {
		t.Errorf("image %+v new %q", p.Image, p.NewImage)
	}
}

func TestPlanSemverPerDevice(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	seed(t, db,
		device{uuid: "s1", images: []string{"acme/app:1.0.0"}},
		device{uuid: "s2", images: []string{"acme/app:v1.5.0"}},
		device{uuid: "s3", images: []string{"acme/app:2.0.0"}},  // already newer: left alone
		device{uuid: "s4", images: []string{"acme/app:latest"}}, // not semver: excluded with a reason
		device{uuid: "s5", images: []string{"acme/app:1.9.0"}},  // same version
		device{uuid: "s6", images: []string{"acme/app:1.9.0-rc.1"}},
	)
	policy(t, db, map[string]string{"image_pattern": "'acme/app'", "tag_policy": "'semver'", "semver_range": "'^1'"})
	p, err := Plan(ctx, db.Pool, push("e", "acme/app:v1.9.0"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range p.Devices {
		got = append(got, d.DeviceUUID+"="+d.OldTag)
	}
	if !slices.Equal(got, []string{"s1=1.0.0", "s2=v1.5.0", "s6=1.9.0-rc.1"}) {
		t.Errorf("devices %v", got)
	}
	want := []Exclusion{{"s3", match.ReasonNotNewer}, {"s4", match.ReasonCurrentNotSemver}, {"s5", match.ReasonNotNewer}}
	if !slices.Equal(p.Excluded, want) {
		t.Errorf("excluded %+v, want %+v", p.Excluded, want)
	}
	// A pre-release push: the range names none, so no policy applies.
	p, err = Plan(ctx, db.Pool, push("e", "acme/app:1.10.0-rc.1"))
	if err != nil || p.Policy != nil {
		t.Fatalf("pre-release admitted: %+v %v", p.Policy, err)
	}
	// Outside the range.
	if p, err = Plan(ctx, db.Pool, push("e", "acme/app:2.1.0")); err != nil || p.Policy != nil {
		t.Fatalf("2.1.0 admitted by ^1: %v", err)
	}
}

func TestPreviewInvalidInput(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	for _, c := range []struct{ image, digest, field string }{
		{"", "", "image"},
		{"acme/app", "", "image"},
		{"Not An Image!", "", "image"},
		{"acme/app:1", "md5:xyz", "digest"},
	} {
		_, err := Preview(ctx, db.Pool, c.image, c.digest)
		var ae *apierr.Error
		if !errors.As(err, &ae) || !errors.Is(err, apierr.ErrInvalid) || ae.Field != c.field {
			t.Errorf("Preview(%q, %q): %v, want invalid %s", c.image, c.digest, err, c.field)
		}
	}
}

// TestPreviewEqualsRollout checks, for several policies and filters, that the real rollout of a push does
// exactly what its preview said, and that the preview wrote nothing.
func TestPreviewEqualsRollout(t *testing.T) {
	t.Parallel()
	var devs []device
	for i := range 40 {
		d := device{uuid: fmt.Sprintf("dev-%02d", i), fleet: []string{"north", "south"}[i%2]}
		switch i % 5 {
		case 0:
			d.tags = []string{"canary"}
		case 1:
			d.tags = []string{"canary", "eu"}
		}
		switch i % 7 {
		case 0:
			d.images = []string{"ghcr.io/org/app:2.0.0"}
		case 1:
			d.images = []string{"ghcr.io/org/app:latest", "postgres:15"}
		case 2:
			d.images = []string{"postgres:15"}
		case 3:
			d.images = []string{"ghcr.io/org/app:1.4.2"}
		default:
			d.images = []string{"ghcr.io/org/app:1.0.0"}
		}
		devs = append(devs, d)
	}
	scenarios := []struct {
		name   string
		policy map[string]string
		image  string
		digest string
	}{
		{"staged default", map[string]string{"image_pattern": "'ghcr.io/org/*'", "update_strategy": "'staged'"}, "ghcr.io/org/app:2.0.0", digestA},
		{"auto fleet", map[string]string{"image_pattern": "'ghcr.io/org/app'", "fleet_id": "'north'"}, "ghcr.io/org/app:2.1.0", ""},
		{"tags and percentages", map[string]string{"image_pattern": "'ghcr.io/**'", "update_strategy": "'staged'",
			"device_tags": "'{canary}'", "batch_percentages": "'{25,100}'"}, "ghcr.io/org/app:3.0.0", ""},
		{"semver manual", map[string]string{"image_pattern": "'ghcr.io/org/app'", "update_strategy": "'manual'",
			"staged_batches": "4", "tag_policy": "'semver'", "semver_range": "'>=1.0.0'"}, "ghcr.io/org/app:1.5.0", ""},
		{"uuids scheduled", map[string]string{"image_pattern": "'ghcr.io/org/app:*'", "update_strategy": "'scheduled'",
			"device_uuids": "'{dev-03,dev-04,dev-05,dev-10,dev-17}'", "maintenance_window_start": "'02:00'",
			"maintenance_window_end": "'04:00'"}, "ghcr.io/org/app:2.0.0", ""},
	}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			db := pgtest.New(t)
			ctx := context.Background()
			seed(t, db, devs...)
			policy(t, db, sc.policy)
			prev, err := Preview(ctx, db.Pool, sc.image, sc.digest)
			if err != nil {
				t.Fatal(err)
			}
			if prev.Policy == nil || prev.TotalDevices == 0 {
				t.Fatalf("preview affects nothing: %s", mustJSON(prev))
			}
			for _, table := range []string{"image_rollouts", "device_rollout_status", "rollout_events", "outbox", "planner_pushes"} {
				if n := count(t, db, "SELECT count(*) FROM "+table); n != 0 {
					t.Fatalf("preview wrote %d rows to %s", n, table)
				}
			}
			image := sc.image
			if sc.digest != "" {
				image += "@" + sc.digest
			}
			res, err := newService(db).HandlePush(ctx, push("ev-"+sc.name, image))
			if err != nil {
				t.Fatal(err)
			}
			if res.Outcome != OutcomePlanned || res.Status != prev.Status {
				t.Fatalf("result %+v, preview status %q", res, prev.Status)
			}
			rows := rolloutDevices(t, db, res.RolloutID)
			var previewed []deviceRow
			var sizes []int
			for _, b := range prev.Batches {
				sizes = append(sizes, b.Size)
				for _, d := range b.Devices {
					previewed = append(previewed, deviceRow{UUID: d.DeviceUUID, Status: "pending", OldTag: d.OldTag,
						NewTag: prev.Tag, OldImage: d.OldImage, NewImage: prev.Image, Batch: b.Batch})
				}
			}
			if !slices.Equal(rows, previewed) {
				t.Errorf("rollout devices\n%+v\npreview\n%+v", rows, previewed)
			}
			var batchSizes []int
			var total int
			var strategy string
			if err := db.Pool.QueryRow(ctx, `SELECT batch_sizes, total_devices, strategy FROM image_rollouts WHERE rollout_id = $1`,
				res.RolloutID).Scan(&batchSizes, &total, &strategy); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(batchSizes, sizes) || total != prev.TotalDevices || strategy != prev.Strategy {
				t.Errorf("rollout batches %v total %d strategy %s; preview %v %d %s", batchSizes, total, strategy, sizes, prev.TotalDevices, prev.Strategy)
			}
			if len(prev.Excluded)+prev.TotalDevices != count(t, db, `SELECT count(DISTINCT device_uuid) FROM device_images WHERE repository = 'ghcr.io/org/app'`) {
				t.Errorf("every device running the repository is either affected or excluded: %s", mustJSON(prev.Excluded))
			}
		})
	}
}
