-- The audit log: one row per admin action (and per login, failed or not),
-- written in the same transaction as the change it records. Append-only:
-- a trigger refuses every UPDATE and TRUNCATE, and every DELETE but the
-- retention sweep's (see tend_core::db::audit).
CREATE TABLE audit_log (
    id bigserial PRIMARY KEY,
    tenant_id uuid NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    actor_id uuid,
    actor_username text,
    action text NOT NULL,
    target_type text NOT NULL,
    target_id text,
    address inet,
    request_id text,
    summary jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_tenant_idx ON audit_log (tenant_id, id DESC);
