-- One settled trade per transaction, for one of :users other users (pgbench -D users=N): the
-- background of the pgbench load profile of scripts/bench (LOAD_PROFILE=pgbench). Telegram ids
-- 300000 and up, whose keys are never set; a unique tx hash, so every row is a new
-- trade_settled event with five keys.
\set tid 300000 + random(0, :users - 1)
\set n random(1, 2000000000)
INSERT INTO public.trades (telegram_id, wallet_address, token_address, side, source, amount_mon, amount_token, tx_hash, status)
VALUES (:tid, '0xbench' || :tid, '0x7b0c0000000000000000000000000000000000a5', 'buy', 'auto', 1.5, 4200, '0xg' || :client_id || '_' || :n, 'confirmed');
