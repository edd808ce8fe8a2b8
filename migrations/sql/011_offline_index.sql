-- Offline devices, found without a scan.
--
-- healthwatch's offline-grace timer runs every tick; it only has work when some device is offline.
-- This partial index holds just the offline devices (normally few), so "is any device offline, and
-- which" is an index probe instead of a walk over every in-flight row of every active rollout.

CREATE INDEX devices_offline_idx ON devices (offline_since) WHERE offline_since IS NOT NULL;
