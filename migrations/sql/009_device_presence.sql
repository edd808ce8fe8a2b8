-- Device presence and rollouts that change while they run.
--
-- devices.offline_since: when the device went offline (missed heartbeats or a closed NATS connection);
-- NULL while online. A rollout suspends the health deadline of an offline device and, after the
-- policy's offline_grace_seconds, skips it (offline_action 'skip') or fails it ('fail').
-- dynamic_inclusion: a device that registers or starts running the repository while a rollout of it
-- is active joins that rollout.

ALTER TABLE devices ADD COLUMN offline_since timestamptz;
CREATE INDEX devices_online_seen_idx ON devices (last_seen_at) WHERE is_online AND revoked_at IS NULL;

ALTER TABLE image_update_policies
    ADD COLUMN offline_grace_seconds integer NOT NULL DEFAULT 600 CHECK (offline_grace_seconds >= 0),
    ADD COLUMN offline_action text NOT NULL DEFAULT 'skip' CHECK (offline_action IN ('skip', 'fail')),
    ADD COLUMN dynamic_inclusion boolean NOT NULL DEFAULT true;
