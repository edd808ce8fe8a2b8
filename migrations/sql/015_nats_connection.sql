-- Presence over more than one NATS connection per device.
--
-- devices.nats_connected_at: when the device's newest NATS connection known from connect advisories
-- started (the advisory's client.start). A disconnect advisory of an older connection (a device that
-- left a stalled or cut-off node for another one; the node reports the old connection closed later)
-- then does not mark the device offline.

ALTER TABLE devices ADD COLUMN nats_connected_at timestamptz;
