BEGIN;
-- 0002_cache_invalidation (down): remove the invalidation layer, and only it.
--
-- The bot tables and their rows stay untouched; only our triggers come off
-- them. The event log goes with the schema: events still pending at this
-- point will never be processed, so flush or expire the cache after rolling
-- back if the worker was behind. Safe to run twice.

-- DDL on a busy table must fail fast rather than queue behind a long bot
-- transaction: DROP TRIGGER needs an exclusive lock on the bot's table, and
-- while our request waits every later read and write of it queues behind.
SET LOCAL lock_timeout = '5s';

-- Only built-ins may be resolved from unqualified names.
SET LOCAL search_path = pg_catalog, pg_temp;

-- A table may be gone (someone dropped it, and its triggers with it), and a
-- trigger may already be gone (second run): both are skipped. Checking
-- pg_trigger first also means a repeated rollback takes no lock at all on the
-- bot's tables, since DROP TRIGGER IF EXISTS would lock them even when
-- there is nothing to drop.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT t.tbl, t.trg
          FROM (VALUES
                  ('trades',    'cache_invalidation_trades_insert'),
                  ('trades',    'cache_invalidation_trades_update'),
                  ('trades',    'cache_invalidation_trades_truncate'),
                  ('transfers', 'cache_invalidation_transfers_insert'),
                  ('transfers', 'cache_invalidation_transfers_update'),
                  ('transfers', 'cache_invalidation_transfers_truncate'),
                  ('settings',  'cache_invalidation_settings_change'),
                  ('settings',  'cache_invalidation_settings_update'),
                  ('settings',  'cache_invalidation_settings_truncate'),
                  ('wallets',   'cache_invalidation_wallets_insert'),
                  ('wallets',   'cache_invalidation_wallets_update'),
                  ('wallets',   'cache_invalidation_wallets_delete'),
                  ('wallets',   'cache_invalidation_wallets_truncate')
               ) AS t(tbl, trg)
    LOOP
        IF to_regclass(format('public.%I', r.tbl)) IS NOT NULL
           AND EXISTS (SELECT 1
                         FROM pg_catalog.pg_trigger g
                        WHERE g.tgrelid = to_regclass(format('public.%I', r.tbl))
                          AND g.tgname = r.trg
                          AND NOT g.tgisinternal) THEN
            EXECUTE format('DROP TRIGGER IF EXISTS %I ON public.%I', r.trg, r.tbl);
        END IF;
    END LOOP;
END
$$;

-- Everything else 0002 created lives in this schema: the event log, emit, the
-- trigger functions, request_refresh and expected_triggers.
DROP SCHEMA IF EXISTS cache_invalidation CASCADE;

-- The tracking table may be absent (second run, or 0001 rolled back first).
-- If 0002 was applied alone it created the table, so it also drops it once
-- nothing is recorded in it; after a normal 0001 + 0002 install, 0001's row
-- keeps it.
DO $$
BEGIN
    IF to_regclass('public.cache_invalidator_schema_migrations') IS NOT NULL THEN
        DELETE FROM public.cache_invalidator_schema_migrations WHERE version = 2;
        IF NOT EXISTS (SELECT 1 FROM public.cache_invalidator_schema_migrations) THEN
            DROP TABLE public.cache_invalidator_schema_migrations;
        END IF;
    END IF;
END
$$;

COMMIT;
