BEGIN;
-- 0003_quiet_notify (down): emit() NOTIFYs for every event again, as in 0002.
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
                PERFORM pg_notify('cache_invalidation', v_id::text);
            END;
            $b$
        $f$;
        REVOKE ALL ON FUNCTION cache_invalidation.emit(text, jsonb) FROM PUBLIC;
    END IF;
    IF to_regclass('public.cache_invalidator_schema_migrations') IS NOT NULL THEN
        DELETE FROM public.cache_invalidator_schema_migrations WHERE version = 3;
    END IF;
END
$$;

COMMIT;
