BEGIN;
-- 0004_private_channel (down): emit() as in 0003 (the event id on the public channel only), and
-- the private channel gone. A worker listening on it is still woken through the public channel.
SET LOCAL lock_timeout = '5s';

DO $$
BEGIN
    -- Nothing to restore if 0002 was rolled back already (its schema is gone).
    IF to_regnamespace('cache_invalidation') IS NOT NULL THEN
        EXECUTE $f$
            CREATE OR REPLACE FUNCTION cache_invalidation.emit(p_kind text, p_payload jsonb)
            RETURNS void
            LANGUAGE plpgsql
            SECURITY DEFINER
            SET search_path = pg_catalog, pg_temp
            AS $b$
            DECLARE
                v_id bigint;
            BEGIN
                INSERT INTO cache_invalidation.events (kind, payload)
                VALUES (p_kind, p_payload)
                RETURNING id INTO v_id;
                PERFORM pg_advisory_xact_lock_shared(7161114182524956279);
                IF pg_try_advisory_lock_shared(7161114182524956280) THEN
                    PERFORM pg_advisory_unlock_shared(7161114182524956280);
                    PERFORM pg_notify('cache_invalidation', v_id::text);
                END IF;
            END;
            $b$
        $f$;
        REVOKE ALL ON FUNCTION cache_invalidation.emit(text, jsonb) FROM PUBLIC;
        DROP FUNCTION IF EXISTS cache_invalidation.listen_privately();
        DROP TABLE IF EXISTS cache_invalidation.private_channel;
    END IF;
    IF to_regclass('public.cache_invalidator_schema_migrations') IS NOT NULL THEN
        DELETE FROM public.cache_invalidator_schema_migrations WHERE version = 4;
    END IF;
END
$$;

COMMIT;
