package policy_test

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/fleetshift/fleetshift/shared/policy"
)

// TestRateFieldsDefaults: a rate policy needs only its base rate; the other rate fields take their
// defaults (factor 2, criteria succeeded, threshold = base, maximum = 10 x base capped at 1,000,000).
// Every other strategy keeps the rate fields null, and null rate fields are accepted on it (a GET body
// of any policy can be PUT back).
func TestRateFieldsDefaults(t *testing.T) {
	t.Parallel()
	p, err := policy.Decode([]byte(`{"image_pattern":"acme/app:*","update_strategy":"rate","rate_base_per_minute":6}`))
	if err != nil {
		t.Fatal(err)
	}
	if *p.RateBasePerMinute != 6 || *p.RateIncrementFactor != 2 || *p.RateIncreaseCriteria != "succeeded" ||
		*p.RateIncreaseThreshold != 6 || *p.RateMaximumPerMinute != 60 {
		t.Fatalf("defaults: %s", mustJSON(t, p))
	}
	if got := p.BatchSizes(25); !reflect.DeepEqual(got, []int{25}) {
		t.Fatalf("a rate rollout is one batch: %v", got)
	}
	big, err := policy.Decode([]byte(`{"image_pattern":"a","update_strategy":"rate","rate_base_per_minute":200000}`))
	if err != nil || *big.RateMaximumPerMinute != policy.MaxRatePerMinute {
		t.Fatalf("default maximum capped at %d: %v %v", policy.MaxRatePerMinute, big.RateMaximumPerMinute, err)
	}
	full, err := policy.Decode([]byte(`{"image_pattern":"a","update_strategy":"rate","rate_base_per_minute":1000000,
		"rate_increment_factor":5,"rate_increase_criteria":"notified","rate_increase_threshold":2147483647,
		"rate_maximum_per_minute":1000000}`))
	if err != nil || *full.RateIncrementFactor != 5 || *full.RateIncreaseThreshold != 2147483647 {
		t.Fatalf("the limits themselves are valid: %+v %v", full, err)
	}

	staged, err := policy.Decode([]byte(`{"image_pattern":"acme/app:*","update_strategy":"staged"}`))
	if err != nil {
		t.Fatal(err)
	}
	if staged.RateBasePerMinute != nil || staged.RateIncrementFactor != nil || staged.RateIncreaseCriteria != nil ||
		staged.RateIncreaseThreshold != nil || staged.RateMaximumPerMinute != nil {
		t.Fatalf("a staged policy has rate fields: %s", mustJSON(t, staged))
	}
	back, err := policy.Decode(mustJSON(t, staged))
	if err != nil || !reflect.DeepEqual(back, staged) {
		t.Fatalf("a staged policy's own JSON (rate fields null) is refused or changed: %v\n%s", err, mustJSON(t, back))
	}
	// And a rate policy's own JSON reads back as it was.
	again, err := policy.Decode(mustJSON(t, p))
	if err != nil || !reflect.DeepEqual(again, p) {
		t.Fatalf("a rate policy's own JSON: %v\n%s", err, mustJSON(t, again))
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func ratePolicy(t *testing.T, body string) policy.Policy {
	t.Helper()
	p, err := policy.Decode([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRatePace: up to 60 a minute one device every 60/rate seconds; above, chunks of ceil(rate/60) at
// least a second apart that add up to exactly the rate.
func TestRatePace(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		rate, chunk int
		every       time.Duration
	}{
		{1, 1, time.Minute}, {6, 1, 10 * time.Second}, {24, 1, 2500 * time.Millisecond}, {60, 1, time.Second},
		{61, 2, 120 * time.Second / 61}, {120, 2, time.Second}, {6000, 100, time.Second},
		{1_000_000, 16667, 60 * 16667 * time.Second / 1_000_000},
	} {
		chunk, every := policy.RatePace(c.rate)
		if chunk != c.chunk || every != c.every {
			t.Errorf("RatePace(%d) = %d every %s, want %d every %s", c.rate, chunk, every, c.chunk, c.every)
		}
		if every < time.Second {
			t.Errorf("RatePace(%d): chunks %s apart, less than a second", c.rate, every)
		}
		perMinute := float64(chunk) * float64(time.Minute) / float64(every)
		if perMinute < float64(c.rate)-0.01 || perMinute > float64(c.rate)+0.01 {
			t.Errorf("RatePace(%d) dispatches %.3f a minute", c.rate, perMinute)
		}
	}
}

// TestRaiseRate: base 6, factor 2, threshold 6, maximum 24: raised to 12 at 6 devices, to 24 at 12,
// never above 24; several thresholds crossed at once raise several times; a factor whose product is
// not whole rounds up, by at least one.
func TestRaiseRate(t *testing.T) {
	t.Parallel()
	p := ratePolicy(t, `{"image_pattern":"a","update_strategy":"rate","rate_base_per_minute":6,
		"rate_increase_criteria":"notified","rate_increase_threshold":6,"rate_maximum_per_minute":24}`)
	rate, mark, raises := p.RaiseRate(6, 5, 0)
	if rate != 6 || mark != 0 || len(raises) != 0 {
		t.Fatalf("below the threshold: %d %d %v", rate, mark, raises)
	}
	rate, mark, raises = p.RaiseRate(6, 6, 0)
	if rate != 12 || mark != 6 || !reflect.DeepEqual(raises, []policy.RateRaise{{From: 6, To: 12, Count: 6}}) {
		t.Fatalf("at 6: %d %d %v", rate, mark, raises)
	}
	rate, mark, raises = p.RaiseRate(rate, 11, mark)
	if rate != 12 || mark != 6 || len(raises) != 0 {
		t.Fatalf("at 11: %d %d %v", rate, mark, raises)
	}
	rate, mark, raises = p.RaiseRate(rate, 12, mark)
	if rate != 24 || mark != 12 || len(raises) != 1 {
		t.Fatalf("at 12: %d %d %v", rate, mark, raises)
	}
	if r, m, more := p.RaiseRate(rate, 100, mark); r != 24 || m != 12 || len(more) != 0 {
		t.Fatalf("at the maximum: %d %d %v", r, m, more)
	}
	// 13 devices at once from the start: two raises, 6 -> 12 -> 24.
	if r, m, more := p.RaiseRate(6, 13, 0); r != 24 || m != 12 ||
		!reflect.DeepEqual(more, []policy.RateRaise{{From: 6, To: 12, Count: 6}, {From: 12, To: 24, Count: 12}}) {
		t.Fatalf("two thresholds at once: %d %d %v", r, m, more)
	}
	odd := ratePolicy(t, `{"image_pattern":"a","update_strategy":"rate","rate_base_per_minute":10,
		"rate_increment_factor":1.1,"rate_increase_threshold":1,"rate_maximum_per_minute":1000}`)
	if r, _, _ := odd.RaiseRate(10, 1, 0); r != 11 {
		t.Fatalf("10 x 1.1 = %d, want 11", r)
	}
	if r, _, _ := odd.RaiseRate(1, 1, 0); r != 2 {
		t.Fatalf("1 x 1.1 rounds up to %d, want 2", r)
	}
}

// TestRateDispatchTime: the least dispatch time of 18 devices at base 6 (one every 10 s), 12 from the
// 6th (every 5 s) and 24 from the 12th (every 2.5 s): 6 x 10 + 6 x 5 + 5 x 2.5 s after the first chunk.
func TestRateDispatchTime(t *testing.T) {
	t.Parallel()
	p := ratePolicy(t, `{"image_pattern":"a","update_strategy":"rate","rate_base_per_minute":6,
		"rate_increase_criteria":"notified","rate_increase_threshold":6,"rate_maximum_per_minute":24}`)
	if got, want := p.RateDispatchTime(18), 60*time.Second+30*time.Second+12500*time.Millisecond; got != want {
		t.Fatalf("RateDispatchTime(18) = %s, want %s", got, want)
	}
	if got := p.RateDispatchTime(1); got != 0 {
		t.Fatalf("one device goes out at once: %s", got)
	}
}
