-- Users can be changed, disabled and removed, and their tokens must stop
-- working at once on every platform replica.
--
-- `token_generation` is written into every admin token (`gen`) and bumped
-- by each change that must end the user's sessions (role, password,
-- disabled, removal); `changed_at` lets each replica read only what changed
-- since its last poll. A removed user keeps its row (`removed_at`), so that
-- commands, artifacts and tokens it created still name it, and so that a
-- replica learns of the removal the same way it learns of any change; its
-- username is free again for a new user.
ALTER TABLE users
    ADD COLUMN token_generation bigint NOT NULL DEFAULT 0,
    ADD COLUMN disabled boolean NOT NULL DEFAULT false,
    ADD COLUMN changed_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN removed_at timestamptz;
ALTER TABLE users DROP CONSTRAINT users_username_key;
CREATE UNIQUE INDEX users_username_key ON users (username) WHERE removed_at IS NULL;
CREATE INDEX users_changed_idx ON users (changed_at);

-- Idempotency-Key: the first answer to a request, returned again for the
-- same key and the same request within 24 hours. The row is inserted
-- first, in the transaction that does the work, so a concurrent request
-- with the same key waits on it and then reads the answer.
CREATE TABLE idempotency_keys (
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    user_id      uuid NOT NULL,
    key          text NOT NULL,
    -- SHA-256 of the method, the path and the canonical JSON of the body.
    fingerprint  bytea NOT NULL,
    status       smallint,
    -- The answer's body; one-time secrets are never in it (see
    -- tend_platform::idempotency).
    answer       jsonb,
    -- What re-derives the secrets of a bulk registration on a replay.
    nonce        bytea,
    -- The signing key id that derived them: after a key change they
    -- cannot be derived again.
    secrets_key  text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id, key)
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);
