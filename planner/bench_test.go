package planner

import (
	"context"
	"fmt"
	"testing"

	"github.com/fleetshift/fleetshift/shared/pgtest"
)

// BenchmarkPlan100k plans (and writes) a rollout over 100,000 devices per iteration. Run it with
// -benchtime=1x; seeding the fleet is not timed.
func BenchmarkPlan100k(b *testing.B) {
	db := pgtest.New(b)
	const n = 100_000
	devs := make([]device, n)
	for i := range devs {
		devs[i] = device{uuid: fmt.Sprintf("dev-%06d", i), images: []string{"acme/app:1.0"}}
	}
	seed(b, db, devs...)
	policy(b, db, map[string]string{"image_pattern": "'acme/app'", "update_strategy": "'staged'"})
	svc := newService(db)
	i := 0
	for b.Loop() {
		i++
		res, err := svc.HandlePush(context.Background(), push(fmt.Sprintf("ev-%d", i), fmt.Sprintf("acme/app:2.%d", i)))
		if err != nil {
			b.Fatal(err)
		}
		if res.Devices != n {
			b.Fatalf("%d devices", res.Devices)
		}
	}
}
