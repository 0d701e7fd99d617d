-- The worker's PostgreSQL role: it can LISTEN, read the event log, mark events
-- processed and delete processed ones past retention, and nothing else. It cannot read or write the bot's tables, insert
-- events, or call the functions that write events.
--
-- Apply after the migrations, as the owner of the cache_invalidation schema:
--   psql -v ON_ERROR_STOP=1 -d app -f deploy/postgres/roles.sql
-- then give the role a password without putting it in a file or shell history:
--   psql -d app -c '\password cache_invalidator'
-- Re-applying is harmless.
BEGIN;
SET LOCAL lock_timeout = '5s';

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'cache_invalidator') THEN
        CREATE ROLE cache_invalidator LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
    END IF;
END
$$;

-- LISTEN needs no grant. The worker reads pending events and writes only the
-- acknowledgement: processed_at before 0005_pending_queue, the pending queue from it on (the
-- column stays granted, for a rollback of 0005).
GRANT USAGE ON SCHEMA cache_invalidation TO cache_invalidator;
GRANT SELECT ON cache_invalidation.events TO cache_invalidator;
GRANT UPDATE (processed_at) ON cache_invalidation.events TO cache_invalidator;
-- Pruning processed events past the retention window (--retention; 0 disables it).
GRANT DELETE ON cache_invalidation.events TO cache_invalidator;
-- For `cache-invalidator check`: which triggers should exist, and the schema version.
GRANT SELECT ON cache_invalidation.expected_triggers TO cache_invalidator;
GRANT SELECT ON public.cache_invalidator_schema_migrations TO cache_invalidator;
-- The pending queue (0005_pending_queue): the worker acknowledges an event by deleting its id
-- there, and records when it acknowledged which ids. Skipped before 0005 is applied (re-apply this file after applying it).
DO $$
BEGIN
    IF to_regclass('cache_invalidation.pending') IS NOT NULL THEN
        GRANT SELECT, DELETE ON cache_invalidation.pending TO cache_invalidator;
        -- When it acknowledged what (for `replay --since`); pruned with the log.
        GRANT SELECT, INSERT, DELETE ON cache_invalidation.acknowledged TO cache_invalidator;
    END IF;
END
$$;
-- The private channel (0004_private_channel): notifications that carry the event, so the worker
-- deletes without reading the log first. The function LISTENs for the caller and returns the
-- channel's name; the table holding the name stays unreadable. Skipped before 0004 is applied.
DO $$
BEGIN
    IF to_regprocedure('cache_invalidation.listen_privately()') IS NOT NULL THEN
        GRANT EXECUTE ON FUNCTION cache_invalidation.listen_privately() TO cache_invalidator;
    END IF;
END
$$;

COMMIT;
