-- The transactional outbox (shared/outbox), written by every service.
--
-- Until this release 005 and 006 were empty placeholders and this table was created by 001. Databases
-- migrated by that release are at version 6 and already have it; IF NOT EXISTS makes this file a no-op
-- there and the creation step on a fresh database, so both end with the same schema
-- (TestUpgradeFromPreviousReleaseMatchesFresh).

-- Transactional outbox: rows written in the same transaction as the state change they announce; the relay
-- publishes them to JetStream with Nats-Msg-Id = msg_id and deletes them.
CREATE TABLE IF NOT EXISTS outbox (
    seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    msg_id     text        NOT NULL,
    subject    text        NOT NULL,
    payload    bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
