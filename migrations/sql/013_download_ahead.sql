-- Download ahead: a scheduled rollout may have its devices pull the new image before the maintenance
-- window opens, and switch only inside it.
--
-- image_update_policies.download_ahead: the policy's rollouts write, at creation, a prefetch entry into
-- the target of each of their devices (only with update_strategy 'scheduled').
-- device_target_state.prefetch: the images a device should pull ahead without changing what runs, a
-- JSON array of {"image", "rollout_id"}; an entry goes when its image is dispatched to the device (it
-- is then in the services) or when its rollout ends without dispatching the device.
-- device_rollout_status.downloaded_at: when the device first reported the rollout's new image
-- downloaded. image_rollouts.downloaded_devices: the rollout's rows with downloaded_at set, moved by the
-- deltas of each statement (a statement-level trigger, as migration 008's counters).

ALTER TABLE image_update_policies
    ADD COLUMN download_ahead boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT image_update_policies_download_ahead_scheduled
        CHECK (NOT download_ahead OR update_strategy = 'scheduled');

ALTER TABLE device_target_state
    ADD COLUMN prefetch jsonb NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(prefetch) = 'array');

ALTER TABLE device_rollout_status ADD COLUMN downloaded_at timestamptz;

ALTER TABLE image_rollouts ADD COLUMN downloaded_devices integer NOT NULL DEFAULT 0;

CREATE FUNCTION fleetshift_rollout_downloaded_deltas() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- +1 for each row of the statement downloaded as it is now, -1 as it was; one branch per event (a
    -- trigger with transition tables only names the tables it has).
    IF TG_OP = 'INSERT' THEN
        UPDATE image_rollouts r SET downloaded_devices = r.downloaded_devices + d.n
        FROM (SELECT n.rollout_id, count(*) AS n FROM new_rows n WHERE n.downloaded_at IS NOT NULL
              GROUP BY n.rollout_id) d
        WHERE r.rollout_id = d.rollout_id;
    ELSIF TG_OP = 'DELETE' THEN
        UPDATE image_rollouts r SET downloaded_devices = r.downloaded_devices - d.n
        FROM (SELECT o.rollout_id, count(*) AS n FROM old_rows o WHERE o.downloaded_at IS NOT NULL
              GROUP BY o.rollout_id) d
        WHERE r.rollout_id = d.rollout_id;
    ELSE
        UPDATE image_rollouts r SET downloaded_devices = r.downloaded_devices + d.n
        FROM (SELECT x.rollout_id, sum(x.sign) AS n
              FROM (SELECT n.rollout_id, 1 AS sign FROM new_rows n WHERE n.downloaded_at IS NOT NULL
                    UNION ALL
                    SELECT o.rollout_id, -1 FROM old_rows o WHERE o.downloaded_at IS NOT NULL) x
              GROUP BY x.rollout_id HAVING sum(x.sign) <> 0) d
        WHERE r.rollout_id = d.rollout_id;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER device_rollout_status_downloaded_insert AFTER INSERT ON device_rollout_status
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION fleetshift_rollout_downloaded_deltas();
CREATE TRIGGER device_rollout_status_downloaded_update AFTER UPDATE ON device_rollout_status
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION fleetshift_rollout_downloaded_deltas();
CREATE TRIGGER device_rollout_status_downloaded_delete AFTER DELETE ON device_rollout_status
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION fleetshift_rollout_downloaded_deltas();
