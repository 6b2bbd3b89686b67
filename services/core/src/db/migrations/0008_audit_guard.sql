-- The audit log is append-only for tend.
--
-- tend connects as whatever role TEND_DATABASE_URL names, often the owner
-- of the tables or a superuser, so privileges alone cannot protect the
-- log: triggers refuse every UPDATE and TRUNCATE, whoever runs them, and
-- every DELETE but the retention sweep's. The one exception is narrow: a
-- row may be deleted only once it is older than the retention period, and
-- that period is read by the trigger from `audit_retention` (never from
-- the DELETE statement), with a floor of 1 day enforced by a CHECK. So no
-- statement tend can send, whatever its WHERE clause, can remove or alter
-- the record of the last day, and none can alter any row at all. Changing
-- the period is itself refused below the floor.
--
-- What this does not stop: a role that may ALTER the table (its owner or a
-- superuser) can disable the triggers. Where the log must also hold
-- against a compromised application, run `tend-platform migrate` as the
-- owner and the services as a role that owns nothing (it then gets only
-- INSERT and SELECT on audit_log, as granted to it by the operator): the
-- REVOKE below already takes UPDATE, DELETE and TRUNCATE from PUBLIC.
--
-- `at` comes from the database clock: a BEFORE INSERT trigger sets it, so
-- a caller can neither backdate nor postdate a row.

REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM PUBLIC;

-- The retention period, one row. The monitor sets it from
-- TEND_AUDIT_RETENTION_DAYS at every start; 365 days until it does.
CREATE TABLE audit_retention (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    days integer NOT NULL DEFAULT 365 CHECK (days >= 1)
);
INSERT INTO audit_retention DEFAULT VALUES;
REVOKE DELETE, TRUNCATE ON audit_retention FROM PUBLIC;

CREATE FUNCTION audit_log_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.at := now();
    RETURN NEW;
END
$$;

CREATE FUNCTION audit_log_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE FUNCTION audit_log_expire() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    keep integer;
BEGIN
    SELECT days INTO keep FROM audit_retention;
    -- A missing row keeps everything rather than nothing.
    IF keep IS NULL OR OLD.at >= now() - make_interval(days => greatest(keep, 1)) THEN
        RAISE EXCEPTION 'audit_log is append-only: row % is within the retention period', OLD.id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN OLD;
END
$$;

CREATE TRIGGER audit_log_stamp BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_stamp();
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse();
CREATE TRIGGER audit_log_expire BEFORE DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_expire();
CREATE TRIGGER audit_retention_no_truncate BEFORE TRUNCATE ON audit_retention
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse();

-- The sweep deletes by age, oldest first; the filters read by time.
CREATE INDEX audit_log_at_idx ON audit_log (at);
CREATE INDEX audit_log_tenant_action_idx ON audit_log (tenant_id, action text_pattern_ops, id DESC);
