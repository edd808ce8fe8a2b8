package streams

// Event types of retries.
const (
	// EventDeviceRetried: a failed device was re-dispatched (an operator's retry, or the policy's
	// max_retries). Data: batch, retry (the attempt number, from 1), previous_reason, auto, target_version.
	EventDeviceRetried = "image.device_retried"
)
