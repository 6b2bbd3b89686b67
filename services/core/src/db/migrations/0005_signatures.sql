-- Instruction signatures: tend-platform signs every command with its
-- Ed25519 key (TEND_SIGNING_KEY_FILE) when it is queued, and agents run
-- nothing that does not verify. A command queued by tend-sync (an update
-- check) waits unsigned until a platform replica has checked and signed it;
-- until then it is neither announced nor delivered.
ALTER TABLE commands ADD COLUMN key_id text, ADD COLUMN signature text;
-- Commands queued before signing existed are signed by the platform too,
-- once, when it first starts with a key.
CREATE INDEX commands_unsigned_idx ON commands (created_at)
    WHERE signature IS NULL AND status = 'queued';
