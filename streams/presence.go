package streams

// Device presence and rollout membership events (docs/contract.md, "Events"). Presence events belong
// to no rollout: their subject ends with the device uuid, <prefix>.events.device.online.<uuid>.
const (
	// EventDeviceOnline: a device that was offline (or never seen) reported, polled or connected.
	EventDeviceOnline = "device.online"
	// EventDeviceOffline: a device missed its heartbeats or its NATS connection closed. Data: reason
	// ("missed_heartbeats" or "disconnected") and last_seen_at.
	EventDeviceOffline = "device.offline"
	// EventDeviceSkipped: a device of a rollout stayed offline past the policy's offline_grace_seconds
	// with offline_action "skip" (with "fail" it is image.device_failed, error "device offline").
	EventDeviceSkipped = "image.device_skipped"
	// EventDeviceJoined: a device that registered or started running the repository while the rollout
	// was active joined it (dynamic_inclusion). Data: batch.
	EventDeviceJoined = "image.device_joined"
)

// DeviceEvent is the subject of a presence event of a device.
func (s Subjects) DeviceEvent(eventType, deviceUUID string) string {
	return s.Prefix + ".events." + eventType + "." + deviceUUID
}
