-- Operator tokens (shared/auth), managed through stateapi.
--
-- Until this release 005 and 006 were empty placeholders and this table was created by 001. Databases
-- migrated by that release are at version 6 and already have it; IF NOT EXISTS makes this file a no-op
-- there and the creation step on a fresh database, so both end with the same schema
-- (TestUpgradeFromPreviousReleaseMatchesFresh).

-- Operator tokens (the bootstrap admin token lives in config, not here). Only hashes are kept.
CREATE TABLE IF NOT EXISTS api_tokens (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name         text        NOT NULL,
    scope        text        NOT NULL CHECK (scope IN ('read', 'operate', 'admin')),
    token_hash   bytea       NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
