package streams

// EventDevicesDownloaded: devices of a download-ahead rollout reported its new image downloaded (pulled
// ahead of the maintenance window, nothing switched). One event per report batch and rollout, naming up
// to BatchDevicesChunk devices; data DevicesDownloadedV1. A device's own time is its
// device_rollout_status.downloaded_at.
const EventDevicesDownloaded = "image.device_downloaded"

// DevicesDownloadedV1 is the data of an image.device_downloaded event: Count devices (uuid order) that
// reported NewImage downloaded, chunk Chunk of Chunks of one report batch.
type DevicesDownloadedV1 struct {
	NewImage string   `json:"new_image"`
	Chunk    int      `json:"chunk"`
	Chunks   int      `json:"chunks"`
	Count    int      `json:"count"`
	Devices  []string `json:"devices"`
}
