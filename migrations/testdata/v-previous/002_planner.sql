-- Schema additions owned by the planner service.

-- Every push the planner has handled, whatever the outcome (planned, no policy, duplicate of an
-- existing rollout). Inserted in the same transaction as the rollout, so a redelivered push, even one
-- that created no rollout, changes nothing twice.
CREATE TABLE planner_pushes (
    event_id    text PRIMARY KEY,
    repository  text        NOT NULL,
    tag         text        NOT NULL,
    digest      text        NOT NULL DEFAULT '',
    outcome     text        NOT NULL CHECK (outcome IN ('planned', 'no_policy', 'duplicate', 'invalid')),
    rollout_id  uuid REFERENCES image_rollouts (rollout_id) ON DELETE SET NULL,
    handled_at  timestamptz NOT NULL DEFAULT now()
);

-- "Is there already a live rollout of this exact image for this policy?" (skip re-planning a push the
-- registry sent again under another delivery id).
CREATE INDEX image_rollouts_image_push_idx ON image_rollouts (repository, new_tag, new_digest, policy_id);
