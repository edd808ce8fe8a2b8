package streams

// Event types of rate rollouts.
const (
	// EventRolloutRateIncreased: a rate rollout's rate was raised (healthwatch's rate timer). Data:
	// from and to (devices a minute), criteria (notified or succeeded), count (devices that met it when
	// raised), threshold (rate_increase_threshold), dispatched (rate_dispatched).
	EventRolloutRateIncreased = "image.rollout_rate_increased"
)
