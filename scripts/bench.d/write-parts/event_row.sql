-- The write-path parts phase (scripts/bench with WRITE_PARTS=1), applied on top of every
-- migration: the settled-trade trigger writes the event row with the shipped payload, from the
-- trigger function itself, and nothing else: no emit() call, no queue row, no lock test, no
-- NOTIFY. What the log row alone costs the bot.
CREATE OR REPLACE FUNCTION cache_invalidation.on_trade_settled()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO cache_invalidation.events (kind, payload)
    VALUES ('trade_settled', jsonb_build_object(
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
