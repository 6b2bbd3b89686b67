-- Command batches: one request (`POST /commands/bulk`) that queued the
-- same command for every device a selector matched. The batch keeps what
-- was asked and what came of it; each command row names its batch, so the
-- batch's progress is read from the commands themselves.
CREATE TABLE command_batches (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  uuid REFERENCES users (id),
    selector    jsonb NOT NULL,
    command     jsonb NOT NULL,
    matched     integer NOT NULL,
    queued      integer NOT NULL,
    -- {reason: count} of the matched devices that got no command.
    skipped     jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX command_batches_tenant_idx ON command_batches (tenant_id, created_at DESC, id DESC);

ALTER TABLE commands ADD COLUMN batch_id uuid REFERENCES command_batches (id);
-- Partial: most commands are queued one at a time and never read by batch.
CREATE INDEX commands_batch_idx ON commands (batch_id, status) WHERE batch_id IS NOT NULL;
