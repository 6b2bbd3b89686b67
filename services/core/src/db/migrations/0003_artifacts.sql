-- Artifacts: software images uploaded once and offered by version and
-- device type (seeds 002 to 004). The bytes live in the artifact store
-- (TEND_ARTIFACT_STORE) under the artifact's id; this table holds what is
-- decided about them.
CREATE TABLE artifacts (
    id               uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL REFERENCES tenants (id),
    component        text NOT NULL,
    version          text NOT NULL,
    device_types     text[] NOT NULL CHECK (cardinality(device_types) > 0),
    filename         text,
    -- What the admin declared at creation, if anything: the upload must
    -- match it or nothing is kept.
    expected_sha256  text,
    expected_size    bigint,
    -- What the upload computed, once it completed, and the store key of
    -- its bytes. Each upload writes an object of its own and the first to
    -- complete is recorded here: a failed, cut or losing upload deletes
    -- its object, and no upload can leave an artifact stuck half-written.
    sha256           text,
    size             bigint,
    object_key       text,
    status           text NOT NULL DEFAULT 'pending_upload'
                     CHECK (status IN ('pending_upload', 'ready')),
    released         boolean NOT NULL DEFAULT false,
    created_by       uuid REFERENCES users (id),
    created_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (status <> 'ready' OR (sha256 IS NOT NULL AND size IS NOT NULL AND object_key IS NOT NULL)),
    CHECK (NOT released OR status = 'ready')
);
CREATE INDEX artifacts_tenant_created_idx ON artifacts (tenant_id, created_at DESC, id DESC);
-- The update check reads the released artifacts of one component.
CREATE INDEX artifacts_released_idx ON artifacts (tenant_id, component) WHERE released;

-- Devices an artifact is never offered or sent to (seed 004's per-version
-- blacklist): added by an admin, or by tend when an upgrade to the
-- artifact rolled back.
CREATE TABLE artifact_denylist (
    artifact_id  uuid NOT NULL REFERENCES artifacts (id) ON DELETE CASCADE,
    device_id    uuid NOT NULL REFERENCES devices (id),
    reason       text,
    -- NULL when tend added the device itself.
    created_by   uuid REFERENCES users (id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (artifact_id, device_id)
);

-- The artifact and component a software command (upgrade, restore) works
-- on. An artifact in use by an open command cannot be deleted, and one
-- component of one device is changed by one command at a time: two
-- concurrent update checks, or an admin and a check, queue one upgrade.
-- A deleted artifact leaves its commands' history: their params keep its
-- id, component, version and digest.
ALTER TABLE commands ADD COLUMN artifact_id uuid REFERENCES artifacts (id) ON DELETE SET NULL;
ALTER TABLE commands ADD COLUMN component text;
CREATE INDEX commands_open_artifact_idx ON commands (artifact_id)
    WHERE artifact_id IS NOT NULL AND status IN ('queued', 'delivered', 'in_progress');
CREATE UNIQUE INDEX commands_open_component_key ON commands (device_id, component)
    WHERE component IS NOT NULL AND status IN ('queued', 'delivered', 'in_progress');

-- The components a device runs, as its agent last reported them:
-- {name: {version, updated_at}}. `updated_at` moves only when the version
-- does, so a heartbeat that changes nothing changes nothing here.
ALTER TABLE devices ADD COLUMN components jsonb NOT NULL DEFAULT '{}'::jsonb;
CREATE INDEX devices_components_idx ON devices USING gin (components jsonb_path_ops);
