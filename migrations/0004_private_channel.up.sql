BEGIN;
-- 0004_private_channel (up): the wake-up carries the event, on a channel only the worker knows.
--
-- With 0002/0003 a notification names only an event id, and the worker must read the event
-- from the log before it can delete anything: one more round trip between the commit and the
-- deletion, a fifth to a quarter of the whole lag. The payload cannot simply be put on the
-- public channel: NOTIFY is not authenticated and LISTEN needs no privilege, so any role that
-- can connect could read every user's telegram id and addresses off it, and forge deletions.
--
-- So emit() also sends the event itself (id, kind, payload) on a second channel
-- whose name is a 122-bit random secret. The worker's listen_privately() draws a new name on
-- every connect, stores it where only emit() can read it and LISTENs to it. Knowing the name is
-- then the capability to send on the channel and to listen in:
--   - the table holding it has row-level security without any policy, so no role sees its row
--     but its owner (emit's owner) and superusers: not the roles that default privileges grant
--     SELECT on new tables to, nor members of pg_read_all_data (a typical analytics role);
--   - emit() and listen_privately() run with trace_notify = off, which any role could otherwise
--     turn on to see the channel named in a DEBUG message of its own NOTIFY (and the latter with
--     the debug_print_* settings off);
--   - the table is unlogged: no replica or change-data-capture stream carries it;
--   - the worker's statements never contain it; a copy in a dump is stale after the worker's
--     next connect.
-- Even so the worker trusts the channel only as far as it must: it takes patterns and
-- whole-family deletions (wallet_deleted, table_truncated) only from the log, and acknowledges a
-- notified event only if the log holds that very event (same id, kind and payload); anything
-- else is read from the log by id. The log stays the source of truth, the private notification
-- is only the fast path.
--
-- The public channel keeps its id-only notification, so a worker older than this migration
-- (or one not granted listen_privately) works exactly as before.
SET LOCAL lock_timeout = '5s';
SET LOCAL search_path = pg_catalog, pg_temp;

DO $$
BEGIN
    IF to_regclass('public.cache_invalidator_schema_migrations') IS NULL
       OR NOT EXISTS (SELECT 1 FROM public.cache_invalidator_schema_migrations WHERE version = 3) THEN
        RAISE EXCEPTION 'cache_invalidation: 0004_private_channel needs 0003_quiet_notify, which is not applied'
              USING HINT = 'Apply the migrations in order (cache-invalidator migrate up does).';
    END IF;
END
$$;

-- One row, written only by listen_privately(). UNLOGGED: the name never reaches the WAL, so
-- no streaming replica, logical replication or change-data-capture tool carries it (an unlogged
-- table is empty on a standby and never decoded). After a crash the table is empty: emit() then
-- notifies the public channel only, until the worker connects again and draws a new name.
CREATE UNLOGGED TABLE IF NOT EXISTS cache_invalidation.private_channel (
    name    text NOT NULL CHECK (name ~ '^cache_invalidation_[0-9a-f]{32}$'),
    one_row bool PRIMARY KEY DEFAULT true CHECK (one_row)
);
ALTER TABLE cache_invalidation.private_channel SET UNLOGGED;
ALTER TABLE cache_invalidation.private_channel ENABLE ROW LEVEL SECURITY;
-- No grant at all, not even one that default privileges added when the table was created.
DO $$
DECLARE
    v_grantee oid;
BEGIN
    FOR v_grantee IN
        SELECT DISTINCT a.grantee
          FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
         WHERE c.oid = 'cache_invalidation.private_channel'::regclass AND a.grantee <> c.relowner
    LOOP
        IF v_grantee = 0 THEN
            REVOKE ALL ON cache_invalidation.private_channel FROM PUBLIC;
        ELSE
            EXECUTE format('REVOKE ALL ON cache_invalidation.private_channel FROM %I', pg_catalog.pg_get_userbyid(v_grantee));
        END IF;
    END LOOP;
END
$$;

-- LISTENs on a new private channel in the caller's session and returns its name; emit() sends
-- on it from the moment this commits. EXECUTE is granted to the worker's role by the DBA, like
-- its other privileges:
--   GRANT EXECUTE ON FUNCTION cache_invalidation.listen_privately() TO <worker>;
-- The debug_print_* settings (which a database's owner can switch on for every session with
-- ALTER DATABASE ... SET) would write the LISTEN statement, name included, to the server log.
CREATE OR REPLACE FUNCTION cache_invalidation.listen_privately()
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET trace_notify = off
SET debug_print_parse = off
SET debug_print_rewritten = off
SET debug_print_plan = off
AS $$
DECLARE
    -- gen_random_uuid() draws from pg_strong_random (the OS's CSPRNG); 122 of its bits are random.
    v_name text := 'cache_invalidation_' || replace(gen_random_uuid()::text, '-', '');
BEGIN
    INSERT INTO cache_invalidation.private_channel (name) VALUES (v_name)
    ON CONFLICT (one_row) DO UPDATE SET name = EXCLUDED.name;
    EXECUTE format('LISTEN %I', v_name);
    RETURN v_name;
END;
$$;
REVOKE ALL ON FUNCTION cache_invalidation.listen_privately() FROM PUBLIC;

CREATE OR REPLACE FUNCTION cache_invalidation.emit(p_kind text, p_payload jsonb)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET trace_notify = off
AS $$
DECLARE
    v_id bigint;
    v_message text;
BEGIN
    INSERT INTO cache_invalidation.events (kind, payload)
    VALUES (p_kind, p_payload)
    RETURNING id INTO v_id;
    -- G and W exactly as in 0003: no NOTIFY at all while the worker polls.
    PERFORM pg_advisory_xact_lock_shared(7161114182524956279);
    IF pg_try_advisory_lock_shared(7161114182524956280) THEN
        PERFORM pg_advisory_unlock_shared(7161114182524956280);
        -- "<id> <kind> <payload>" (the lag's start point comes from the log, with the
        -- acknowledgement). Past the 8000 bytes a
        -- notification may hold (a row with a very long value), only the id goes out, on the
        -- public channel below, and the worker reads the event from the log. Without a row (no
        -- worker has listened yet) only the public channel is notified.
        v_message := v_id::text || ' ' || p_kind || ' ' || p_payload::text;
        IF octet_length(v_message) < 8000 THEN
            PERFORM pg_notify(c.name, v_message) FROM cache_invalidation.private_channel c;
        END IF;
        -- After the private one, so a worker that hears both sees the event first.
        PERFORM pg_notify('cache_invalidation', v_id::text);
    END IF;
END;
$$;
REVOKE ALL ON FUNCTION cache_invalidation.emit(text, jsonb) FROM PUBLIC;

-- emit() reads the name with its owner's rights, and row-level security shows the row to the
-- table's owner only: the table and listen_privately() belong to emit()'s owner, whoever applies
-- this file (CREATE OR REPLACE keeps an existing function's owner). Fails, and applies nothing,
-- if the applying role may not give them to that owner.
DO $$
DECLARE
    v_owner text := (SELECT pg_catalog.pg_get_userbyid(p.proowner) FROM pg_catalog.pg_proc p
                      WHERE p.oid = 'cache_invalidation.emit(text,jsonb)'::regprocedure);
BEGIN
    EXECUTE format('ALTER TABLE cache_invalidation.private_channel OWNER TO %I', v_owner);
    EXECUTE format('ALTER FUNCTION cache_invalidation.listen_privately() OWNER TO %I', v_owner);
END
$$;

INSERT INTO public.cache_invalidator_schema_migrations (version, name)
VALUES (4, 'private_channel')
ON CONFLICT (version) DO NOTHING;

COMMIT;
