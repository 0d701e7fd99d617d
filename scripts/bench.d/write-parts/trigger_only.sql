-- The write-path parts phase (scripts/bench with WRITE_PARTS=1), applied on top of every
-- migration: the settled-trade trigger still fires (same WHEN clause, same SECURITY DEFINER
-- function with SET search_path), and does nothing. What entering plpgsql costs the bot.
CREATE OR REPLACE FUNCTION cache_invalidation.on_trade_settled()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN NULL;
END;
$$;
