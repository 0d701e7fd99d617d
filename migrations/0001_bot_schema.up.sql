BEGIN;
-- 0001_bot_schema (up): the bot's reference tables.
--
-- In production the bot usually created these tables long ago; this migration
-- exists for new installs and tests. Every statement is IF NOT EXISTS, so an
-- existing table (perhaps with more columns, other types or its own indexes)
-- is left exactly as it is, and applying the file twice is harmless.

-- DDL on a busy table must fail fast rather than queue behind a long bot
-- transaction: while our lock request waits, every later write to that table
-- queues behind it, so a long wait would stall the bot. Failing after 5 s and
-- retrying later is the lesser harm.
SET LOCAL lock_timeout = '5s';

-- Resolve unqualified names (now(), text, operators) to the built-ins only, so
-- nothing someone created in a schema on the applier's search_path can be
-- captured into the objects created here. Everything we create is
-- schema-qualified.
SET LOCAL search_path = pg_catalog, pg_temp;

-- Shared with the `migrate` subcommand, so a database migrated with psql and
-- one migrated by the tool record the same thing.
CREATE TABLE IF NOT EXISTS public.cache_invalidator_schema_migrations (
    version    bigint      PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- address is UNIQUE because the transfer trigger maps a receiving address to
-- exactly one user.
CREATE TABLE IF NOT EXISTS public.wallets (
    telegram_id           bigint      PRIMARY KEY,
    address               text        NOT NULL UNIQUE,
    encrypted_private_key bytea,
    created_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.settings (
    telegram_id         bigint      PRIMARY KEY,
    slippage_bps        integer,
    gas_price_gwei      numeric,
    auto_buy_enabled    boolean,
    auto_buy_amount_mon numeric,
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- The CHECKs pin the values the invalidation triggers and rules rely on
-- ('confirmed'/'failed' settle a trade, 'sell' enables temp_sell_data): a typo
-- in the bot would otherwise silently leave caches stale.
CREATE TABLE IF NOT EXISTS public.trades (
    id             bigserial   PRIMARY KEY,
    telegram_id    bigint      NOT NULL,
    wallet_address text        NOT NULL,
    token_address  text        NOT NULL,
    side           text        CHECK (side IN ('buy', 'sell')),
    source         text        CHECK (source IN ('manual', 'auto')),
    amount_mon     numeric,
    amount_token   numeric,
    sell_id        text,
    tx_hash        text,
    status         text        NOT NULL DEFAULT 'pending'
                               CHECK (status IN ('pending', 'confirmed', 'failed')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- token_address NULL means the native coin (MON).
CREATE TABLE IF NOT EXISTS public.transfers (
    id            bigserial   PRIMARY KEY,
    telegram_id   bigint      NOT NULL,
    from_address  text        NOT NULL,
    to_address    text        NOT NULL,
    token_address text,
    amount        numeric,
    tx_hash       text,
    status        text        NOT NULL DEFAULT 'pending'
                              CHECK (status IN ('pending', 'confirmed', 'failed')),
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- No secondary indexes on purpose: when these tables already exist and are
-- large, a plain CREATE INDEX would block the bot's writes for the whole
-- build, and CREATE INDEX CONCURRENTLY cannot run inside a transaction. DBAs
-- add what the bot's queries need with CONCURRENTLY, outside migrations.

INSERT INTO public.cache_invalidator_schema_migrations (version, name)
VALUES (1, 'bot_schema')
ON CONFLICT (version) DO NOTHING;

COMMIT;
