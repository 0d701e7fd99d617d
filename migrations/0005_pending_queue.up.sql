BEGIN;
-- 0005_pending_queue (up): what is still to invalidate moves out of the log into a narrow table.
--
-- Until now an event was pending while its processed_at was NULL, so acknowledging one was an
-- UPDATE of its row in the log: a new row version that can never be HOT (processed_at is in the
-- pending index's predicate), a new primary-key entry, ~720 bytes of WAL, and a dead row for
-- autovacuum to clear out of a table and indexes as large as the retention window. That UPDATE
-- was most of PostgreSQL's share of a backlog drain, and of the worker's cost to the bot under
-- load.
--
-- Now emit() also inserts the event's id into cache_invalidation.pending, and the worker
-- acknowledges by deleting it there: no new row version, no index entry, ~50 bytes of WAL, and
-- the dead rows are in a table that holds only what is in flight. The log is append-only; its
-- pending index (on processed_at) goes, which also lightens the bot's row. Every rule of
-- "pending" stays: an event is pending until a worker acknowledged it after Redis confirmed its
-- deletions, whatever order transactions commit in; unknown kinds stay pending for a newer
-- worker.
--
-- processed_at is no longer written (it stays, NULL for new events, for a rollback). Apply this
-- after every worker runs a release that reads cache_invalidation.pending (this one: it uses the
-- pending table when it exists and processed_at when it does not, and switches when it sees
-- this migration applied or rolled back). An older worker would take every event since this
-- migration for unprocessed.
SET LOCAL lock_timeout = '5s';
SET LOCAL search_path = pg_catalog, pg_temp;

DO $$
BEGIN
    IF to_regclass('public.cache_invalidator_schema_migrations') IS NULL
       OR NOT EXISTS (SELECT 1 FROM public.cache_invalidator_schema_migrations WHERE version = 4) THEN
        RAISE EXCEPTION 'cache_invalidation: 0005_pending_queue needs 0004_private_channel, which is not applied'
              USING HINT = 'Apply the migrations in order (cache-invalidator migrate up does).';
    END IF;
END
$$;

-- Waits (at most lock_timeout) for every transaction that has written an event and not ended,
-- and holds off new ones until this commits: the copy below then sees every event whose
-- transaction commits, and none is written meanwhile without its pending row. Also holds off a
-- worker's acknowledgements. SHARE ROW EXCLUSIVE conflicts with writers, not with readers.
LOCK TABLE cache_invalidation.events IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE IF NOT EXISTS cache_invalidation.pending (
    id bigint PRIMARY KEY
);
-- A queue: rows live milliseconds. Vacuumed often so its index stays short; each vacuum is cheap
-- because the table only ever holds what is in flight.
ALTER TABLE cache_invalidation.pending SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_cost_delay = 0
);
REVOKE ALL ON cache_invalidation.pending FROM PUBLIC;

-- What processed_at told `replay --since T` (which events were processed after T, whenever they
-- were created), kept per second instead of per event: before acknowledging, the worker records
-- the lowest id it is about to acknowledge, at least once a second while it acknowledges. Every
-- event acknowledged after T then has an id at or above the lowest id recorded from one second
-- before T on. Pruned with the log (--retention).
CREATE TABLE IF NOT EXISTS cache_invalidation.acknowledged (
    at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    min_id bigint      NOT NULL
);
CREATE INDEX IF NOT EXISTS acknowledged_at_idx ON cache_invalidation.acknowledged (at);
REVOKE ALL ON cache_invalidation.acknowledged FROM PUBLIC;

INSERT INTO cache_invalidation.pending (id)
SELECT e.id FROM cache_invalidation.events e WHERE e.processed_at IS NULL
ON CONFLICT (id) DO NOTHING;

-- As in 0004, plus the pending row (in the same transaction as the event, so both or neither).
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
    INSERT INTO cache_invalidation.pending (id) VALUES (v_id);
    -- G and W exactly as in 0003: no NOTIFY at all while the worker polls.
    PERFORM pg_advisory_xact_lock_shared(7161114182524956279);
    IF pg_try_advisory_lock_shared(7161114182524956280) THEN
        PERFORM pg_advisory_unlock_shared(7161114182524956280);
        -- As in 0004: the event on the private channel when it fits, the id on the public one.
        v_message := v_id::text || ' ' || p_kind || ' ' || p_payload::text;
        IF octet_length(v_message) < 8000 THEN
            PERFORM pg_notify(c.name, v_message) FROM cache_invalidation.private_channel c;
        END IF;
        PERFORM pg_notify('cache_invalidation', v_id::text);
    END IF;
END;
$$;
REVOKE ALL ON FUNCTION cache_invalidation.emit(text, jsonb) FROM PUBLIC;

-- The new tables belong to emit()'s owner, as the log does (emit() writes the queue with its
-- owner's rights), whoever applies this file.
DO $$
DECLARE
    v_owner text := (SELECT pg_catalog.pg_get_userbyid(p.proowner) FROM pg_catalog.pg_proc p
                      WHERE p.oid = 'cache_invalidation.emit(text,jsonb)'::regprocedure);
BEGIN
    EXECUTE format('ALTER TABLE cache_invalidation.pending OWNER TO %I', v_owner);
    EXECUTE format('ALTER TABLE cache_invalidation.acknowledged OWNER TO %I', v_owner);
END
$$;

-- Nothing reads processed_at any more; its index only cost the bot an entry per event.
DROP INDEX IF EXISTS cache_invalidation.events_pending_idx;

INSERT INTO public.cache_invalidator_schema_migrations (version, name)
VALUES (5, 'pending_queue')
ON CONFLICT (version) DO NOTHING;

COMMIT;
