package healthwatch

import (
	"context"
	"fmt"
	"maps"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/fleetshift/fleetshift/shared/events"
	"github.com/fleetshift/fleetshift/streams"
)

// downloads are the (device, image) pairs a batch of reports says were pulled ahead (the report's
// "downloaded": images of the target's prefetch entries), each pair once.
type downloads struct {
	devices, images []string
}

// downloadsOf collects the downloaded images of reps.
func downloadsOf(reps []report) downloads {
	var d downloads
	seen := map[[2]string]bool{}
	for _, r := range reps {
		for _, img := range r.body.Downloaded {
			k := [2]string{r.device, img}
			if img == "" || seen[k] {
				continue
			}
			seen[k] = true
			d.devices, d.images = append(d.devices, r.device), append(d.images, img)
		}
	}
	return d
}

func (d downloads) any() bool { return len(d.devices) > 0 }

// rollouts returns, without locking, the active rollouts with a row of one of the devices not yet
// downloaded whose new image the device reported downloaded: the rollouts recording them would write.
func (d downloads) rollouts(ctx context.Context, tx pgx.Tx) ([]string, error) {
	rows, err := tx.Query(ctx, `SELECT DISTINCT s.rollout_id::text
		FROM unnest($1::text[], $2::text[]) AS u(device_uuid, image)
		JOIN device_rollout_status s ON s.device_uuid = u.device_uuid
		JOIN image_rollouts r ON r.rollout_id = s.rollout_id
		WHERE s.downloaded_at IS NULL AND r.status = ANY($3)
		  AND COALESCE(NULLIF(s.new_image, ''), r.new_image) = u.image`, d.devices, d.images, activeRollout)
	if err != nil {
		return nil, fmt.Errorf("apply reports: read downloads: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("apply reports: read downloads: %w", err)
	}
	return ids, nil
}

// record sets downloaded_at on the rows of the locked rollouts that the downloads name for the first
// time, in one statement (the counter trigger moves downloaded_devices by the rows it changed, so a
// redelivered report changes nothing), and records image.device_downloaded per rollout, one event per
// streams.BatchDevicesChunk devices.
func (d downloads) record(ctx context.Context, w *work, locked []string) error {
	rows, err := w.tx.Query(ctx, `UPDATE device_rollout_status s SET downloaded_at = now()
		FROM unnest($1::text[], $2::text[]) AS u(device_uuid, image), image_rollouts r
		WHERE s.rollout_id = ANY($3::uuid[]) AND s.device_uuid = u.device_uuid AND r.rollout_id = s.rollout_id
		  AND s.downloaded_at IS NULL AND COALESCE(NULLIF(s.new_image, ''), r.new_image) = u.image
		RETURNING s.rollout_id::text, s.device_uuid, u.image`, d.devices, d.images, locked)
	if err != nil {
		return fmt.Errorf("apply reports: record downloads: %w", err)
	}
	type done struct{ rollout, device, image string }
	recorded, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (done, error) {
		var x done
		return x, r.Scan(&x.rollout, &x.device, &x.image)
	})
	if err != nil {
		return fmt.Errorf("apply reports: record downloads: %w", err)
	}
	byRollout := map[string][]string{}
	image := map[string]string{}
	for _, x := range recorded {
		byRollout[x.rollout] = append(byRollout[x.rollout], x.device)
		image[x.rollout] = x.image
	}
	for _, id := range slices.Sorted(maps.Keys(byRollout)) {
		for _, e := range downloadedEvents(id, image[id], byRollout[id]) {
			w.event(e)
		}
	}
	return nil
}

// downloadedEvents are the image.device_downloaded events of devices of one rollout: one per
// streams.BatchDevicesChunk devices, in uuid order.
func downloadedEvents(rolloutID, newImage string, devices []string) []events.Event {
	slices.Sort(devices)
	chunks := (len(devices) + streams.BatchDevicesChunk - 1) / streams.BatchDevicesChunk
	evs := make([]events.Event, 0, chunks)
	for i := range chunks {
		devs := devices[i*streams.BatchDevicesChunk : min((i+1)*streams.BatchDevicesChunk, len(devices))]
		evs = append(evs, events.Event{Type: streams.EventDevicesDownloaded, RolloutID: rolloutID,
			Message: fmt.Sprintf("%d devices downloaded %s ahead of the maintenance window (%d of %d)", len(devs), newImage, i+1, chunks),
			Data:    streams.DevicesDownloadedV1{NewImage: newImage, Chunk: i + 1, Chunks: chunks, Count: len(devs), Devices: devs}})
	}
	return evs
}
