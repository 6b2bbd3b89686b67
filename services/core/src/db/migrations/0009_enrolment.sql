-- Device enrolment (seed 003: an identity assigned at first access): a
-- device's agent holding an enrolment token asks tend-sync for its own id
-- and secret, and waits `pending` until an admin accepts it.

-- Enrolment tokens: shown once at creation, kept as the SHA-256 of a
-- 256-bit random token (as device secrets are). `uses_left` NULL: any
-- number of devices until it expires.
CREATE TABLE enrolment_tokens (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    token_sha256  bytea NOT NULL,
    -- The only device type that may enrol with it; NULL: any.
    device_type   text,
    -- Given to every device enrolled with it, over what the device asks for.
    labels        jsonb NOT NULL DEFAULT '{}'::jsonb,
    uses          integer CHECK (uses > 0),
    uses_left     integer CHECK (uses_left >= 0),
    used          integer NOT NULL DEFAULT 0,
    auto_accept   boolean NOT NULL DEFAULT false,
    expires_at    timestamptz NOT NULL,
    created_by    uuid REFERENCES users (id),
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    CONSTRAINT enrolment_tokens_token_key UNIQUE (token_sha256)
);
CREATE INDEX enrolment_tokens_tenant_idx ON enrolment_tokens (tenant_id, created_at DESC, id DESC);

-- Whether a device may connect: every device created by an admin is
-- accepted; an enrolled one is pending until an admin accepts or rejects
-- it. A rejected device's credential is revoked and never restored.
ALTER TABLE devices
    ADD COLUMN admission text NOT NULL DEFAULT 'accepted'
        CHECK (admission IN ('pending', 'accepted', 'rejected')),
    ADD COLUMN rejected_at timestamptz,
    ADD COLUMN enrolment_token_id uuid REFERENCES enrolment_tokens (id);
CREATE INDEX devices_tenant_pending_idx ON devices (tenant_id, created_at DESC, id DESC)
    WHERE admission = 'pending' AND decommissioned_at IS NULL;
CREATE INDEX devices_rejected_idx ON devices (rejected_at) WHERE rejected_at IS NOT NULL;
