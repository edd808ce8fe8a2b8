package policy

import (
	"math"
	"time"
)

// What the rate fields of a rate policy mean to healthwatch's rate timer. A policy snapshot read with
// FromJSON has them all set when it was validated as a rate policy; the accessors below still fall back
// to the defaults so an odd snapshot never stalls a rollout.

// RateBase is rate_base_per_minute (at least 1, at most MaxRatePerMinute).
func (p Policy) RateBase() int {
	if p.RateBasePerMinute == nil {
		return 1
	}
	return int(min(max(*p.RateBasePerMinute, 1), MaxRatePerMinute))
}

// RateFactor is rate_increment_factor (DefaultRateIncrementFactor when unset or out of range).
func (p Policy) RateFactor() float64 {
	if p.RateIncrementFactor == nil || math.IsNaN(*p.RateIncrementFactor) || *p.RateIncrementFactor <= 1 ||
		*p.RateIncrementFactor > MaxRateIncrementFactor {
		return DefaultRateIncrementFactor
	}
	return *p.RateIncrementFactor
}

// RateCriterion is rate_increase_criteria (DefaultRateIncreaseCriteria when unset or unknown).
func (p Policy) RateCriterion() string {
	if p.RateIncreaseCriteria == nil || (*p.RateIncreaseCriteria != RateNotified && *p.RateIncreaseCriteria != RateSucceeded) {
		return DefaultRateIncreaseCriteria
	}
	return *p.RateIncreaseCriteria
}

// RateThreshold is rate_increase_threshold (the base rate when unset).
func (p Policy) RateThreshold() int {
	if p.RateIncreaseThreshold == nil || *p.RateIncreaseThreshold < 1 {
		return p.RateBase()
	}
	return int(*p.RateIncreaseThreshold)
}

// RateMax is rate_maximum_per_minute (DefaultRateMaximum of the base when unset), never below the base.
func (p Policy) RateMax() int {
	if p.RateMaximumPerMinute == nil {
		return DefaultRateMaximum(p.RateBase())
	}
	return int(min(max(*p.RateMaximumPerMinute, int32(p.RateBase())), MaxRatePerMinute))
}

// DefaultRateMaximum is rate_maximum_per_minute left out: DefaultRateMaximumTimes the base rate, at
// most MaxRatePerMinute.
func DefaultRateMaximum(base int) int {
	return min(base*DefaultRateMaximumTimes, MaxRatePerMinute)
}

// RatePace is how a rate of perMinute devices a minute is dispatched: chunks of ceil(perMinute/60)
// devices, one chunk every 60 s × chunk / perMinute. Up to 60 a minute that is one device every
// 60/perMinute seconds; above, about one chunk a second (never less than a second apart), and the
// chunks add up to exactly perMinute devices a minute.
func RatePace(perMinute int) (chunk int, every time.Duration) {
	perMinute = min(max(perMinute, 1), MaxRatePerMinute)
	chunk = (perMinute + 59) / 60
	every = time.Duration(int64(time.Minute) * int64(chunk) / int64(perMinute))
	return chunk, every
}

// RateRaise is one raise of a rate rollout's rate: From -> To, when Count devices had met the
// policy's rate_increase_criteria.
type RateRaise struct {
	From, To, Count int
}

// RaiseRate applies the ramp to a rate rollout at rate whose criteria count (devices notified or
// succeeded, per RateCriterion) is count and whose last raise was at count mark: each time
// rate_increase_threshold more devices met the criteria since the last raise, the rate becomes
// ceil(rate × rate_increment_factor) (at least one more), at most rate_maximum_per_minute. It returns
// the new rate, the new mark and the raises in order; at the maximum it raises no more.
func (p Policy) RaiseRate(rate, count, mark int) (int, int, []RateRaise) {
	limit, threshold, factor := p.RateMax(), p.RateThreshold(), p.RateFactor()
	rate = min(max(rate, 1), MaxRatePerMinute)
	var raises []RateRaise
	for rate < limit && count-mark >= threshold {
		// The small epsilon keeps a product that is whole but computed just above it (10 × 1.1) whole.
		next := int(math.Ceil(float64(rate)*factor - 1e-9))
		next = min(max(next, rate+1), limit)
		mark += threshold
		raises = append(raises, RateRaise{From: rate, To: next, Count: mark})
		rate = next
	}
	return rate, mark, raises
}

// RateDispatchTime is the least time a rate policy takes to dispatch n devices: from its first chunk to
// its last, when every raise comes as early as it can (each device meeting rate_increase_criteria as
// soon as it is dispatched). With criteria succeeded the raises wait for health reports, so the real
// time is longer.
func (p Policy) RateDispatchTime(n int) time.Duration {
	var total time.Duration
	rate, mark, dispatched := p.RateBase(), 0, 0
	for dispatched < n {
		rate, mark, _ = p.RaiseRate(rate, dispatched, mark)
		chunk, every := RatePace(rate)
		dispatched += chunk
		if dispatched < n {
			total += every
		}
	}
	return total
}
