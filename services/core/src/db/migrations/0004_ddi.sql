-- hawkBit DDI (tend-sync): devices that run a hawkBit client are managed
-- through the same commands as tend's own agents.

-- DDI clients parse an action id as an integer: each command gets one.
ALTER TABLE commands ADD COLUMN seq bigint GENERATED ALWAYS AS IDENTITY;
CREATE UNIQUE INDEX commands_seq_key ON commands (seq);
-- A DDI poll with work finds the device's open upgrade, or its last
-- installed one for `installedBase`.
CREATE INDEX commands_device_upgrades_idx ON commands (device_id, seq DESC)
    WHERE kind = 'upgrade';

-- DDI offers an artifact's SHA-1 and MD5 beside its SHA-256; computed
-- while the bytes stream in (or once, for artifacts uploaded before).
ALTER TABLE artifacts ADD COLUMN sha1 text, ADD COLUMN md5 text;

-- A DDI device is named by its tenant's name and its own.
CREATE INDEX devices_tenant_name_idx ON devices (tenant_id, name)
    WHERE decommissioned_at IS NULL;

-- Gateway tokens: one per tenant gateway, shown once at creation, kept as
-- the SHA-256 of a 256-bit random token (as device secrets are).
CREATE TABLE gateway_tokens (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    name          text NOT NULL,
    token_sha256  bytea NOT NULL,
    created_by    uuid REFERENCES users (id),
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    CONSTRAINT gateway_tokens_token_key UNIQUE (token_sha256)
);
CREATE INDEX gateway_tokens_tenant_idx ON gateway_tokens (tenant_id, created_at DESC);
CREATE INDEX gateway_tokens_revoked_idx ON gateway_tokens (revoked_at)
    WHERE revoked_at IS NOT NULL;
