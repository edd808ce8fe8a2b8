-- Outgoing webhook notifications (fleetshift/internal/notify): operators subscribe a URL to rollout event
-- types; the notifier turns each matching event of the EVENTS stream into one delivery row per
-- subscription and posts it, signed, with retries.

-- The secret signs every body (HMAC-SHA256), so it is kept as is; it is shown once, at creation.
CREATE TABLE notification_subscriptions (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text        NOT NULL,
    url         text        NOT NULL,
    format      text        NOT NULL DEFAULT 'json' CHECK (format IN ('json', 'slack')),
    event_types text[]      NOT NULL,
    secret      text        NOT NULL,
    created_by  text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per (subscription, event): the unique key makes a redelivered event a no-op. body is the exact
-- bytes posted (and signed) on every attempt.
CREATE TABLE notification_deliveries (
    id               bigserial   PRIMARY KEY,
    subscription_id  uuid        NOT NULL REFERENCES notification_subscriptions (id) ON DELETE CASCADE,
    event_id         uuid        NOT NULL,
    event_type       text        NOT NULL,
    rollout_id       uuid,
    body             bytea       NOT NULL,
    status           text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer     NOT NULL DEFAULT 0,
    last_status_code integer,
    last_error       text,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_attempt_at  timestamptz,
    delivered_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (subscription_id, event_id)
);
CREATE INDEX notification_deliveries_due_idx ON notification_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX notification_deliveries_subscription_idx ON notification_deliveries (subscription_id, id DESC);
