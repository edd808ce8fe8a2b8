-- Rate-based rollouts (update_strategy 'rate').
--
-- A rate policy dispatches its devices at a rate instead of in batches, and raises the rate as devices
-- are notified or succeed (like AWS IoT Jobs' exponentialRate), still gated by max_failure_rate after
-- min_sample_size finished devices. Its fields are NULL on every other strategy:
--   rate_base_per_minute: the starting rate (devices per minute), 1 to 1,000,000;
--   rate_increment_factor: what the rate is multiplied by at each raise, above 1 and at most 5;
--   rate_increase_criteria: what counts towards a raise, 'notified' (devices dispatched) or 'succeeded'
--   (devices completed healthy);
--   rate_increase_threshold: the rate is raised each time this many more devices met the criteria;
--   rate_maximum_per_minute: the rate is never raised above it, base to 1,000,000.
--
-- A rate rollout's durable pacing lives on its row, so a restart of any process resumes the ramp where it
-- was (healthwatch's rate timer, claimed with SKIP LOCKED):
--   rate_per_minute: the current rate (NULL for other strategies);
--   rate_dispatched: devices the dispatcher took off the pending list for the rate timer's commands
--   (scheduled, or skipped because their target no longer runs the repository); a command asks for
--   "up to N" in all, so a redelivered command dispatches nothing twice;
--   rate_raised_at: the criteria count at which the rate was last raised (0 before the first raise);
--   next_batch_at (existing column): when the next chunk is due.

ALTER TABLE image_update_policies DROP CONSTRAINT image_update_policies_update_strategy_check;
ALTER TABLE image_update_policies ADD CONSTRAINT image_update_policies_update_strategy_check
    CHECK (update_strategy IN ('auto', 'staged', 'manual', 'scheduled', 'rate'));

ALTER TABLE image_update_policies
    ADD COLUMN rate_base_per_minute integer
        CHECK (rate_base_per_minute BETWEEN 1 AND 1000000),
    ADD COLUMN rate_increment_factor double precision
        CHECK (rate_increment_factor > 1 AND rate_increment_factor <= 5),
    ADD COLUMN rate_increase_criteria text
        CHECK (rate_increase_criteria IN ('notified', 'succeeded')),
    ADD COLUMN rate_increase_threshold integer
        CHECK (rate_increase_threshold >= 1),
    ADD COLUMN rate_maximum_per_minute integer
        CHECK (rate_maximum_per_minute BETWEEN 1 AND 1000000),
    ADD CONSTRAINT image_update_policies_rate_fields_check CHECK (
        CASE WHEN update_strategy = 'rate'
             THEN rate_base_per_minute IS NOT NULL AND rate_increment_factor IS NOT NULL
                  AND rate_increase_criteria IS NOT NULL AND rate_increase_threshold IS NOT NULL
                  AND rate_maximum_per_minute IS NOT NULL AND rate_maximum_per_minute >= rate_base_per_minute
             ELSE rate_base_per_minute IS NULL AND rate_increment_factor IS NULL AND rate_increase_criteria IS NULL
                  AND rate_increase_threshold IS NULL AND rate_maximum_per_minute IS NULL
        END);

ALTER TABLE image_rollouts
    ADD COLUMN rate_per_minute integer CHECK (rate_per_minute >= 1),
    ADD COLUMN rate_dispatched integer NOT NULL DEFAULT 0 CHECK (rate_dispatched >= 0),
    ADD COLUMN rate_raised_at integer NOT NULL DEFAULT 0 CHECK (rate_raised_at >= 0);

-- The rate timer looks for in-progress rate rollouts whose next chunk is due.
CREATE INDEX image_rollouts_rate_due_idx ON image_rollouts (next_batch_at)
    WHERE strategy = 'rate' AND status = 'in_progress';
