-- Schema additions owned by the healthwatch service.

-- Durable batch bookkeeping beside next_batch_at, so that a restart of any process neither loses nor
-- repeats a batch step:
--   completed_batch: the last batch whose completion healthwatch recorded (image.batch_completed written);
--   requested_batch: the last batch healthwatch asked the dispatcher to start (DispatchV1 in the outbox);
--   requested_at: when it asked (a request the dispatcher dropped, e.g. while the rollout was paused, is
--   repeated after a while so a resumed rollout never stalls).
ALTER TABLE image_rollouts ADD COLUMN completed_batch integer NOT NULL DEFAULT 0;
ALTER TABLE image_rollouts ADD COLUMN requested_batch integer NOT NULL DEFAULT 0;
ALTER TABLE image_rollouts ADD COLUMN requested_at timestamptz;

-- The sweep looks for in-progress rollouts with no timer set whose current batch may have finished.
CREATE INDEX image_rollouts_in_progress_idx ON image_rollouts (rollout_id)
    WHERE status = 'in_progress' AND next_batch_at IS NULL;
