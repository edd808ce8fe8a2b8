-- Incremental rollout counters.
--
-- image_rollouts.updated_devices, healthy_devices (completed rows), failed_devices (failed rows),
-- rolled_back_devices (rolled_back rows), failures (failed rows + rolled_back rows that had failed, i.e.
-- carry an error_message) and failure_rate (failures / finished, finished = completed + failed +
-- rolled_back) move by the deltas of each statement that writes device_rollout_status: a statement-level
-- trigger aggregates its transition tables per rollout and updates each touched rollout row once, inside
-- the writer's transaction (so under the rollout's row lock every writer already holds). A report batch
-- costs the same whatever the size of its rollout; no writer recounts device rows. Statements that move
-- no counted status (pending -> scheduled, ...) update no rollout row.

ALTER TABLE image_rollouts ADD COLUMN failures integer NOT NULL DEFAULT 0;

CREATE FUNCTION fleetshift_rollout_counter_deltas() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ids uuid[];
    statuses text[];
    failed_before boolean[];
    signs integer[];
BEGIN
    -- The rows of the statement in a counted status, +1 as they are now, -1 as they were. One branch per
    -- event: a trigger with transition tables has exactly one event, and only names the tables it has.
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(n.rollout_id), array_agg(n.status), array_agg(n.error_message IS NOT NULL), array_agg(1)
        INTO ids, statuses, failed_before, signs
        FROM new_rows n WHERE n.status IN ('completed', 'failed', 'rolled_back');
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(o.rollout_id), array_agg(o.status), array_agg(o.error_message IS NOT NULL), array_agg(-1)
        INTO ids, statuses, failed_before, signs
        FROM old_rows o WHERE o.status IN ('completed', 'failed', 'rolled_back');
    ELSE
        SELECT array_agg(x.rollout_id), array_agg(x.status), array_agg(x.fb), array_agg(x.sign)
        INTO ids, statuses, failed_before, signs
        FROM (SELECT n.rollout_id, n.status, n.error_message IS NOT NULL AS fb, 1 AS sign FROM new_rows n
              WHERE n.status IN ('completed', 'failed', 'rolled_back')
              UNION ALL
              SELECT o.rollout_id, o.status, o.error_message IS NOT NULL, -1 FROM old_rows o
              WHERE o.status IN ('completed', 'failed', 'rolled_back')) x;
    END IF;
    IF ids IS NULL THEN
        RETURN NULL;
    END IF;
    WITH d AS (
        SELECT c.rollout_id,
               coalesce(sum(c.sign) FILTER (WHERE c.status = 'completed'), 0) AS completed,
               coalesce(sum(c.sign) FILTER (WHERE c.status = 'failed'), 0) AS failed,
               coalesce(sum(c.sign) FILTER (WHERE c.status = 'rolled_back'), 0) AS rolled_back,
               coalesce(sum(c.sign) FILTER (WHERE c.status = 'failed' OR (c.status = 'rolled_back' AND c.fb)), 0) AS failures
        FROM unnest(ids, statuses, failed_before, signs) AS c(rollout_id, status, fb, sign)
        GROUP BY c.rollout_id
    )
    UPDATE image_rollouts r SET
        updated_devices = r.updated_devices + d.completed,
        healthy_devices = r.healthy_devices + d.completed,
        failed_devices = r.failed_devices + d.failed,
        rolled_back_devices = r.rolled_back_devices + d.rolled_back,
        failures = r.failures + d.failures,
        failure_rate = CASE WHEN r.updated_devices + d.completed + r.failed_devices + d.failed
                                 + r.rolled_back_devices + d.rolled_back = 0 THEN 0
                            ELSE (r.failures + d.failures)::float8 / (r.updated_devices + d.completed
                                 + r.failed_devices + d.failed + r.rolled_back_devices + d.rolled_back) END,
        updated_at = now()
    FROM d
    WHERE r.rollout_id = d.rollout_id
      AND (d.completed <> 0 OR d.failed <> 0 OR d.rolled_back <> 0 OR d.failures <> 0);
    RETURN NULL;
END
$$;

CREATE TRIGGER device_rollout_status_counts_insert AFTER INSERT ON device_rollout_status
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION fleetshift_rollout_counter_deltas();
CREATE TRIGGER device_rollout_status_counts_update AFTER UPDATE ON device_rollout_status
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION fleetshift_rollout_counter_deltas();
CREATE TRIGGER device_rollout_status_counts_delete AFTER DELETE ON device_rollout_status
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION fleetshift_rollout_counter_deltas();

-- The one full recount: bring existing rollouts to what their device rows say.
UPDATE image_rollouts r SET
    updated_devices = c.completed, healthy_devices = c.completed, failed_devices = c.failed,
    rolled_back_devices = c.rolled_back, failures = c.failures,
    failure_rate = CASE WHEN c.finished = 0 THEN 0 ELSE c.failures::float8 / c.finished END
FROM (SELECT rollout_id,
             count(*) FILTER (WHERE status = 'completed') AS completed,
             count(*) FILTER (WHERE status = 'failed') AS failed,
             count(*) FILTER (WHERE status = 'rolled_back') AS rolled_back,
             count(*) FILTER (WHERE status = 'failed' OR (status = 'rolled_back' AND error_message IS NOT NULL)) AS failures,
             count(*) FILTER (WHERE status IN ('completed', 'failed', 'rolled_back')) AS finished
      FROM device_rollout_status GROUP BY rollout_id) c
WHERE r.rollout_id = c.rollout_id;
