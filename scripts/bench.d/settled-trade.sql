-- One settled trade per transaction, as the bot writes it: the pgbench script of scripts/bench
-- (background load, write-path throughput, soak). A telegram id out of 100,000 users and a
-- unique tx hash, so every row is a new trade_settled event with five keys.
\set tid random(100000, 199999)
\set n random(1, 2000000000)
INSERT INTO public.trades (telegram_id, wallet_address, token_address, side, source, amount_mon, amount_token, tx_hash, status)
VALUES (:tid, '0xbench' || :tid, '0x7b0c0000000000000000000000000000000000a5', 'buy', 'auto', 1.5, 4200, '0xb' || :client_id || '_' || :n, 'confirmed');
