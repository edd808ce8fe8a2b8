package healthwatch

import (
	"fmt"
	"testing"
)

// BenchmarkApplyReports measures applying a 1,000-device batch's reports, 500 per transaction, as the
// consumer does: each device goes to completed, counters and the batch gate follow.
func BenchmarkApplyReports(b *testing.B) {
	bd := setup(b, false)
	devs := bd.devices("bench", 1000, "fleet-bench", oldImg)
	s := bd.newService()
	reps := make([]report, len(devs))
	for i, d := range devs {
		reps[i] = decodeReport(b, d, web(d, newImg, "running", "healthy"))
	}
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		id := bd.rollout(rolloutSpec{devices: devs, newImage: fmt.Sprintf("acme/app:2.%d", i)})
		for j, d := range devs {
			reps[j] = decodeReport(b, d, web(d, fmt.Sprintf("acme/app:2.%d", i), "running", "healthy"))
		}
		b.StartTimer()
		for k := 0; k < len(reps); k += 500 {
			if err := s.applyReports(bd.ctx, reps[k:min(k+500, len(reps))]); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		if st := bd.rolloutStatus(id); st != rolloutCompleted {
			b.Fatalf("rollout %s", st)
		}
		b.StartTimer()
	}
}
