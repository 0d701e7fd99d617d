BEGIN;
-- 0005_pending_queue (down): back to "pending while processed_at is NULL".
--
-- Every event the pending table no longer holds was acknowledged: it gets a processed_at, so a
-- worker reading processed_at does not take them all for new. Those still pending stay NULL.
-- The bulk of that UPDATE runs before the lock, while the bot keeps writing; under the lock only
-- what was acknowledged meanwhile is left. Rebuilding the pending index scans the whole log
-- under that lock (about a second per few million events): run it at a quiet time, or prune
-- first (--retention).
SET LOCAL lock_timeout = '5s';
SET LOCAL search_path = pg_catalog, pg_temp;

DO $$
BEGIN
    IF to_regclass('cache_invalidation.pending') IS NOT NULL THEN
        UPDATE cache_invalidation.events e SET processed_at = clock_timestamp()
         WHERE e.processed_at IS NULL
           AND NOT EXISTS (SELECT 1 FROM cache_invalidation.pending p WHERE p.id = e.id);
        -- Waits for every transaction that has written an event (or acknowledged one) and not
        -- ended, and holds off new ones until this commits.
        LOCK TABLE cache_invalidation.events IN SHARE ROW EXCLUSIVE MODE;
        -- ACCESS EXCLUSIVE at once, not EXCLUSIVE and later the DROP's ACCESS EXCLUSIVE: a
        -- running worker's statement reads the queue (ACCESS SHARE, which EXCLUSIVE lets through)
        -- and then deletes from it; the upgrade from EXCLUSIVE would wait for that statement
        -- while it waits for this transaction, and the migration failed with a deadlock.
        LOCK TABLE cache_invalidation.pending IN ACCESS EXCLUSIVE MODE;
        UPDATE cache_invalidation.events e SET processed_at = clock_timestamp()
         WHERE e.processed_at IS NULL
           AND NOT EXISTS (SELECT 1 FROM cache_invalidation.pending p WHERE p.id = e.id);

        -- emit() as in 0004.
        EXECUTE $f$
            CREATE OR REPLACE FUNCTION cache_invalidation.emit(p_kind text, p_payload jsonb)
            RETURNS void
            LANGUAGE plpgsql
            SECURITY DEFINER
            SET search_path = pg_catalog, pg_temp
            SET trace_notify = off
            AS $b$
            DECLARE
                v_id bigint;
                v_message text;
            BEGIN
                INSERT INTO cache_invalidation.events (kind, payload)
                VALUES (p_kind, p_payload)
                RETURNING id INTO v_id;
                PERFORM pg_advisory_xact_lock_shared(7161114182524956279);
                IF pg_try_advisory_lock_shared(7161114182524956280) THEN
                    PERFORM pg_advisory_unlock_shared(7161114182524956280);
                    v_message := v_id::text || ' ' || p_kind || ' ' || p_payload::text;
                    IF octet_length(v_message) < 8000 THEN
                        PERFORM pg_notify(c.name, v_message) FROM cache_invalidation.private_channel c;
                    END IF;
                    PERFORM pg_notify('cache_invalidation', v_id::text);
                END IF;
            END;
            $b$
        $f$;
        REVOKE ALL ON FUNCTION cache_invalidation.emit(text, jsonb) FROM PUBLIC;

        CREATE INDEX IF NOT EXISTS events_pending_idx
            ON cache_invalidation.events (id)
            WHERE processed_at IS NULL;
        DROP TABLE cache_invalidation.pending;
        DROP TABLE IF EXISTS cache_invalidation.acknowledged;
    END IF;
    IF to_regclass('public.cache_invalidator_schema_migrations') IS NOT NULL THEN
        DELETE FROM public.cache_invalidator_schema_migrations WHERE version = 5;
    END IF;
END
$$;

COMMIT;
