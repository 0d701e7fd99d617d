BEGIN;
-- 0002_cache_invalidation (up): the invalidation layer.
--
-- Row triggers on the bot's tables append an event to a durable log in the
-- same transaction as the bot's write, so the event commits (or rolls back)
-- with it, and wake the worker with a NOTIFY that PostgreSQL delivers at
-- commit. Attaches to tables that already exist, whether 0001 or the bot
-- created them, with or without extra columns. Applying it again replaces the
-- functions and triggers in place and keeps the event log.

-- DDL on a busy table must fail fast rather than queue behind a long bot
-- transaction: CREATE TRIGGER needs a lock that conflicts with the bot's
-- writes, and while our request waits every later write to that table queues
-- behind it. Failing after 5 s and retrying later is the lesser harm.
SET LOCAL lock_timeout = '5s';

-- Trigger WHEN clauses are resolved now, with this session's search_path.
-- Restricting it to the built-ins means a look-alike function or operator
-- (say a to_jsonb(settings) someone created in public) can never be bound
-- into our triggers. Everything we create is schema-qualified.
SET LOCAL search_path = pg_catalog, pg_temp;

-- Same table as 0001's, created here too because 0002 may be applied alone on
-- a database whose bot tables predate this project.
CREATE TABLE IF NOT EXISTS public.cache_invalidator_schema_migrations (
    version    bigint      PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- The trigger bodies look up NEW.<column> only when they run, so a bot table
-- missing a column would surface as an error inside the bot's own write.
-- Refuse here instead, with one message naming everything that is missing.
DO $$
DECLARE
    v_missing text;
BEGIN
    SELECT string_agg(format('public.%I.%I', r.tbl, r.col), ', ' ORDER BY r.ord)
      INTO v_missing
      FROM (VALUES
              (1, 'wallets', 'telegram_id'), (2, 'wallets', 'address'),
              (3, 'settings', 'telegram_id'),
              (4, 'trades', 'id'), (5, 'trades', 'telegram_id'),
              (6, 'trades', 'wallet_address'), (7, 'trades', 'tx_hash'),
              (8, 'trades', 'side'), (9, 'trades', 'sell_id'),
              (10, 'trades', 'status'),
              (11, 'transfers', 'id'), (12, 'transfers', 'telegram_id'),
              (13, 'transfers', 'from_address'), (14, 'transfers', 'to_address'),
              (15, 'transfers', 'tx_hash'), (16, 'transfers', 'status')
           ) AS r(ord, tbl, col)
     WHERE NOT EXISTS (
             SELECT 1
               FROM pg_catalog.pg_attribute a
              WHERE a.attrelid = to_regclass(format('public.%I', r.tbl))
                AND a.attname = r.col
                AND a.attnum > 0
                AND NOT a.attisdropped);
    IF v_missing IS NOT NULL THEN
        RAISE EXCEPTION 'cache_invalidation: the bot tables lack required columns (or the tables are missing): %', v_missing
              USING HINT = 'Apply 0001_bot_schema first, or add the columns SPEC.md lists to the existing tables.';
    END IF;
END
$$;

CREATE SCHEMA IF NOT EXISTS cache_invalidation;
-- The bot must be able to call request_refresh. Every object in the schema
-- carries its own privileges, so USAGE alone exposes nothing else.
GRANT USAGE ON SCHEMA cache_invalidation TO PUBLIC;

-- A NOTIFY alone is lost for a listener that is disconnected at commit time;
-- this WAL-logged table is what makes the worker lose nothing (NOTIFY only
-- makes it fast). processed_at is the acknowledgement, written by the worker
-- only after Redis confirmed every deletion the event asked for. Identity
-- values are taken at insert, not at commit, so ids can become visible out of
-- order: the worker must look for every pending row, not only ids above the
-- last one it saw. The partial index keeps that "pending" lookup cheap however
-- long the history grows.
CREATE TABLE IF NOT EXISTS cache_invalidation.events (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind         text        NOT NULL,
    payload      jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    processed_at timestamptz
);
CREATE INDEX IF NOT EXISTS events_pending_idx
    ON cache_invalidation.events (id)
    WHERE processed_at IS NULL;

-- Pruning (the worker deletes processed events past its retention window) finds old rows by
-- creation time. Rows are appended in time order, so a BRIN index answers that for a few pages
-- of index and costs the bot's inserts next to nothing, unlike a B-tree.
CREATE INDEX IF NOT EXISTS events_created_at_brin
    ON cache_invalidation.events USING brin (created_at);

-- A queue table: every acknowledgement leaves a dead row version and a dead entry in the
-- pending index, which each drain pass walks until vacuum removes them. The default trigger
-- (20 % of the table) would let millions pile up; vacuum after every 10,000 instead, unthrottled.
ALTER TABLE cache_invalidation.events SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_cost_delay = 0
);
-- Only the triggers (through emit) write events; a role that could insert
-- here could make the worker delete any user's keys.
REVOKE ALL ON cache_invalidation.events FROM PUBLIC;
-- The worker's role is site-specific, so it is not granted here. Least
-- privilege for it is:
--   GRANT USAGE ON SCHEMA cache_invalidation TO <worker>;
--   GRANT SELECT, UPDATE (processed_at) ON cache_invalidation.events TO <worker>;
--   GRANT SELECT ON cache_invalidation.expected_triggers TO <worker>;
-- plus DELETE on events if the worker prunes acknowledged history.

-- The one way events enter the log. SECURITY DEFINER so that the bot's
-- writes can log events without the bot holding any privilege on the log; a
-- fixed search_path so that the caller's search_path cannot redirect any name
-- used inside (pg_temp last, so temporary objects cannot shadow built-ins).
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
    -- The payload is only the id: the worker reads the event itself from the
    -- log, so a notification forged by anyone who can connect names at most
    -- an event that really exists, and can delete nothing on its own. It also
    -- keeps the NOTIFY far below its 8000-byte limit, which a row holding a
    -- long value would exceed, failing the bot's write.
    PERFORM pg_notify('cache_invalidation', v_id::text);
END;
$$;
-- Otherwise anyone could forge events, i.e. delete any user's cache keys.
REVOKE ALL ON FUNCTION cache_invalidation.emit(text, jsonb) FROM PUBLIC;

-- The trigger functions below are SECURITY DEFINER for the same reason as
-- emit (the bot holds no privilege on emit or the log), and have EXECUTE
-- revoked from PUBLIC because CREATE TRIGGER requires it: no one else can
-- attach them to a table of their own and emit events through it. Columns
-- are cast to text so enum-typed or otherwise differently-typed bot columns
-- still work, and so every payload value is a JSON string or JSON null (the
-- worker renders values into keys verbatim; a JSON number would lose digits).

-- Fired only by triggers whose WHEN clause already saw a settled status, so
-- pending trades never enter plpgsql at all.
CREATE OR REPLACE FUNCTION cache_invalidation.on_trade_settled()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM cache_invalidation.emit('trade_settled', jsonb_build_object(
        'telegram_id',    NEW.telegram_id::text,
        'wallet_address', NEW.wallet_address::text,
        'tx_hash',        NEW.tx_hash::text,
        'side',           NEW.side::text,
        'sell_id',        NEW.sell_id::text,
        'status',         NEW.status::text,
        'trade_id',       NEW.id::text));
    RETURN NULL;
END;
$$;
REVOKE ALL ON FUNCTION cache_invalidation.on_trade_settled() FROM PUBLIC;

-- The receiver is resolved now, inside the bot's transaction, because a
-- worker reading wallets later could see a wallet that has since changed.
-- LIMIT 1: should a bot-created wallets table lack the UNIQUE on address, a
-- duplicate must not turn into an error that fails the bot's transfer.
CREATE OR REPLACE FUNCTION cache_invalidation.on_transfer_settled()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM cache_invalidation.emit('transfer_settled', jsonb_build_object(
        'telegram_id',          NEW.telegram_id::text,
        'from_address',         NEW.from_address::text,
        'to_address',           NEW.to_address::text,
        'tx_hash',              NEW.tx_hash::text,
        'receiver_telegram_id', (SELECT w.telegram_id::text
                                   FROM public.wallets w
                                  WHERE w.address = NEW.to_address
                                  ORDER BY w.telegram_id
                                  LIMIT 1),
        'status',               NEW.status::text,
        'transfer_id',          NEW.id::text));
    RETURN NULL;
END;
$$;
REVOKE ALL ON FUNCTION cache_invalidation.on_transfer_settled() FROM PUBLIC;

-- When an UPDATE moves a row to another telegram_id, both users' cached
-- settings are now wrong, so both are named.
CREATE OR REPLACE FUNCTION cache_invalidation.on_settings_changed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM cache_invalidation.emit('settings_changed',
            jsonb_build_object('telegram_id', NEW.telegram_id::text));
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM cache_invalidation.emit('settings_changed',
            jsonb_build_object('telegram_id', OLD.telegram_id::text));
    ELSE
        IF OLD.telegram_id IS DISTINCT FROM NEW.telegram_id THEN
            PERFORM cache_invalidation.emit('settings_changed',
                jsonb_build_object('telegram_id', OLD.telegram_id::text));
        END IF;
        PERFORM cache_invalidation.emit('settings_changed',
            jsonb_build_object('telegram_id', NEW.telegram_id::text));
    END IF;
    RETURN NULL;
END;
$$;
REVOKE ALL ON FUNCTION cache_invalidation.on_settings_changed() FROM PUBLIC;

-- As for settings, a wallet moved to another telegram_id leaves the old
-- owner's cached user and balances wrong too, so wallet_changed names both
-- (each with the old and the new address).
CREATE OR REPLACE FUNCTION cache_invalidation.on_wallet_changed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM cache_invalidation.emit('wallet_created', jsonb_build_object(
            'telegram_id', NEW.telegram_id::text,
            'address',     NEW.address::text));
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM cache_invalidation.emit('wallet_deleted', jsonb_build_object(
            'telegram_id', OLD.telegram_id::text,
            'address',     OLD.address::text));
    ELSE
        IF OLD.telegram_id IS DISTINCT FROM NEW.telegram_id THEN
            PERFORM cache_invalidation.emit('wallet_changed', jsonb_build_object(
                'telegram_id', OLD.telegram_id::text,
                'old_address', OLD.address::text,
                'address',     NEW.address::text));
        END IF;
        PERFORM cache_invalidation.emit('wallet_changed', jsonb_build_object(
            'telegram_id', NEW.telegram_id::text,
            'old_address', OLD.address::text,
            'address',     NEW.address::text));
    END IF;
    RETURN NULL;
END;
$$;
REVOKE ALL ON FUNCTION cache_invalidation.on_wallet_changed() FROM PUBLIC;

-- TRUNCATE fires no row triggers, so without this a TRUNCATE would leave
-- every cached row of the table alive.
CREATE OR REPLACE FUNCTION cache_invalidation.on_table_truncated()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM cache_invalidation.emit('table_truncated',
        jsonb_build_object('table', TG_TABLE_NAME::text));
    RETURN NULL;
END;
$$;
REVOKE ALL ON FUNCTION cache_invalidation.on_table_truncated() FROM PUBLIC;

-- The bot's explicit "refresh my data" button. The address is looked up here
-- so the event names exactly which balance key to drop. A NULL id is refused
-- loudly: it is a bug in the caller, and an event naming nobody would
-- silently refresh nothing.
CREATE OR REPLACE FUNCTION cache_invalidation.request_refresh(p_telegram_id bigint)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_telegram_id IS NULL THEN
        RAISE EXCEPTION 'cache_invalidation.request_refresh: telegram_id must not be null'
              USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM cache_invalidation.emit('manual_refresh', jsonb_build_object(
        'telegram_id',    p_telegram_id::text,
        'wallet_address', (SELECT w.address::text
                             FROM public.wallets w
                            WHERE w.telegram_id = p_telegram_id
                            LIMIT 1)));
END;
$$;
-- EXECUTE stays with PUBLIC (the default for a new function) because the bot
-- calls this. It is deliberately not GRANTed explicitly: CREATE OR REPLACE
-- keeps existing privileges, so a DBA who ran
--   REVOKE EXECUTE ON FUNCTION cache_invalidation.request_refresh(bigint) FROM PUBLIC;
--   GRANT EXECUTE ON FUNCTION cache_invalidation.request_refresh(bigint) TO <bot>;
-- keeps that hardening when this file is applied again.

-- Triggers. CREATE OR REPLACE TRIGGER (PostgreSQL 14+) makes re-applying
-- replace them in place instead of failing or duplicating. AFTER triggers
-- run once the row is final (after the bot's own BEFORE triggers) and only
-- for rows really written.
--
-- Settled trades and transfers: the WHEN clauses are evaluated by the
-- executor, so pending rows never call plpgsql. The UPDATE triggers are not
-- restricted to "UPDATE OF status": that would miss a status set by the
-- bot's own BEFORE trigger or a rule (status not in the SET list), and the
-- WHEN clause already keeps every other update out.
CREATE OR REPLACE TRIGGER cache_invalidation_trades_insert
    AFTER INSERT ON public.trades
    FOR EACH ROW
    WHEN (NEW.status::text IN ('confirmed', 'failed'))
    EXECUTE FUNCTION cache_invalidation.on_trade_settled();

CREATE OR REPLACE TRIGGER cache_invalidation_trades_update
    AFTER UPDATE ON public.trades
    FOR EACH ROW
    WHEN (NEW.status::text IN ('confirmed', 'failed')
          AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION cache_invalidation.on_trade_settled();

CREATE OR REPLACE TRIGGER cache_invalidation_trades_truncate
    AFTER TRUNCATE ON public.trades
    FOR EACH STATEMENT
    EXECUTE FUNCTION cache_invalidation.on_table_truncated();

CREATE OR REPLACE TRIGGER cache_invalidation_transfers_insert
    AFTER INSERT ON public.transfers
    FOR EACH ROW
    WHEN (NEW.status::text IN ('confirmed', 'failed'))
    EXECUTE FUNCTION cache_invalidation.on_transfer_settled();

CREATE OR REPLACE TRIGGER cache_invalidation_transfers_update
    AFTER UPDATE ON public.transfers
    FOR EACH ROW
    WHEN (NEW.status::text IN ('confirmed', 'failed')
          AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION cache_invalidation.on_transfer_settled();

CREATE OR REPLACE TRIGGER cache_invalidation_transfers_truncate
    AFTER TRUNCATE ON public.transfers
    FOR EACH STATEMENT
    EXECUTE FUNCTION cache_invalidation.on_table_truncated();

-- Settings and wallets: an UPDATE that changes nothing the cache could show
-- must not cost a cache miss. Comparing whole rows as jsonb (minus the
-- updated_at the bot bumps on every save) also covers columns the bot added
-- that this migration does not know about.
CREATE OR REPLACE TRIGGER cache_invalidation_settings_change
    AFTER INSERT OR DELETE ON public.settings
    FOR EACH ROW
    EXECUTE FUNCTION cache_invalidation.on_settings_changed();

CREATE OR REPLACE TRIGGER cache_invalidation_settings_update
    AFTER UPDATE ON public.settings
    FOR EACH ROW
    WHEN ((to_jsonb(OLD) - 'updated_at') IS DISTINCT FROM (to_jsonb(NEW) - 'updated_at'))
    EXECUTE FUNCTION cache_invalidation.on_settings_changed();

CREATE OR REPLACE TRIGGER cache_invalidation_settings_truncate
    AFTER TRUNCATE ON public.settings
    FOR EACH STATEMENT
    EXECUTE FUNCTION cache_invalidation.on_table_truncated();

CREATE OR REPLACE TRIGGER cache_invalidation_wallets_insert
    AFTER INSERT ON public.wallets
    FOR EACH ROW
    EXECUTE FUNCTION cache_invalidation.on_wallet_changed();

CREATE OR REPLACE TRIGGER cache_invalidation_wallets_update
    AFTER UPDATE ON public.wallets
    FOR EACH ROW
    WHEN ((to_jsonb(OLD) - 'updated_at') IS DISTINCT FROM (to_jsonb(NEW) - 'updated_at'))
    EXECUTE FUNCTION cache_invalidation.on_wallet_changed();

CREATE OR REPLACE TRIGGER cache_invalidation_wallets_delete
    AFTER DELETE ON public.wallets
    FOR EACH ROW
    EXECUTE FUNCTION cache_invalidation.on_wallet_changed();

CREATE OR REPLACE TRIGGER cache_invalidation_wallets_truncate
    AFTER TRUNCATE ON public.wallets
    FOR EACH STATEMENT
    EXECUTE FUNCTION cache_invalidation.on_table_truncated();

-- What `check` compares with pg_trigger: a trigger dropped or disabled by
-- hand means silently stale caches, so its absence must be detectable from
-- the database itself. Table names are in schema public. Readable only by
-- roles a DBA grants it to (the worker).
CREATE OR REPLACE VIEW cache_invalidation.expected_triggers (table_name, trigger_name) AS
VALUES
    ('trades'::text,    'cache_invalidation_trades_insert'::text),
    ('trades',          'cache_invalidation_trades_update'),
    ('trades',          'cache_invalidation_trades_truncate'),
    ('transfers',       'cache_invalidation_transfers_insert'),
    ('transfers',       'cache_invalidation_transfers_update'),
    ('transfers',       'cache_invalidation_transfers_truncate'),
    ('settings',        'cache_invalidation_settings_change'),
    ('settings',        'cache_invalidation_settings_update'),
    ('settings',        'cache_invalidation_settings_truncate'),
    ('wallets',         'cache_invalidation_wallets_insert'),
    ('wallets',         'cache_invalidation_wallets_update'),
    ('wallets',         'cache_invalidation_wallets_delete'),
    ('wallets',         'cache_invalidation_wallets_truncate');
REVOKE ALL ON cache_invalidation.expected_triggers FROM PUBLIC;

INSERT INTO public.cache_invalidator_schema_migrations (version, name)
VALUES (2, 'cache_invalidation')
ON CONFLICT (version) DO NOTHING;

COMMIT;
