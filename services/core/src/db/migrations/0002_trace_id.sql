-- The trace id of the admin request that queued a command. It travels with
-- the command's events (AMQP headers), its instruction and its reports, so
-- an operator can follow one command through every service's logs.
ALTER TABLE commands ADD COLUMN trace_id text;
