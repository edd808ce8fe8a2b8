-- Schema additions owned by the stateapi service.

-- A device key identifies its device: PATCH /api/v1/device/state and the 401/403 decision look devices up
-- by key hash, so the hash is unique and indexed.
CREATE UNIQUE INDEX IF NOT EXISTS devices_api_key_hash_idx ON devices (api_key_hash);

-- Device listing pages by uuid (primary key) within a fleet.
CREATE INDEX IF NOT EXISTS devices_fleet_uuid_idx ON devices (fleet_id, uuid);

-- Rollout device pages: (batch_number, device_uuid) within a rollout.
CREATE INDEX IF NOT EXISTS device_rollout_status_page_idx ON device_rollout_status (rollout_id, batch_number, device_uuid);
