-- Why a device failed, and retrying failed devices.
--
-- device_rollout_status.failure_reason: why the device failed (the agent's reason for the failed
-- service, or the health timeout), at most 1,000 bytes; failure_log: the last lines of the failed
-- container's log as the device sent them, at most 4,096 bytes. Both are set when the device fails and
-- cleared when it is retried. retry_count: how often the device was re-dispatched after failing
-- (operator retry or the policy's automatic retries).
-- image_update_policies.max_retries: how often a failed device is re-dispatched automatically before
-- it counts as failed (0 = never).

ALTER TABLE device_rollout_status
    ADD COLUMN failure_reason text CHECK (octet_length(failure_reason) <= 1000),
    ADD COLUMN failure_log text CHECK (octet_length(failure_log) <= 4096),
    ADD COLUMN retry_count integer NOT NULL DEFAULT 0 CHECK (retry_count >= 0);

ALTER TABLE image_update_policies
    ADD COLUMN max_retries integer NOT NULL DEFAULT 0 CHECK (max_retries >= 0 AND max_retries <= 10);
