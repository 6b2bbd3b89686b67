-- tend's initial schema: tenants, users, devices and their credentials,
-- commands with their whole lifecycle, and the outbox the monitor relays.

CREATE TABLE tenants (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tenants_name_key UNIQUE (name)
);

CREATE TABLE users (
    id               uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL REFERENCES tenants (id),
    -- Login takes a bare username, so usernames are unique across tenants.
    username         text NOT NULL,
    password_hash    text NOT NULL,
    role             text NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    is_system_admin  boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_username_key UNIQUE (username)
);
CREATE INDEX users_tenant_idx ON users (tenant_id);

CREATE TABLE devices (
    id                 uuid PRIMARY KEY,
    tenant_id          uuid NOT NULL REFERENCES tenants (id),
    name               text NOT NULL,
    device_type        text NOT NULL,
    labels             jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- online / offline as last decided by the monitor from heartbeats;
    -- a device never seen is 'unknown'.
    status             text NOT NULL DEFAULT 'unknown'
                       CHECK (status IN ('unknown', 'online', 'offline')),
    last_seen_at       timestamptz,
    reported           jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at         timestamptz NOT NULL DEFAULT now(),
    -- Set by DELETE: the row stays so commands keep their history, but the
    -- device disappears from the API and its credentials stop working.
    decommissioned_at  timestamptz
);
CREATE INDEX devices_tenant_created_idx ON devices (tenant_id, created_at DESC, id DESC)
    WHERE decommissioned_at IS NULL;
CREATE INDEX devices_labels_idx ON devices USING gin (labels jsonb_path_ops);
CREATE INDEX devices_decommissioned_idx ON devices (decommissioned_at)
    WHERE decommissioned_at IS NOT NULL;
CREATE INDEX devices_online_seen_idx ON devices (last_seen_at) WHERE status = 'online';

CREATE TABLE device_credentials (
    device_id      uuid PRIMARY KEY REFERENCES devices (id),
    -- SHA-256 of a 256-bit random secret: a slow password hash would add
    -- nothing against guessing 2^256 values and would make bulk
    -- provisioning crawl.
    secret_sha256  bytea NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz
);

CREATE TABLE commands (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    device_id     uuid NOT NULL REFERENCES devices (id),
    kind          text NOT NULL,
    params        jsonb NOT NULL DEFAULT '{}'::jsonb,
    status        text NOT NULL DEFAULT 'queued' CHECK (status IN (
                      'queued', 'delivered', 'in_progress', 'succeeded', 'failed',
                      'rejected', 'timed_out', 'expired', 'cancelled')),
    created_by    uuid REFERENCES users (id),
    created_at    timestamptz NOT NULL DEFAULT now(),
    delivered_at  timestamptz,
    started_at    timestamptz,
    finished_at   timestamptz,
    timeout_s     integer NOT NULL CHECK (timeout_s > 0),
    expires_at    timestamptz NOT NULL,
    result        jsonb,
    -- A report that arrived after the command had already ended (timed out,
    -- say): kept for the record, never changes the status.
    late_report   jsonb,
    -- When the command was last announced to the sync servers; the monitor
    -- announces again what is still waiting after two heartbeat intervals.
    announced_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX commands_device_created_idx ON commands (device_id, created_at DESC, id DESC);
CREATE INDEX commands_open_idx ON commands (device_id, created_at)
    WHERE status IN ('queued', 'delivered');
CREATE INDEX commands_queued_expiry_idx ON commands (expires_at) WHERE status = 'queued';
CREATE INDEX commands_running_idx ON commands (status)
    WHERE status IN ('delivered', 'in_progress');
CREATE INDEX commands_announce_idx ON commands (announced_at)
    WHERE status IN ('queued', 'delivered');

-- Events written in the same transaction as the change they announce; the
-- monitor publishes them to RabbitMQ and deletes them once confirmed.
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    topic       text NOT NULL,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Wake the relay as soon as a row is committed (NOTIFY is delivered at commit).
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tend_outbox', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
