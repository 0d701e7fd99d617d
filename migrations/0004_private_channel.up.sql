BEGIN;
-- 0004_private_channel (up): the wake-up carries the event, on a channel only the worker knows.
--
-- With 0002/0003 a notification names only an event id, and the worker must read the event
-- from the log before it can delete anything: one more round trip between the commit and the
-- deletion, a fifth to a quarter of the whole lag. The payload cannot simply be put on the
-- public channel: NOTIFY is not authenticated and LISTEN needs no privilege, so any role that
-- can connect could read every user's telegram id and addresses off it, and forge deletions.
--
-- So emit() also sends the event itself (id, kind, write time, payload) on a second channel
-- whose name is a 122-bit random secret, generated here and readable only by this schema's
-- owner. The worker LISTENs to it through listen_privately(), which only roles granted EXECUTE
-- can call and which never shows the name in the worker's own statements. Knowing the name is
-- then the capability to send on it: no role without it can forge an event there, and none can
-- listen in. The worker still takes patterns and whole-family deletions (wallet_deleted,
-- table_truncated) only from the log, and acknowledges every event in the log as before: the
-- log stays the source of truth, the private notification is only the fast path.
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

-- One row. Applying this file again keeps the name, so a running worker stays subscribed. To
-- change it (say it leaked): UPDATE this row, then restart the worker; meanwhile it is woken
-- through the public channel and reads events from the log, as before this migration.
CREATE TABLE IF NOT EXISTS cache_invalidation.private_channel (
    name    text NOT NULL CHECK (name ~ '^[a-z0-9_]{32,63}$'),
    one_row bool PRIMARY KEY DEFAULT true CHECK (one_row)
);
REVOKE ALL ON cache_invalidation.private_channel FROM PUBLIC;
-- gen_random_uuid() draws from pg_strong_random (the OS's CSPRNG); 122 of its bits are random.
INSERT INTO cache_invalidation.private_channel (name)
VALUES ('cache_invalidation_' || replace(gen_random_uuid()::text, '-', ''))
ON CONFLICT (one_row) DO NOTHING;

-- LISTENs on the private channel in the caller's session and returns its name. EXECUTE is
-- granted to the worker's role by the DBA, like its other privileges:
--   GRANT EXECUTE ON FUNCTION cache_invalidation.listen_privately() TO <worker>;
CREATE OR REPLACE FUNCTION cache_invalidation.listen_privately()
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_name text;
BEGIN
    SELECT c.name INTO STRICT v_name FROM cache_invalidation.private_channel c;
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
AS $$
DECLARE
    v_id bigint;
    v_micros bigint;
    v_message text;
BEGIN
    INSERT INTO cache_invalidation.events (kind, payload)
    VALUES (p_kind, p_payload)
    RETURNING id, (extract(epoch FROM created_at) * 1000000)::bigint INTO v_id, v_micros;
    -- G and W exactly as in 0003: no NOTIFY at all while the worker polls.
    PERFORM pg_advisory_xact_lock_shared(7161114182524956279);
    IF pg_try_advisory_lock_shared(7161114182524956280) THEN
        PERFORM pg_advisory_unlock_shared(7161114182524956280);
        -- "<id> <kind> <write time, µs since the epoch> <payload>". Past the 8000 bytes a
        -- notification may hold (a row with a very long value), only the id goes out, on the
        -- public channel below, and the worker reads the event from the log.
        v_message := v_id::text || ' ' || p_kind || ' ' || v_micros::text || ' ' || p_payload::text;
        IF octet_length(v_message) < 8000 THEN
            PERFORM pg_notify(c.name, v_message) FROM cache_invalidation.private_channel c;
        END IF;
        -- After the private one, so a worker that hears both sees the event first.
        PERFORM pg_notify('cache_invalidation', v_id::text);
    END IF;
END;
$$;
REVOKE ALL ON FUNCTION cache_invalidation.emit(text, jsonb) FROM PUBLIC;

INSERT INTO public.cache_invalidator_schema_migrations (version, name)
VALUES (4, 'private_channel')
ON CONFLICT (version) DO NOTHING;

COMMIT;
