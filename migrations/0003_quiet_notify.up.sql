BEGIN;
-- 0003_quiet_notify (up): NOTIFY only while the worker is waiting for one.
--
-- Every transaction that NOTIFYs takes one cluster-wide lock at commit and
-- holds it until its commit record is flushed, so notifying commits are
-- serialized: under concurrent writes the bot loses most of its throughput to
-- the wake-up, not to the event row. While the worker is busy it reads the log
-- itself in a loop and needs no wake-up, so emit() skips the NOTIFY then.
--
-- Two advisory locks make that safe (key values in docs/design.md, "Quiet NOTIFY"):
--   W, "worker polling": the active worker holds it exclusively (session
--     level) while it polls. A writer that can take it shared (and lets go
--     at once) finds the worker waiting, so it NOTIFYs; one that cannot skips
--     the NOTIFY.
--   G, "writer in flight": every writer holds it shared until its transaction
--     ends. Before the worker stops polling and goes back to waiting for
--     notifications, it releases W, then waits until it can take G
--     exclusively for an instant (never queueing for it), which proves that
--     every writer that skipped its NOTIFY has committed or rolled back; then
--     it reads the whole pending log once. So an event is always either
--     notified or found by the worker's own reading, never neither.
-- Only emit() changes; the event log, its rows and the triggers stay as they
-- are. A worker older than this migration still works (it is always notified
-- then, as it never takes W).
SET LOCAL lock_timeout = '5s';

CREATE OR REPLACE FUNCTION cache_invalidation.emit(p_kind text, p_payload jsonb)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_id bigint;
BEGIN
    INSERT INTO cache_invalidation.events (kind, payload)
    VALUES (p_kind, p_payload)
    RETURNING id INTO v_id;
    -- G, shared, until this transaction ends (re-taking it for later rows of
    -- the same transaction only counts up a local reference).
    PERFORM pg_advisory_xact_lock_shared(7161114182524956279);
    -- W free: the worker waits for notifications. W is only looked at, not
    -- kept: a writer holding it until commit (while it queues for the NOTIFY
    -- lock) would keep a busy worker from ever taking it. Nothing needs it
    -- kept: a NOTIFY decided on here reaches the worker whatever it does
    -- meanwhile, since it LISTENs throughout. The payload is only the id, as
    -- in 0002: the worker reads the event itself from the log.
    IF pg_try_advisory_lock_shared(7161114182524956280) THEN
        PERFORM pg_advisory_unlock_shared(7161114182524956280);
        PERFORM pg_notify('cache_invalidation', v_id::text);
    END IF;
END;
$$;
REVOKE ALL ON FUNCTION cache_invalidation.emit(text, jsonb) FROM PUBLIC;

INSERT INTO public.cache_invalidator_schema_migrations (version, name)
VALUES (3, 'quiet_notify')
ON CONFLICT (version) DO NOTHING;

COMMIT;
