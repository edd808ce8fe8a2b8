// Package wire holds the JSON shapes the agent exchanges with a fleetshift server (docs/contract.md): the
// target state a device receives and the current-state report it sends. The agent module copies them
// instead of importing the server's modules so that it builds and ships on its own.
package wire

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"
)

// Target is the document GET /api/v1/device/:uuid/state returns and fleet.device.<uuid>.target carries:
// device uuid -> that device's target.
type Target map[string]DeviceTarget

// DeviceTarget is one device's target state. Version only ever grows; a device never applies a version
// that is not newer than the one it has.
type DeviceTarget struct {
	Apps   map[string]App  `json:"apps"`
	Config json.RawMessage `json:"config,omitempty"`
	// Prefetch lists images to pull ahead without changing what runs (a download-ahead rollout waiting
	// for its maintenance window); the device reports each one pulled in Downloaded.
	Prefetch []Prefetch `json:"prefetch,omitempty"`
	Version  int64      `json:"version"`
}

// Prefetch is one image a target asks the device to pull ahead.
type Prefetch struct {
	Image     string `json:"image"`
	RolloutID string `json:"rollout_id,omitempty"`
}

// PrefetchImages returns the distinct images of t's prefetch entries, in order.
func (t DeviceTarget) PrefetchImages() []string {
	var out []string
	for _, p := range t.Prefetch {
		if p.Image != "" && !slices.Contains(out, p.Image) {
			out = append(out, p.Image)
		}
	}
	return out
}

// App is one application of a target: a set of services run together (one compose project).
type App struct {
	AppID    json.RawMessage `json:"appId,omitempty"`
	AppName  string          `json:"appName,omitempty"`
	Services []Service       `json:"services"`
}

// Service is one container of an app.
type Service struct {
	ServiceID   json.RawMessage `json:"serviceId,omitempty"`
	ServiceName string          `json:"serviceName"`
	ImageName   string          `json:"imageName"`
	// Config is the container configuration (compose keys such as environment, ports, labels); config.image
	// stands in for imageName when that is empty.
	Config map[string]any `json:"config,omitempty"`
	// HealthCheck is the device-side health check for this service (see package health); it may also be
	// given as config.healthCheck.
	HealthCheck json.RawMessage `json:"healthCheck,omitempty"`
	// UpdateStrategy is download-then-kill (default) or kill-then-download; it may also be given as the
	// label io.fleetshift.update-strategy or io.balena.update.strategy in config.labels.
	UpdateStrategy string `json:"updateStrategy,omitempty"`
	// Retry counts the server's re-dispatches of this service's image after it failed: a changed value
	// asks the device to start the service afresh (pull again, recreate the container).
	Retry int `json:"retry,omitempty"`
}

// Image returns the image the service runs: imageName, else config.image.
func (s Service) Image() string {
	if s.ImageName != "" {
		return s.ImageName
	}
	img, _ := s.Config["image"].(string)
	return img
}

// Update strategies.
const (
	DownloadThenKill = "download-then-kill"
	KillThenDownload = "kill-then-download"
)

// Strategy returns the service's update strategy, download-then-kill unless it asks otherwise.
func (s Service) Strategy() string {
	st := s.UpdateStrategy
	if st == "" {
		if labels, ok := s.Config["labels"].(map[string]any); ok {
			for _, k := range []string{"io.fleetshift.update-strategy", "io.balena.update.strategy"} {
				if v, ok := labels[k].(string); ok && v != "" {
					st = v
					break
				}
			}
		}
	}
	if st == KillThenDownload {
		return KillThenDownload
	}
	return DownloadThenKill
}

// HealthCheckJSON returns the service's health-check document, or nil when it has none.
func (s Service) HealthCheckJSON() json.RawMessage {
	if len(s.HealthCheck) > 0 && string(s.HealthCheck) != "null" {
		return s.HealthCheck
	}
	if hc, ok := s.Config["healthCheck"]; ok && hc != nil {
		b, err := json.Marshal(hc)
		if err == nil {
			return b
		}
	}
	return nil
}

// ParseTarget decodes a target document and returns the entry for uuid.
func ParseTarget(b []byte, uuid string) (DeviceTarget, error) {
	var t Target
	if err := json.Unmarshal(b, &t); err != nil {
		return DeviceTarget{}, fmt.Errorf("decode target: %w", err)
	}
	dt, ok := t[uuid]
	if !ok {
		return DeviceTarget{}, fmt.Errorf("decode target: no entry for device %s", uuid)
	}
	return dt, nil
}

// Report is the PATCH /api/v1/device/state body, also published on fleet.device.<uuid>.state:
// device uuid -> its current state.
type Report map[string]DeviceReport

// DeviceReport is one device's current state.
type DeviceReport struct {
	Apps map[string]ReportedApp `json:"apps"`
	// Version is the target version the device has applied.
	Version int64 `json:"version"`
	// Downloaded are the images of the target's prefetch entries the device has pulled.
	Downloaded []string `json:"downloaded,omitempty"`
	// DownloadErrors says, per prefetch image whose last pull failed, why (it is pulled again later).
	DownloadErrors map[string]string `json:"downloadErrors,omitempty"`
}

// ReportedApp is one app as it runs.
type ReportedApp struct {
	AppID    json.RawMessage   `json:"appId,omitempty"`
	AppName  string            `json:"appName,omitempty"`
	Services []ReportedService `json:"services"`
}

// ReportedService is one service as it runs.
type ReportedService struct {
	ServiceName string  `json:"serviceName"`
	ImageName   string  `json:"imageName"`
	Status      string  `json:"status"`
	Health      *Health `json:"health,omitempty"`
	// Error says why the service is not on its target (a failed pull, a failed start) or why it
	// failed (exit code, failing health check).
	Error string `json:"error,omitempty"`
	// LogTail is the last lines of a failed service's container log, bounded by TailLog.
	LogTail string `json:"logTail,omitempty"`
}

// Bounds of a report's log tail: the last LogTailLines lines, and at most LogTailBytes bytes of them.
const (
	LogTailLines = 50
	LogTailBytes = 4096
)

// TailLog returns the last LogTailLines lines of log, cut to its last LogTailBytes bytes at a line
// (or, for one overlong line, a UTF-8) boundary, without a trailing newline.
func TailLog(log string) string {
	log = strings.TrimRight(log, "\n")
	lines := strings.Split(log, "\n")
	if len(lines) > LogTailLines {
		lines = lines[len(lines)-LogTailLines:]
	}
	out := strings.Join(lines, "\n")
	for len(out) > LogTailBytes {
		i := strings.IndexByte(out, '\n')
		if i < 0 {
			out = out[len(out)-LogTailBytes:]
			for len(out) > 0 && !utf8.RuneStart(out[0]) {
				out = out[1:]
			}
			break
		}
		out = out[i+1:]
	}
	return out
}

// Health statuses.
const (
	Healthy   = "healthy"
	Unhealthy = "unhealthy"
	Starting  = "starting"
)

// Health is a service's health as the device's checks see it.
type Health struct {
	Status  string `json:"status"`
	Details any    `json:"details,omitempty"`
}
