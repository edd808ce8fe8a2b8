package healthwatch

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/fleetshift/fleetshift/shared/events"
	"github.com/fleetshift/fleetshift/streams"
)

// downloads are the (device, image) pairs a batch of reports says were pulled ahead (the report's
// "downloaded": images of the target's prefetch entries; why "") or failed to pull (its
// "downloadErrors": why the last pull failed), each pair once, the download winning over an error.
type downloads struct {
	devices, images, whys []string
}

// maxDownloadError bounds a stored download error (the agent sends at most 512 bytes too).
const maxDownloadError = 512

// downloadsOf collects the downloaded and failed images of reps.
func downloadsOf(reps []report) downloads {
	var d downloads
	seen := map[[2]string]int{}
	add := func(device, img, why string) {
		k := [2]string{device, img}
		if i, ok := seen[k]; ok {
			if why == "" {
				d.whys[i] = ""
			}
			return
		}
		seen[k] = len(d.devices)
		d.devices, d.images, d.whys = append(d.devices, device), append(d.images, img), append(d.whys, why)
	}
	for _, r := range reps {
		for _, img := range r.body.Downloaded {
			if img != "" {
				add(r.device, img, "")
			}
		}
		for _, img := range slices.Sorted(maps.Keys(r.body.DownloadErrors)) {
			if img != "" {
				add(r.device, img, cmp.Or(boundHead(r.body.DownloadErrors[img], maxDownloadError), "pull failed"))
			}
		}
	}
	return d
}

func (d downloads) any() bool { return len(d.devices) > 0 }

// pendingDownload is the condition on s (device_rollout_status), r (its rollout) and u (the unnested pairs)
// under which a pair changes the row: the rollout's new image, not downloaded yet, and either the
// download or an error other than the one stored (a device repeating its error writes nothing).
const pendingDownload = `s.downloaded_at IS NULL AND COALESCE(NULLIF(s.new_image, ''), r.new_image) = u.image
		  AND (u.why = '' OR s.download_error IS DISTINCT FROM u.why)`

// rollouts returns, without locking, the active rollouts with a row the downloads would change: the
// rollouts recording them would write.
func (d downloads) rollouts(ctx context.Context, tx pgx.Tx) ([]string, error) {
	rows, err := tx.Query(ctx, `SELECT DISTINCT s.rollout_id::text
		FROM unnest($1::text[], $2::text[], $3::text[]) AS u(device_uuid, image, why)
		JOIN device_rollout_status s ON s.device_uuid = u.device_uuid
		JOIN image_rollouts r ON r.rollout_id = s.rollout_id
		WHERE r.status = ANY($4) AND `+pendingDownload, d.devices, d.images, d.whys, activeRollout)
	if err != nil {
		return nil, fmt.Errorf("apply reports: read downloads: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("apply reports: read downloads: %w", err)
	}
	return ids, nil
}

// record writes the downloads to the rows of the locked rollouts in one statement: a download sets
// downloaded_at for the first time and clears download_error (the counter trigger moves
// downloaded_devices by the rows it changed, so a redelivered report changes nothing); an error is
// stored when it differs from the one there. It records image.device_downloaded per rollout, one event
// per streams.BatchDevicesChunk downloaded devices.
func (d downloads) record(ctx context.Context, w *work, locked []string) error {
	rows, err := w.tx.Query(ctx, `UPDATE device_rollout_status s SET
			downloaded_at = CASE WHEN u.why = '' THEN now() END,
			download_error = NULLIF(u.why, '')
		FROM unnest($1::text[], $2::text[], $3::text[]) AS u(device_uuid, image, why), image_rollouts r
		WHERE s.rollout_id = ANY($4::uuid[]) AND s.device_uuid = u.device_uuid AND r.rollout_id = s.rollout_id
		  AND `+pendingDownload+`
		RETURNING s.rollout_id::text, s.device_uuid, u.image, u.why = ''`, d.devices, d.images, d.whys, locked)
	if err != nil {
		return fmt.Errorf("apply reports: record downloads: %w", err)
	}
	type done struct {
		rollout, device, image string
		downloaded             bool
	}
	recorded, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (done, error) {
		var x done
		return x, r.Scan(&x.rollout, &x.device, &x.image, &x.downloaded)
	})
	if err != nil {
		return fmt.Errorf("apply reports: record downloads: %w", err)
	}
	byRollout := map[string][]string{}
	image := map[string]string{}
	for _, x := range recorded {
		if x.downloaded {
			byRollout[x.rollout] = append(byRollout[x.rollout], x.device)
			image[x.rollout] = x.image
		}
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
