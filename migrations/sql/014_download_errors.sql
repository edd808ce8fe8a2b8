-- Download ahead: why a device's last pull of a rollout's new image failed.
--
-- device_rollout_status.download_error: the device's own reason (its report's "downloadErrors" for the
-- rollout's new image, at most 512 bytes), while the row has not been downloaded; written only when it
-- changes, cleared when the device reports the image downloaded.

ALTER TABLE device_rollout_status ADD COLUMN download_error text;
