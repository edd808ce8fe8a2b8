package streams

import (
	"bytes"
	"encoding/json"
	"slices"
	"time"
)

// Header names used on fleetshift messages.
const (
	// HeaderMsgID is JetStream's deduplication header.
	HeaderMsgID = "Nats-Msg-Id"
	// HeaderKind names the message type and version, e.g. "push.v1".
	HeaderKind = "Fleetshift-Kind"
)

// PushV1 is a normalised registry push: one tagged image pushed to a repository.
// Kind "push.v1", subject Subjects.Push. Nats-Msg-Id is EventID, so redeliveries are dropped by JetStream.
type PushV1 struct {
	// EventID is stable for the same delivery (derived from DedupeKey).
	EventID string `json:"event_id"`
	// DedupeKey is what identifies the delivery: the registry's delivery id, else repository+tag+digest.
	DedupeKey string `json:"dedupe_key"`
	// Registry is the detected format: dockerhub, github, distribution, harbor, quay, acr, ecr, gar.
	Registry string `json:"registry"`
	// Repository is the normalised repository, e.g. docker.io/library/nginx or ghcr.io/org/app.
	Repository string `json:"repository"`
	// ImageName is the familiar form operators write: nginx, acme/app, ghcr.io/org/app.
	ImageName string `json:"image_name"`
	// Tag is the pushed tag (never empty: untagged pushes are ignored at ingest).
	Tag string `json:"tag"`
	// Digest is the manifest digest (sha256:...), empty when the registry sends none.
	Digest     string    `json:"digest,omitempty"`
	PushedAt   time.Time `json:"pushed_at,omitzero"`
	ReceivedAt time.Time `json:"received_at"`
	Pusher     string    `json:"pusher,omitempty"`
}

// Kinds of rollout command, the <kind> token of Subjects.Command.
const (
	// CommandDispatch starts (or re-notifies) one batch: DispatchV1.
	CommandDispatch = "dispatch"
)

// DispatchV1 asks the dispatcher to move a batch of a rollout to the new image.
// Kind "dispatch.v1". Handling it twice has the effect of handling it once.
type DispatchV1 struct {
	RolloutID string `json:"rollout_id"`
	Batch     int    `json:"batch"`
	// UpTo, for a rate rollout (healthwatch's rate timer), caps the dispatch: pending devices of the batch
	// are dispatched until the rollout's rate_dispatched reaches UpTo, so handling the command again
	// dispatches nothing more. A rate rollout dispatches nothing for a command without it. 0: no cap.
	UpTo int `json:"up_to,omitempty"`
}

// EventV1 is a rollout event, published on Subjects.Event and stored as a rollout_events row.
// Kind "event.v1".
type EventV1 struct {
	ID         string          `json:"id"`
	Type       string          `json:"type"`
	RolloutID  string          `json:"rollout_id,omitempty"`
	DeviceUUID string          `json:"device_uuid,omitempty"`
	Message    string          `json:"message,omitempty"`
	Data       json.RawMessage `json:"data,omitempty"`
	Actor      string          `json:"actor,omitempty"`
	Timestamp  time.Time       `json:"timestamp"`
}

// Event types (docs/contract.md).
const (
	EventWebhookReceived = "image.webhook_received"
	EventRolloutCreated  = "image.rollout_created"
	EventRolloutStarted  = "image.rollout_started"
	EventBatchStarted    = "image.batch_started"
	// EventDeviceScheduled was one event per scheduled device; the dispatcher now records
	// EventBatchDevicesScheduled instead (docs/contract.md). Kept so readers of older events know it.
	EventDeviceScheduled   = "image.device_scheduled"
	EventDeviceUpdated     = "image.device_updated"
	EventDeviceFailed      = "image.device_failed"
	EventHealthPassed      = "image.health_check_passed"
	EventHealthFailed      = "image.health_check_failed"
	EventDeviceRolledBack  = "image.device_rolled_back"
	EventBatchCompleted    = "image.batch_completed"
	EventRolloutPaused     = "image.rollout_paused"
	EventRolloutResumed    = "image.rollout_resumed"
	EventRolloutCompleted  = "image.rollout_completed"
	EventRolloutFailed     = "image.rollout_failed"
	EventRolloutCancelled  = "image.rollout_cancelled"
	EventRolloutSuperseded = "image.rollout_superseded"

	// Added to the original list: a whole rollout rolled back (rollback-all), an operator's start and
	// approve (so the acting token is recorded; image.rollout_started and image.batch_started follow).
	EventRolloutRolledBack     = "image.rollout_rolled_back"
	EventRolloutStartRequested = "image.rollout_start_requested"
	EventBatchApproved         = "image.batch_approved"
	// EventBatchDevicesScheduled replaces one image.device_scheduled per device: one event per up to
	// BatchDevicesChunk devices a dispatch moved to scheduled, data BatchDevicesScheduledV1.
	EventBatchDevicesScheduled = "image.batch_devices_scheduled"
)

// TargetV1 is what a device receives on its target subject and reads from the TARGETS stream: the same
// document GET /api/v1/device/:uuid/state returns, keyed by the device uuid. Nats-Msg-Id is
// "<uuid>-<version>"; a device ignores a version not newer than the one it has.
type TargetV1 map[string]DeviceTarget

// DeviceTarget is one device's target state.
type DeviceTarget struct {
	Apps   json.RawMessage `json:"apps"`
	Config json.RawMessage `json:"config"`
	// Prefetch, when present, lists the images to pull ahead without changing what runs: a JSON array
	// of {"image", "rollout_id"} (download-ahead rollouts waiting for their maintenance window).
	Prefetch json.RawMessage `json:"prefetch,omitempty"`
	Version  int64           `json:"version"`
}

// ReportV1 is a device's current-state report: the PATCH /api/v1/device/state body, keyed by device uuid,
// published on the device's state subject (by the device itself, or by stateapi for HTTP reports).
type ReportV1 map[string]DeviceReport

// DeviceReport is one device's reported state.
type DeviceReport struct {
	Apps   map[string]ReportedApp `json:"apps"`
	Config json.RawMessage        `json:"config,omitempty"`
	// TargetVersion is the target version the device has applied, when it says.
	TargetVersion int64 `json:"version,omitempty"`
	// Downloaded are the images of the target's prefetch entries the device has pulled ahead.
	Downloaded []string `json:"downloaded,omitempty"`
	// DownloadErrors maps a prefetch image whose last pull failed to why (the device pulls it again later).
	DownloadErrors DownloadErrors `json:"downloadErrors,omitempty"`
}

// DownloadErrors is a report's "downloadErrors": image -> why its last pull failed. The field is
// informational, so a value of another shape (not an object, a reason that is not a string) is dropped
// rather than making the whole report unreadable.
type DownloadErrors map[string]string

// UnmarshalJSON keeps the entries whose reason is a string; anything else decodes to no entries.
func (d *DownloadErrors) UnmarshalJSON(b []byte) error {
	var raw map[string]json.RawMessage
	if json.Unmarshal(b, &raw) != nil {
		*d = nil
		return nil
	}
	out := make(DownloadErrors, len(raw))
	for img, v := range raw {
		var why string
		if json.Unmarshal(v, &why) == nil {
			out[img] = why
		}
	}
	*d = out
	return nil
}

// ReportedApp is one app in a report.
type ReportedApp struct {
	AppID    json.RawMessage  `json:"appId,omitempty"`
	AppName  string           `json:"appName,omitempty"`
	Services ReportedServices `json:"services"`
}

// ReportedServices accepts services as a JSON array (the target's shape) or as an object keyed by
// service id or name (balena's shape); either way it holds a list.
type ReportedServices []ReportedService

// UnmarshalJSON implements json.Unmarshaler.
// The shape is chosen by the first byte, so a decode error names the field inside the services that is
// wrong (apps.services.health), not the shape of the services.
func (r *ReportedServices) UnmarshalJSON(b []byte) error {
	if t := bytes.TrimSpace(b); len(t) > 0 && t[0] == '[' {
		var list []ReportedService
		if err := json.Unmarshal(b, &list); err != nil {
			return err
		}
		*r = list
		return nil
	}
	var byKey map[string]ReportedService
	if err := json.Unmarshal(b, &byKey); err != nil {
		return err
	}
	keys := make([]string, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([]ReportedService, 0, len(keys))
	for _, k := range keys {
		svc := byKey[k]
		if svc.ServiceName == "" {
			svc.ServiceName = k
		}
		out = append(out, svc)
	}
	*r = out
	return nil
}

// ReportedService is one service's reported state.
type ReportedService struct {
	ServiceID   json.RawMessage `json:"serviceId,omitempty"`
	ServiceName string          `json:"serviceName,omitempty"`
	ImageName   string          `json:"imageName"`
	Status      string          `json:"status"`
	Health      *Health         `json:"health,omitempty"`
	Error       string          `json:"error,omitempty"`
	// LogTail is the last lines of a failed service's container log (at most 50 lines, 4 KiB).
	LogTail string `json:"logTail,omitempty"`
}

// Health is a service's health as the device's checks see it.
type Health struct {
	Status  string          `json:"status"` // healthy, unhealthy, starting
	Details json.RawMessage `json:"details,omitempty"`
}

// BatchDevicesChunk is the most devices one image.batch_devices_scheduled event names.
const BatchDevicesChunk = 1000

// BatchDevicesScheduledV1 is the data of an image.batch_devices_scheduled event: devices of batch Batch
// moved to scheduled for NewImage by one dispatch, chunk Chunk (from 1) of Chunks. A device's own
// details (old image, target version, scheduled_at, health deadline) are its device_rollout_status row.
type BatchDevicesScheduledV1 struct {
	Batch    int      `json:"batch"`
	NewImage string   `json:"new_image"`
	Chunk    int      `json:"chunk"`
	Chunks   int      `json:"chunks"`
	Count    int      `json:"count"`
	Devices  []string `json:"devices"`
}
