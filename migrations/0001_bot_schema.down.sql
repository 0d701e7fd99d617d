BEGIN;
-- 0001_bot_schema (down): forget that 0001 was applied, and nothing more.
--
-- The bot tables are deliberately never dropped: they may have existed before
-- 0001 ran (CREATE TABLE IF NOT EXISTS cannot tell us), and they hold users'
-- wallets (with their encrypted keys), trades and transfers. No rollback may destroy
-- them or any row the bot wrote.

-- DDL on a busy table must fail fast rather than queue behind a long bot
-- transaction and stall every write behind it.
SET LOCAL lock_timeout = '5s';

-- Only built-ins may be resolved from unqualified names.
SET LOCAL search_path = pg_catalog, pg_temp;

-- Guarded so that rolling back twice is not an error. The tracking table goes
-- too once nothing is recorded in it, so the database returns to the state
-- before the first up (no leftover empty table).
DO $$
BEGIN
    IF to_regclass('public.cache_invalidator_schema_migrations') IS NOT NULL THEN
        DELETE FROM public.cache_invalidator_schema_migrations WHERE version = 1;
        IF NOT EXISTS (SELECT 1 FROM public.cache_invalidator_schema_migrations) THEN
            DROP TABLE public.cache_invalidator_schema_migrations;
        END IF;
    END IF;
END
$$;

COMMIT;
