#!/usr/bin/env bash
# Self-check for migrations/: starts a throwaway PostgreSQL 15 cluster on a
# free loopback port, applies and rolls back the migrations with psql exactly
# as a DBA would, and asserts the events the triggers write. Exits non-zero
# if any assertion fails. Leaves nothing behind (the cluster lives in a temp
# directory that is removed on exit).
#
#   scripts/test-migrations.sh            # PG_BIN defaults to /usr/lib/postgresql/15/bin
#   PG_BIN=/path/to/bin PGTEST_PORT=55432 scripts/test-migrations.sh
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MIG=$ROOT/migrations
PG_BIN=${PG_BIN:-$(pg_config --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin)}
PSQL=$PG_BIN/psql
UP1=$MIG/0001_bot_schema.up.sql
DOWN1=$MIG/0001_bot_schema.down.sql
UP2=$MIG/0002_cache_invalidation.up.sql
DOWN2=$MIG/0002_cache_invalidation.down.sql
ALL_FILES=("$UP1" "$DOWN1" "$UP2" "$DOWN2")

PASSES=0
FAILS=0
FAILED_NAMES=()
ok()   { PASSES=$((PASSES + 1)); printf '  ok    %s\n' "$1"; }
fail() {
    FAILS=$((FAILS + 1)); FAILED_NAMES+=("$1")
    printf '  FAIL  %s\n' "$1"
    if [ -n "${2:-}" ]; then printf '%s\n' "$2" | sed 's/^/        | /'; fi
}
section() { printf '\n== %s\n' "$1"; }
die() { printf 'fatal: %s\n' "$1" >&2; exit 2; }
check() { # check NAME EXPECTED ACTUAL
    if [ "$2" == "$3" ]; then ok "$1"; else fail "$1" "expected: $2
got:      $3"; fi
}

for f in "${ALL_FILES[@]}"; do [ -f "$f" ] || die "missing $f"; done
[ -x "$PG_BIN/initdb" ] || die "no initdb in $PG_BIN (set PG_BIN)"

# ---------------------------------------------------------------- cluster
TMP=$(mktemp -d /tmp/ci-migtest.XXXXXX)
STARTED=0
BG_PIDS=()
as_pg() {
    # PostgreSQL refuses to run as root.
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
cleanup() {
    local rc=$?
    for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    if [ "$STARTED" = 1 ]; then
        as_pg "$PG_BIN/pg_ctl" -D "$TMP/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
# Anything not wrapped in a check is setup; if it breaks, say where.
trap 'printf "aborted: command failed at line %s\n" "$LINENO" >&2' ERR
[ "$(id -u)" = 0 ] && chown postgres: "$TMP"

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
PORT=${PGTEST_PORT:-}
if [ -z "$PORT" ]; then
    for p in $(seq 55432 55531); do
        if ! port_in_use "$p"; then PORT=$p; break; fi
    done
fi
[ -n "$PORT" ] || die "no free port in 55432-55531"

as_pg "$PG_BIN/initdb" -D "$TMP/data" -U postgres -A trust -E UTF8 --no-locale >"$TMP/initdb.log" 2>&1 \
    || { cat "$TMP/initdb.log"; die "initdb failed"; }
as_pg "$PG_BIN/pg_ctl" -D "$TMP/data" -l "$TMP/server.log" -w -t 30 \
    -o "-p $PORT -c listen_addresses=127.0.0.1 -k $TMP -c fsync=off" start >/dev/null \
    || { cat "$TMP/server.log"; die "pg_ctl start failed"; }
STARTED=1

unset PGSERVICE PGSERVICEFILE PGPASSWORD PGOPTIONS PGDATABASE PGSSLMODE
export PGHOST=127.0.0.1 PGPORT=$PORT PGUSER=postgres PGCLIENTENCODING=UTF8 PGCONNECT_TIMEOUT=10
# "already exists, skipping" notices are expected on re-apply; errors still show.
export PGOPTIONS='-c client_min_messages=warning'
echo "throwaway PostgreSQL $("$PSQL" -XAtc 'SHOW server_version' -d postgres) on 127.0.0.1:$PORT ($TMP)"

# ---------------------------------------------------------------- helpers
# psql with the same flags a DBA would use; -X ignores any ~/.psqlrc.
pg() { "$PSQL" -X -q -v ON_ERROR_STOP=1 "$@"; }
# q DB SQL [USER]: one query, unaligned tuples; fails the script on error.
q() { pg -At -d "$1" -U "${3:-postgres}" -c "$2"; }
# try DB USER SQL: run SQL, print "rc=<n>" and stderr; never fails.
try() {
    local out rc=0
    out=$(pg -At -d "$1" -U "$2" -c "$3" 2>&1) || rc=$?
    printf 'rc=%s %s' "$rc" "$out"
}
newdb() { q postgres "DROP DATABASE IF EXISTS $1" >/dev/null; q postgres "CREATE DATABASE $1" >/dev/null; }

# apply DB FILE: psql -v ON_ERROR_STOP=1 -f, as in the SPEC; returns psql's status.
apply() {
    local out rc=0
    out=$(pg -d "$1" -f "$2" 2>&1) || rc=$?
    LAST_APPLY_OUTPUT=$out
    if [ "$rc" -ne 0 ] || grep -q 'ERROR' <<<"$out"; then
        printf '%s\n' "$out" >&2
        return 1
    fi
}
expect_apply() { # expect_apply DB FILE: a test that applying FILE succeeds
    if apply "$1" "$2"; then ok "psql -f $(basename "$2") on $1"; else fail "psql -f $(basename "$2") on $1" "$LAST_APPLY_OUTPUT"; fi
}
# apply_simple DB FILE: the whole file as one simple-query string (PQexec),
# which is how psql -c sends its argument.
apply_simple() {
    local out rc=0
    out=$(pg -d "$1" -c "$(cat "$2")" 2>&1) || rc=$?
    LAST_APPLY_OUTPUT=$out
    [ "$rc" -eq 0 ] && ! grep -q 'ERROR' <<<"$out"
}

# versions DB: the tracking table's content, "absent" if there is none.
versions() {
    if [ "$(q "$1" "SELECT to_regclass('public.cache_invalidator_schema_migrations') IS NULL")" = t ]; then
        echo absent
    else
        q "$1" "SELECT coalesce(string_agg(version || ':' || name, ',' ORDER BY version), 'empty')
                  FROM public.cache_invalidator_schema_migrations"
    fi
}
check_versions() { check "tracking table on $1 = $2" "$2" "$(versions "$1")"; }

# our triggers that really exist on public tables, "table.trigger,...".
actual_triggers() {
    q "$1" "SELECT coalesce(string_agg(c.relname || '.' || t.tgname, ',' ORDER BY c.relname, t.tgname), '')
              FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
             WHERE t.tgname LIKE 'cache\_invalidation\_%' AND NOT t.tgisinternal"
}
EXPECTED_TRIGGERS="settings.cache_invalidation_settings_change,settings.cache_invalidation_settings_truncate,settings.cache_invalidation_settings_update,trades.cache_invalidation_trades_insert,trades.cache_invalidation_trades_truncate,trades.cache_invalidation_trades_update,transfers.cache_invalidation_transfers_insert,transfers.cache_invalidation_transfers_truncate,transfers.cache_invalidation_transfers_update,wallets.cache_invalidation_wallets_delete,wallets.cache_invalidation_wallets_insert,wallets.cache_invalidation_wallets_truncate,wallets.cache_invalidation_wallets_update"

schema_exists() { q "$1" "SELECT count(*) FROM pg_namespace WHERE nspname = 'cache_invalidation'"; }
mark() { q "$1" "SELECT coalesce(max(id), 0) FROM cache_invalidation.events"; }

# expect_events DB MARK NAME JSON: the events written after MARK, as a
# multiset of {kind, payload}, must equal JSON (an array). Row order within
# one statement is not guaranteed, so both sides are sorted before comparing.
expect_events() {
    local db=$1 m=$2 name=$3 exp=$4 got
    got=$(pg -At -d "$db" -v mark="$m" -v exp="$exp" <<'SQL'
WITH got AS (
    SELECT coalesce(jsonb_agg(jsonb_build_object('kind', kind, 'payload', payload)
                              ORDER BY kind, payload::text), '[]'::jsonb) AS j
      FROM cache_invalidation.events WHERE id > :'mark'::bigint),
exp AS (
    SELECT coalesce(jsonb_agg(e ORDER BY e->>'kind', (e->'payload')::text), '[]'::jsonb) AS j
      FROM jsonb_array_elements(:'exp'::jsonb) e)
SELECT CASE WHEN got.j = exp.j THEN 'MATCH' ELSE got.j::text END FROM got, exp;
SQL
) || got="query failed: $got"
    if [ "$got" = MATCH ]; then ok "$name"; else fail "$name" "expected: $exp
got:      $got"; fi
}
# act DB SQL [USER]: a bot write; fails the test (not the script) on error.
act() {
    local out rc=0
    out=$(pg -d "$1" -U "${3:-postgres}" -c "$2" 2>&1) || rc=$?
    if [ "$rc" -ne 0 ]; then fail "statement failed: $2" "$out"; fi
}
# event DB NAME SQL EXPECTED_JSON: run SQL, then expect exactly those events.
event() {
    local db=$1 name=$2 sql=$3 exp=$4 m
    m=$(mark "$db")
    act "$db" "$sql"
    expect_events "$db" "$m" "$name" "$exp"
}
expect_denied() { # expect_denied DB USER NAME SQL
    local r; r=$(try "$1" "$2" "$4")
    if [[ $r == rc=[1-9]* ]] && grep -q 'permission denied' <<<"$r"; then ok "$3"; else fail "$3" "$r"; fi
}

# ---------------------------------------------------------------- 0. lint
section "file rules (one transaction, lock_timeout, no psql meta-commands)"
for f in "${ALL_FILES[@]}"; do
    b=$(basename "$f")
    # sed/awk read all their input: no SIGPIPE under pipefail.
    code=$(awk '!/^[[:space:]]*(--.*)?$/' "$f")
    first=$(sed -n 1p <<<"$code")
    second=$(sed -n 2p <<<"$code")
    last=$(sed -n '$p' <<<"$code")
    check "$b: first line is BEGIN;" "BEGIN;" "$(sed -n 1p "$f")"
    check "$b: first statement BEGIN;" "BEGIN;" "$first"
    check "$b: then SET LOCAL lock_timeout" "SET LOCAL lock_timeout = '5s';" "$second"
    check "$b: last statement COMMIT;" "COMMIT;" "$last"
    check "$b: exactly one BEGIN and one COMMIT" "1 1" \
        "$(grep -ci '^[[:space:]]*begin;' "$f") $(grep -ci '^[[:space:]]*commit;' "$f")"
    check "$b: no psql meta-commands" "0" "$(grep -c '^[[:space:]]*\\' "$f" || true)"
    # psql would substitute :name outside quotes if such a variable were set.
    check "$b: no :name psql-variable syntax" "0" "$(grep -v '^[[:space:]]*--' "$f" | grep -cP '(?<![:\w]):[A-Za-z_]' || true)"
    check "$b: lock_timeout is commented" "1" "$(grep -B6 "SET LOCAL lock_timeout" "$f" | grep -ci 'fail fast' || true)"
done

# ---------------------------------------------------------------- a. apply
section "a. apply 0001 + 0002 with psql -f, then again"
newdb ci_main
expect_apply ci_main "$UP1"
check_versions ci_main "1:bot_schema"
expect_apply ci_main "$UP2"
check_versions ci_main "1:bot_schema,2:cache_invalidation"
applied_at_before=$(q ci_main "SELECT string_agg(applied_at::text, ',' ORDER BY version) FROM public.cache_invalidator_schema_migrations")
inventory() {
    q "$1" "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'cache_invalidation')
             || ' relations, ' || (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'cache_invalidation')
             || ' functions, ' || (SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'cache\_invalidation\_%')
             || ' triggers, ' || (SELECT count(*) FROM pg_index WHERE indrelid = to_regclass('cache_invalidation.events'))
             || ' indexes on events'"
}
inv1=$(inventory ci_main)
check "objects after first apply" "6 relations, 7 functions, 13 triggers, 3 indexes on events" "$inv1"
expect_apply ci_main "$UP1"
expect_apply ci_main "$UP2"
check "re-apply creates no duplicate objects" "$inv1" "$(inventory ci_main)"
check_versions ci_main "1:bot_schema,2:cache_invalidation"
check "re-apply keeps the original applied_at" "$applied_at_before" \
    "$(q ci_main "SELECT string_agg(applied_at::text, ',' ORDER BY version) FROM public.cache_invalidator_schema_migrations")"
check "triggers in pg_trigger" "$EXPECTED_TRIGGERS" "$(actual_triggers ci_main)"
check "expected_triggers view lists exactly the real triggers" "$EXPECTED_TRIGGERS" \
    "$(q ci_main "SELECT string_agg(table_name || '.' || trigger_name, ',' ORDER BY table_name, trigger_name) FROM cache_invalidation.expected_triggers")"
check "expected_triggers columns are (table_name text, trigger_name text)" "table_name text,trigger_name text" \
    "$(q ci_main "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ',' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 'cache_invalidation.expected_triggers'::regclass AND attnum > 0")"
check "every expected trigger exists, is enabled, and calls our function" "0" \
    "$(q ci_main "SELECT count(*) FROM cache_invalidation.expected_triggers e
                   LEFT JOIN pg_trigger t ON t.tgrelid = to_regclass('public.' || e.table_name) AND t.tgname = e.trigger_name
                   LEFT JOIN pg_proc p ON p.oid = t.tgfoid
                   LEFT JOIN pg_namespace n ON n.oid = p.pronamespace
                  WHERE t.oid IS NULL OR t.tgenabled = 'D' OR n.nspname IS DISTINCT FROM 'cache_invalidation'")"
check "every function is SECURITY DEFINER with search_path=pg_catalog, pg_temp" \
    "emit|t|{\"search_path=pg_catalog, pg_temp\"}
on_settings_changed|t|{\"search_path=pg_catalog, pg_temp\"}
on_table_truncated|t|{\"search_path=pg_catalog, pg_temp\"}
on_trade_settled|t|{\"search_path=pg_catalog, pg_temp\"}
on_transfer_settled|t|{\"search_path=pg_catalog, pg_temp\"}
on_wallet_changed|t|{\"search_path=pg_catalog, pg_temp\"}
request_refresh|t|{\"search_path=pg_catalog, pg_temp\"}" \
    "$(q ci_main "SELECT proname, prosecdef, proconfig FROM pg_proc WHERE pronamespace = 'cache_invalidation'::regnamespace ORDER BY proname")"

section "a'. the same files as one simple-query string each (PQexec, via psql -c)"
newdb ci_simple
for f in "$UP1" "$UP2" "$UP1" "$UP2"; do
    if apply_simple ci_simple "$f"; then ok "one-string apply of $(basename "$f")"; else fail "one-string apply of $(basename "$f")" "$LAST_APPLY_OUTPUT"; fi
done
check_versions ci_simple "1:bot_schema,2:cache_invalidation"
check "triggers after one-string apply" "$EXPECTED_TRIGGERS" "$(actual_triggers ci_simple)"
for f in "$DOWN2" "$DOWN1" "$DOWN2" "$DOWN1"; do
    if apply_simple ci_simple "$f"; then ok "one-string apply of $(basename "$f")"; else fail "one-string apply of $(basename "$f")" "$LAST_APPLY_OUTPUT"; fi
done
check_versions ci_simple "absent"
check "no triggers after one-string rollback" "" "$(actual_triggers ci_simple)"

# ---------------------------------------------------------------- b. events
section "b. events written by bot writes"
D=ci_main
event $D "wallet insert -> wallet_created" \
    "INSERT INTO public.wallets (telegram_id, address) VALUES (42, '0xA'), (43, '0xB')" \
    '[{"kind":"wallet_created","payload":{"telegram_id":"42","address":"0xA"}},
      {"kind":"wallet_created","payload":{"telegram_id":"43","address":"0xB"}}]'

# trades
event $D "pending trade insert -> nothing" \
    "INSERT INTO public.trades (id, telegram_id, wallet_address, token_address, side, source, tx_hash, status)
     VALUES (101, 42, '0xA', '0xT', 'buy', 'manual', '0xh101', 'pending')" '[]'
event $D "confirmed trade insert -> 1 trade_settled" \
    "INSERT INTO public.trades (id, telegram_id, wallet_address, token_address, side, source, sell_id, tx_hash, status)
     VALUES (102, 42, '0xA', '0xT', 'sell', 'manual', 's-1', '0xh102', 'confirmed')" \
    '[{"kind":"trade_settled","payload":{"telegram_id":"42","wallet_address":"0xA","tx_hash":"0xh102","side":"sell","sell_id":"s-1","status":"confirmed","trade_id":"102"}}]'
event $D "pending -> pending update (other column) -> nothing" \
    "UPDATE public.trades SET amount_mon = 1, updated_at = now() WHERE id = 101" '[]'
event $D "pending -> confirmed update -> 1 trade_settled (sell_id null)" \
    "UPDATE public.trades SET status = 'confirmed', updated_at = now() WHERE id = 101" \
    '[{"kind":"trade_settled","payload":{"telegram_id":"42","wallet_address":"0xA","tx_hash":"0xh101","side":"buy","sell_id":null,"status":"confirmed","trade_id":"101"}}]'
event $D "confirmed -> confirmed update of another column -> nothing" \
    "UPDATE public.trades SET amount_token = 5, updated_at = now() WHERE id = 101" '[]'
event $D "confirmed -> confirmed (status in SET list, same value) -> nothing" \
    "UPDATE public.trades SET status = 'confirmed' WHERE id = 101" '[]'
event $D "confirmed -> failed -> 1 trade_settled" \
    "UPDATE public.trades SET status = 'failed' WHERE id = 102" \
    '[{"kind":"trade_settled","payload":{"telegram_id":"42","wallet_address":"0xA","tx_hash":"0xh102","side":"sell","sell_id":"s-1","status":"failed","trade_id":"102"}}]'
event $D "failed trade insert (no tx_hash) -> 1 trade_settled" \
    "INSERT INTO public.trades (id, telegram_id, wallet_address, token_address, side, source, status)
     VALUES (103, 43, '0xB', '0xT', 'buy', 'auto', 'failed')" \
    '[{"kind":"trade_settled","payload":{"telegram_id":"43","wallet_address":"0xB","tx_hash":null,"side":"buy","sell_id":null,"status":"failed","trade_id":"103"}}]'
event $D "confirmed -> pending -> nothing" \
    "UPDATE public.trades SET status = 'pending' WHERE id = 103" '[]'
act $D "INSERT INTO public.trades (id, telegram_id, wallet_address, token_address, side, status)
        SELECT g, 42, '0xA', '0xT', 'buy', 'pending' FROM generate_series(110, 112) g"
event $D "multi-row pending -> confirmed -> one event per row" \
    "UPDATE public.trades SET status = 'confirmed' WHERE id BETWEEN 110 AND 112" \
    '[{"kind":"trade_settled","payload":{"telegram_id":"42","wallet_address":"0xA","tx_hash":null,"side":"buy","sell_id":null,"status":"confirmed","trade_id":"110"}},
      {"kind":"trade_settled","payload":{"telegram_id":"42","wallet_address":"0xA","tx_hash":null,"side":"buy","sell_id":null,"status":"confirmed","trade_id":"111"}},
      {"kind":"trade_settled","payload":{"telegram_id":"42","wallet_address":"0xA","tx_hash":null,"side":"buy","sell_id":null,"status":"confirmed","trade_id":"112"}}]'
event $D "upsert that settles a trade (ON CONFLICT DO UPDATE) -> 1 trade_settled" \
    "INSERT INTO public.trades (id, telegram_id, wallet_address, token_address, side, status)
     VALUES (103, 43, '0xB', '0xT', 'buy', 'confirmed')
     ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status" \
    '[{"kind":"trade_settled","payload":{"telegram_id":"43","wallet_address":"0xB","tx_hash":null,"side":"buy","sell_id":null,"status":"confirmed","trade_id":"103"}}]'
m=$(mark $D)
act $D "BEGIN; INSERT INTO public.trades (id, telegram_id, wallet_address, token_address, status) VALUES (120, 42, '0xA', '0xT', 'confirmed'); ROLLBACK;"
expect_events $D "$m" "rolled-back settled trade -> nothing" '[]'

# transfers
event $D "pending transfer insert -> nothing" \
    "INSERT INTO public.transfers (id, telegram_id, from_address, to_address, amount, status)
     VALUES (201, 42, '0xA', '0xB', 1, 'pending')" '[]'
event $D "transfer to a known wallet settles -> receiver_telegram_id set" \
    "UPDATE public.transfers SET status = 'confirmed', tx_hash = '0xth201' WHERE id = 201" \
    '[{"kind":"transfer_settled","payload":{"telegram_id":"42","from_address":"0xA","to_address":"0xB","tx_hash":"0xth201","receiver_telegram_id":"43","status":"confirmed","transfer_id":"201"}}]'
event $D "settled transfer, other column updated -> nothing" \
    "UPDATE public.transfers SET amount = 2 WHERE id = 201" '[]'
event $D "transfer to an unknown address -> receiver_telegram_id null" \
    "INSERT INTO public.transfers (id, telegram_id, from_address, to_address, token_address, amount, tx_hash, status)
     VALUES (202, 42, '0xA', '0xNOBODY', '0xT', 3, '0xth202', 'failed')" \
    '[{"kind":"transfer_settled","payload":{"telegram_id":"42","from_address":"0xA","to_address":"0xNOBODY","tx_hash":"0xth202","receiver_telegram_id":null,"status":"failed","transfer_id":"202"}}]'

# settings
event $D "settings insert -> settings_changed" \
    "INSERT INTO public.settings (telegram_id, slippage_bps, gas_price_gwei, auto_buy_enabled, auto_buy_amount_mon)
     VALUES (42, 100, 50, false, 0.5)" \
    '[{"kind":"settings_changed","payload":{"telegram_id":"42"}}]'
event $D "settings same-values update with updated_at bumped -> nothing" \
    "UPDATE public.settings SET slippage_bps = 100, gas_price_gwei = 50.0, updated_at = now() + interval '1 minute' WHERE telegram_id = 42" '[]'
event $D "settings real update -> 1 settings_changed" \
    "UPDATE public.settings SET slippage_bps = 150, updated_at = now() WHERE telegram_id = 42" \
    '[{"kind":"settings_changed","payload":{"telegram_id":"42"}}]'
event $D "settings telegram_id change -> old and new id" \
    "UPDATE public.settings SET telegram_id = 44 WHERE telegram_id = 42" \
    '[{"kind":"settings_changed","payload":{"telegram_id":"42"}},{"kind":"settings_changed","payload":{"telegram_id":"44"}}]'
event $D "settings delete -> settings_changed" \
    "DELETE FROM public.settings WHERE telegram_id = 44" \
    '[{"kind":"settings_changed","payload":{"telegram_id":"44"}}]'

# wallets
event $D "wallet insert -> wallet_created" \
    "INSERT INTO public.wallets (telegram_id, address, encrypted_private_key) VALUES (50, '0xW50', '\\x01')" \
    '[{"kind":"wallet_created","payload":{"telegram_id":"50","address":"0xW50"}}]'
event $D "wallet address update -> wallet_changed with old and new address" \
    "UPDATE public.wallets SET address = '0xW50b' WHERE telegram_id = 50" \
    '[{"kind":"wallet_changed","payload":{"telegram_id":"50","old_address":"0xW50","address":"0xW50b"}}]'
event $D "wallet same-values update -> nothing" \
    "UPDATE public.wallets SET address = address, encrypted_private_key = encrypted_private_key WHERE telegram_id = 50" '[]'
event $D "wallet key-only update -> wallet_changed" \
    "UPDATE public.wallets SET encrypted_private_key = '\\x02' WHERE telegram_id = 50" \
    '[{"kind":"wallet_changed","payload":{"telegram_id":"50","old_address":"0xW50b","address":"0xW50b"}}]'
event $D "wallet telegram_id change -> wallet_changed for old and new owner" \
    "UPDATE public.wallets SET telegram_id = 51 WHERE telegram_id = 50" \
    '[{"kind":"wallet_changed","payload":{"telegram_id":"50","old_address":"0xW50b","address":"0xW50b"}},
      {"kind":"wallet_changed","payload":{"telegram_id":"51","old_address":"0xW50b","address":"0xW50b"}}]'
event $D "wallet delete -> wallet_deleted" \
    "DELETE FROM public.wallets WHERE telegram_id = 51" \
    '[{"kind":"wallet_deleted","payload":{"telegram_id":"51","address":"0xW50b"}}]'

# manual refresh
event $D "request_refresh for a user with a wallet" \
    "SELECT cache_invalidation.request_refresh(43)" \
    '[{"kind":"manual_refresh","payload":{"telegram_id":"43","wallet_address":"0xB"}}]'
event $D "request_refresh for a user without a wallet -> wallet_address null" \
    "SELECT cache_invalidation.request_refresh(999)" \
    '[{"kind":"manual_refresh","payload":{"telegram_id":"999","wallet_address":null}}]'
m=$(mark $D)
r=$(try $D postgres "SELECT cache_invalidation.request_refresh(NULL)")
if [[ $r == rc=[1-9]* ]] && grep -q 'must not be null' <<<"$r"; then ok "request_refresh(NULL) is refused with a clear error"; else fail "request_refresh(NULL) is refused with a clear error" "$r"; fi
expect_events $D "$m" "request_refresh(NULL) writes nothing" '[]'

# hostile values: glob characters, a newline, unicode, quotes, backslash, 10 kB
section "b'. row values are stored exactly"
ADDR=$'0x*?[a-z]\\ "q" \'s\' line1\nline2 ünïcødé 🚀 {tid}:*'
m=$(mark $D)
# (A NOTIFY payload is limited to 8000 bytes: this is also why the
# notification carries only the id, never the row.)
if ! hostile_out=$(pg -d $D -v addr="$ADDR" 2>&1 <<'SQL'
INSERT INTO public.wallets (telegram_id, address) VALUES (60, :'addr');
INSERT INTO public.trades (id, telegram_id, wallet_address, token_address, side, sell_id, tx_hash, status)
VALUES (130, 60, :'addr', '0xT', 'sell', :'addr',
        left(repeat('0123456789*?[a-z]' || chr(10) || 'é', 700), 10240), 'confirmed');
SQL
); then fail "writing rows with hostile values and a 10 kB tx_hash" "$hostile_out"; fi
check "hostile wallet address and 10 kB tx_hash stored exactly in payloads" "t|t|t|t|10240" "$(pg -At -d $D -v addr="$ADDR" -v m="$m" <<'SQL'
SELECT bool_and(payload->>'address' = :'addr') FILTER (WHERE kind = 'wallet_created'),
       bool_and(payload->>'wallet_address' = :'addr' AND payload->>'sell_id' = :'addr') FILTER (WHERE kind = 'trade_settled'),
       bool_and(payload->>'tx_hash' = left(repeat('0123456789*?[a-z]' || chr(10) || 'é', 700), 10240)) FILTER (WHERE kind = 'trade_settled'),
       bool_and(payload->>'tx_hash' = (SELECT tx_hash FROM public.trades WHERE id = 130)) FILTER (WHERE kind = 'trade_settled'),
       max(length(payload->>'tx_hash'))
  FROM cache_invalidation.events WHERE id > :'m'::bigint;
SQL
)"
check "exactly 2 events for the hostile rows" "wallet_created,trade_settled" \
    "$(q $D "SELECT string_agg(kind, ',' ORDER BY id) FROM cache_invalidation.events WHERE id > $m")"
check "payload values are JSON strings or null, never numbers" "0" \
    "$(q $D "SELECT count(*) FROM cache_invalidation.events e, jsonb_each(e.payload) kv WHERE jsonb_typeof(kv.value) NOT IN ('string', 'null')")"
act $D "DELETE FROM public.wallets WHERE telegram_id = 60"

section "b''. TRUNCATE"
for t in trades transfers settings wallets; do
    event $D "TRUNCATE public.$t -> one table_truncated" "TRUNCATE public.$t" \
        "[{\"kind\":\"table_truncated\",\"payload\":{\"table\":\"$t\"}}]"
done
event $D "TRUNCATE of all four in one statement -> one event per table" \
    "TRUNCATE public.trades, public.transfers, public.settings, public.wallets" \
    '[{"kind":"table_truncated","payload":{"table":"trades"}},{"kind":"table_truncated","payload":{"table":"transfers"}},
      {"kind":"table_truncated","payload":{"table":"settings"}},{"kind":"table_truncated","payload":{"table":"wallets"}}]'
event $D "TRUNCATE of an empty table still emits (the cache may hold rows the table no longer has)" \
    "TRUNCATE public.settings" '[{"kind":"table_truncated","payload":{"table":"settings"}}]'

# ---------------------------------------------------------------- c. bot role
section "c. a non-superuser bot role"
q $D "DROP ROLE IF EXISTS bot; CREATE ROLE bot LOGIN;
      GRANT ALL ON TABLE public.wallets, public.settings, public.trades, public.transfers TO bot;
      GRANT ALL ON SEQUENCE public.trades_id_seq, public.transfers_id_seq TO bot;" >/dev/null
check "bot is not superuser and owns nothing in cache_invalidation" "f|0" \
    "$(q $D "SELECT r.rolsuper,
                    (SELECT count(*) FROM pg_class WHERE relnamespace = 'cache_invalidation'::regnamespace AND relowner = r.oid)
                  + (SELECT count(*) FROM pg_proc WHERE pronamespace = 'cache_invalidation'::regnamespace AND proowner = r.oid)
               FROM pg_roles r WHERE r.rolname = 'bot'")"
check "bot may EXECUTE only request_refresh" "emit|f
on_settings_changed|f
on_table_truncated|f
on_trade_settled|f
on_transfer_settled|f
on_wallet_changed|f
request_refresh|t" \
    "$(q $D "SELECT proname, has_function_privilege('bot', oid, 'EXECUTE') FROM pg_proc WHERE pronamespace = 'cache_invalidation'::regnamespace ORDER BY proname")"
m=$(mark $D)
act $D "INSERT INTO public.wallets (telegram_id, address) VALUES (70, '0xBOT70'), (71, '0xBOT71')" bot
act $D "INSERT INTO public.settings (telegram_id, slippage_bps) VALUES (70, 10)" bot
act $D "INSERT INTO public.trades (telegram_id, wallet_address, token_address, side, tx_hash, status) VALUES (70, '0xBOT70', '0xT', 'buy', '0xbt', 'confirmed')" bot
act $D "INSERT INTO public.transfers (telegram_id, from_address, to_address, tx_hash, status) VALUES (70, '0xBOT70', '0xBOT71', '0xbx', 'confirmed')" bot
act $D "SELECT cache_invalidation.request_refresh(70)" bot
expect_events $D "$m" "bot's writes produce events (SECURITY DEFINER)" \
    "[{\"kind\":\"wallet_created\",\"payload\":{\"telegram_id\":\"70\",\"address\":\"0xBOT70\"}},
      {\"kind\":\"wallet_created\",\"payload\":{\"telegram_id\":\"71\",\"address\":\"0xBOT71\"}},
      {\"kind\":\"settings_changed\",\"payload\":{\"telegram_id\":\"70\"}},
      {\"kind\":\"trade_settled\",\"payload\":{\"telegram_id\":\"70\",\"wallet_address\":\"0xBOT70\",\"tx_hash\":\"0xbt\",\"side\":\"buy\",\"sell_id\":null,\"status\":\"confirmed\",\"trade_id\":\"$(q $D "SELECT max(id) FROM public.trades")\"}},
      {\"kind\":\"transfer_settled\",\"payload\":{\"telegram_id\":\"70\",\"from_address\":\"0xBOT70\",\"to_address\":\"0xBOT71\",\"tx_hash\":\"0xbx\",\"receiver_telegram_id\":\"71\",\"status\":\"confirmed\",\"transfer_id\":\"$(q $D "SELECT max(id) FROM public.transfers")\"}},
      {\"kind\":\"manual_refresh\",\"payload\":{\"telegram_id\":\"70\",\"wallet_address\":\"0xBOT70\"}}]"
# The bot can create temp tables (TEMP is granted to PUBLIC), so the trigger
# attachment check below fails on EXECUTE, not on CREATE.
act $D "CREATE TEMP TABLE scratch (x int)" bot
expect_denied $D bot "bot cannot call emit" \
    "SELECT cache_invalidation.emit('table_truncated', '{\"table\":\"wallets\"}')"
expect_denied $D bot "bot cannot INSERT INTO cache_invalidation.events" \
    "INSERT INTO cache_invalidation.events (kind, payload) VALUES ('table_truncated', '{\"table\":\"wallets\"}')"
expect_denied $D bot "bot cannot read the event log" "SELECT count(*) FROM cache_invalidation.events"
expect_denied $D bot "bot cannot acknowledge events" "UPDATE cache_invalidation.events SET processed_at = now()"
expect_denied $D bot "bot cannot read expected_triggers" "SELECT * FROM cache_invalidation.expected_triggers"
expect_denied $D bot "bot cannot attach a trigger function to its own table" \
    "CREATE TEMP TABLE mine (x int); CREATE TRIGGER t AFTER TRUNCATE ON mine FOR EACH STATEMENT EXECUTE FUNCTION cache_invalidation.on_table_truncated()"
m=$(mark $D)
act $D "TRUNCATE public.transfers" bot
expect_events $D "$m" "bot's TRUNCATE produces table_truncated" '[{"kind":"table_truncated","payload":{"table":"transfers"}}]'

# A least-privilege worker role, granted as the comment in 0002 says.
q $D "DROP ROLE IF EXISTS worker; CREATE ROLE worker LOGIN;
      GRANT USAGE ON SCHEMA cache_invalidation TO worker;
      GRANT SELECT, UPDATE (processed_at) ON cache_invalidation.events TO worker;
      GRANT SELECT ON cache_invalidation.expected_triggers TO worker;" >/dev/null
r=$(try $D worker "SELECT count(*) > 0 FROM cache_invalidation.events WHERE processed_at IS NULL")
check "worker (documented grants) can read pending events" "rc=0 t" "$r"
r=$(try $D worker "WITH a AS (UPDATE cache_invalidation.events SET processed_at = clock_timestamp() WHERE id = (SELECT min(id) FROM cache_invalidation.events) RETURNING 1) SELECT count(*) FROM a")
check "worker can acknowledge an event" "rc=0 1" "$r"
r=$(try $D worker "SELECT count(*) FROM cache_invalidation.expected_triggers e LEFT JOIN pg_trigger t ON t.tgrelid = to_regclass('public.' || e.table_name) AND t.tgname = e.trigger_name WHERE t.oid IS NULL")
check "worker can compare expected_triggers with pg_trigger" "rc=0 0" "$r"
expect_denied $D worker "worker cannot rewrite a payload" "UPDATE cache_invalidation.events SET payload = '{}'"
expect_denied $D worker "worker cannot insert events" "INSERT INTO cache_invalidation.events (kind, payload) VALUES ('x', '{}')"
expect_denied $D worker "worker cannot call emit" "SELECT cache_invalidation.emit('x', '{}')"

# ---------------------------------------------------------------- d. LISTEN
section "d. LISTEN receives the event id"
m=$(mark $D)
LISTEN_OUT=$TMP/listen.out
# The listener waits (in SQL) until the events exist, then runs two more
# commands so psql prints every notification it has received.
PGAPPNAME=ci_listener pg -d $D -U worker -v m="$m" >"$LISTEN_OUT" 2>&1 <<'SQL' &
SELECT set_config('ci.mark', :'m', false);
LISTEN cache_invalidation;
DO $$
BEGIN
    FOR i IN 1..400 LOOP
        EXIT WHEN (SELECT count(*) FROM cache_invalidation.events WHERE id > current_setting('ci.mark')::bigint) >= 2;
        PERFORM pg_sleep(0.05);
    END LOOP;
END
$$;
SELECT pg_sleep(0.3);
SELECT 1;
SELECT pg_sleep(0.2);
SELECT 1;
SQL
LPID=$!
BG_PIDS+=("$LPID")
for _ in $(seq 1 200); do
    [ "$(q $D "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'ci_listener' AND query LIKE 'DO%'")" = 1 ] && break
    sleep 0.05
done
act $D "BEGIN; INSERT INTO public.trades (id, telegram_id, wallet_address, token_address, status) VALUES (140, 70, '0xBOT70', '0xT', 'confirmed'); ROLLBACK;"
act $D "BEGIN;
        INSERT INTO public.trades (id, telegram_id, wallet_address, token_address, status) VALUES (141, 70, '0xBOT70', '0xT', 'confirmed');
        SELECT cache_invalidation.request_refresh(70);
        COMMIT;" bot
wait "$LPID" || fail "listener session failed" "$(cat "$LISTEN_OUT")"
BG_PIDS=()
got_ids=$(grep -o 'Asynchronous notification "cache_invalidation" with payload "[^"]*"' "$LISTEN_OUT" | sed 's/.*payload "\(.*\)"/\1/' | sort -n | paste -sd, || true)
want_ids=$(q $D "SELECT string_agg(id::text, ',' ORDER BY id) FROM cache_invalidation.events WHERE id > $m")
check "one notification per committed event, payload = the decimal event id" "$want_ids" "$got_ids"
check "rolled-back write: no event row" "2" "$(q $D "SELECT count(*) FROM cache_invalidation.events WHERE id > $m")"

# ---------------------------------------------------------------- e. rollback
section "e. roll back, roll back again, apply again"
act $D "INSERT INTO public.settings (telegram_id, slippage_bps) VALUES (80, 1); INSERT INTO public.transfers (telegram_id, from_address, to_address) VALUES (80, '0xa', '0xb')"
counts() { q "$1" "SELECT (SELECT count(*) FROM public.wallets) || ' wallets, ' || (SELECT count(*) FROM public.settings) || ' settings, '
                        || (SELECT count(*) FROM public.trades) || ' trades, ' || (SELECT count(*) FROM public.transfers) || ' transfers'"; }
rows_before=$(counts $D)
expect_apply $D "$DOWN2"
check_versions $D "1:bot_schema"
check "0002 down: schema cache_invalidation gone" "0" "$(schema_exists $D)"
check "0002 down: triggers gone" "" "$(actual_triggers $D)"
check "0002 down: bot rows intact" "$rows_before" "$(counts $D)"
expect_apply $D "$DOWN1"
check_versions $D "absent"
check "0001 down: bot tables and rows intact" "$rows_before" "$(counts $D)"
expect_apply $D "$DOWN2"
expect_apply $D "$DOWN1"
check "second rollback: still intact" "$rows_before" "$(counts $D)"
check_versions $D "absent"
expect_apply $D "$UP1"
expect_apply $D "$UP2"
check_versions $D "1:bot_schema,2:cache_invalidation"
check "re-applied: triggers back" "$EXPECTED_TRIGGERS" "$(actual_triggers $D)"
event $D "re-applied: events flow again" \
    "UPDATE public.settings SET slippage_bps = 2 WHERE telegram_id = 80" \
    '[{"kind":"settings_changed","payload":{"telegram_id":"80"}}]'
check "re-applied: bot still works without new grants" "rc=0 " \
    "$(try $D bot "UPDATE public.settings SET slippage_bps = 3 WHERE telegram_id = 80")"
expect_apply $D "$DOWN2"
check_versions $D "1:bot_schema"
expect_apply $D "$UP2"
check_versions $D "1:bot_schema,2:cache_invalidation"

# ---------------------------------------------------------------- f. existing tables
section "f. 0002 alone on bot-created tables with extra columns and other types"
E=ci_existing
newdb $E
q $E "
CREATE TYPE public.trade_status AS ENUM ('pending', 'confirmed', 'failed');
CREATE TABLE public.wallets (telegram_id bigint PRIMARY KEY, address varchar(128) NOT NULL UNIQUE,
    encrypted_private_key bytea, created_at timestamptz DEFAULT now(), label text, updated_at timestamptz);
CREATE TABLE public.settings (telegram_id bigint PRIMARY KEY, slippage_bps int, gas_price_gwei numeric,
    auto_buy_enabled bool, auto_buy_amount_mon numeric, updated_at timestamptz DEFAULT now(), language text);
CREATE TABLE public.trades (id bigserial PRIMARY KEY, telegram_id bigint NOT NULL, wallet_address text NOT NULL,
    token_address text NOT NULL, side text, source text, amount_mon numeric, amount_token numeric, sell_id text,
    tx_hash text, status public.trade_status NOT NULL DEFAULT 'pending', created_at timestamptz, updated_at timestamptz,
    note text);
CREATE TABLE public.transfers (id bigserial PRIMARY KEY, telegram_id bigint NOT NULL, from_address text NOT NULL,
    to_address text NOT NULL, token_address text, amount numeric, tx_hash text, status varchar(16), created_at timestamptz,
    memo text);
-- the bot's own trigger: a trade is confirmed as soon as its tx hash is known
CREATE FUNCTION public.bot_autoconfirm() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN IF NEW.tx_hash IS NOT NULL AND OLD.tx_hash IS NULL THEN NEW.status := 'confirmed'; END IF; RETURN NEW; END \$\$;
CREATE TRIGGER bot_autoconfirm BEFORE UPDATE ON public.trades FOR EACH ROW EXECUTE FUNCTION public.bot_autoconfirm();
INSERT INTO public.wallets (telegram_id, address, label) VALUES (1, '0x1', 'main'), (2, '0x2', NULL);
INSERT INTO public.settings (telegram_id, slippage_bps, language) VALUES (1, 50, 'en');
INSERT INTO public.trades (id, telegram_id, wallet_address, token_address, side, status) VALUES (1, 1, '0x1', '0xT', 'buy', 'pending');
" >/dev/null
expect_apply $E "$UP2"
expect_apply $E "$UP2"
check_versions $E "2:cache_invalidation"
check "triggers attached to the existing tables" "$EXPECTED_TRIGGERS" "$(actual_triggers $E)"
event $E "enum status: pending -> confirmed emits, status as a string" \
    "UPDATE public.trades SET status = 'confirmed' WHERE id = 1" \
    '[{"kind":"trade_settled","payload":{"telegram_id":"1","wallet_address":"0x1","tx_hash":null,"side":"buy","sell_id":null,"status":"confirmed","trade_id":"1"}}]'
act $E "INSERT INTO public.trades (id, telegram_id, wallet_address, token_address, side, status) VALUES (2, 1, '0x1', '0xT', 'sell', 'pending')"
event $E "status set by the bot's BEFORE trigger (status not in SET list) still emits" \
    "UPDATE public.trades SET tx_hash = '0xauto' WHERE id = 2" \
    '[{"kind":"trade_settled","payload":{"telegram_id":"1","wallet_address":"0x1","tx_hash":"0xauto","side":"sell","sell_id":null,"status":"confirmed","trade_id":"2"}}]'
event $E "update of an extra trades column only -> nothing" "UPDATE public.trades SET note = 'x'" '[]'
event $E "varchar status/address: transfer to a known wallet" \
    "INSERT INTO public.transfers (id, telegram_id, from_address, to_address, status, memo) VALUES (1, 1, '0x1', '0x2', 'confirmed', 'hi')" \
    '[{"kind":"transfer_settled","payload":{"telegram_id":"1","from_address":"0x1","to_address":"0x2","tx_hash":null,"receiver_telegram_id":"2","status":"confirmed","transfer_id":"1"}}]'
event $E "settings: change of an extra column counts as a change" \
    "UPDATE public.settings SET language = 'de' WHERE telegram_id = 1" \
    '[{"kind":"settings_changed","payload":{"telegram_id":"1"}}]'
event $E "settings: only updated_at bumped -> nothing" \
    "UPDATE public.settings SET updated_at = now() + interval '1 hour'" '[]'
event $E "wallets: only updated_at bumped -> nothing" \
    "UPDATE public.wallets SET updated_at = now()" '[]'
event $E "wallets: extra column changed -> wallet_changed" \
    "UPDATE public.wallets SET label = 'renamed' WHERE telegram_id = 1" \
    '[{"kind":"wallet_changed","payload":{"telegram_id":"1","old_address":"0x1","address":"0x1"}}]'
rows_e=$(counts $E)
expect_apply $E "$DOWN2"
check_versions $E "absent"
check "rolled back: only our triggers removed" "bot_autoconfirm" \
    "$(q $E "SELECT string_agg(tgname, ',') FROM pg_trigger WHERE NOT tgisinternal")"
check "rolled back: bot rows intact" "$rows_e" "$(counts $E)"
check "rolled back: the bot's enum and trigger function intact" "t|t" \
    "$(q $E "SELECT to_regtype('public.trade_status') IS NOT NULL, to_regprocedure('public.bot_autoconfirm()') IS NOT NULL")"
check "rolled back: schema gone" "0" "$(schema_exists $E)"

section "f'. 0002 on a table missing a required column fails cleanly"
M=ci_missing
newdb $M
q $M "CREATE TABLE public.wallets (telegram_id bigint PRIMARY KEY, address text);
      CREATE TABLE public.settings (telegram_id bigint PRIMARY KEY);
      CREATE TABLE public.trades (id bigserial PRIMARY KEY, telegram_id bigint, wallet_address text, tx_hash text, side text, status text);
      CREATE TABLE public.transfers (id bigserial PRIMARY KEY, telegram_id bigint, from_address text, to_address text, tx_hash text, status text);" >/dev/null
if apply $M "$UP2" 2>/dev/null; then
    fail "0002 up refuses a trades table without sell_id"
else
    if grep -q 'public.trades.sell_id' <<<"$LAST_APPLY_OUTPUT"; then ok "0002 up refuses a trades table without sell_id, naming it"; else fail "error names the missing column" "$LAST_APPLY_OUTPUT"; fi
fi
check "failed apply left nothing behind" "0|absent" "$(schema_exists $M)|$(versions $M)"

# ---------------------------------------------------------------- lock_timeout
section "lock_timeout: a migration behind a long bot transaction fails fast"
L=ci_lock
newdb $L
apply $L "$UP1" || fail "0001 up on $L"
# A bot transaction that holds a write lock on trades for a long time.
PGAPPNAME=ci_locker pg -d $L -c "BEGIN" -c "INSERT INTO public.trades (telegram_id, wallet_address, token_address) VALUES (1, 'a', 'b')" \
    -c "SELECT pg_sleep(60)" -c "COMMIT" >/dev/null 2>&1 &
LOCKER=$!
BG_PIDS+=("$LOCKER")
for _ in $(seq 1 200); do
    [ "$(q $L "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'ci_locker' AND query LIKE 'SELECT pg_sleep%'")" = 1 ] && break
    sleep 0.05
done
t0=$(date +%s%N)
if apply $L "$UP2" 2>/dev/null; then
    fail "0002 up should time out behind the bot's transaction"
else
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    if grep -q 'lock timeout' <<<"$LAST_APPLY_OUTPUT" && [ "$ms" -lt 10000 ]; then
        ok "0002 up gave up with 'lock timeout' after ${ms} ms"
    else
        fail "0002 up gave up with 'lock timeout' within 10 s" "after ${ms} ms: $LAST_APPLY_OUTPUT"
    fi
fi
check "timed-out apply left nothing behind" "0|1:bot_schema" "$(schema_exists $L)|$(versions $L)"
q $L "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'ci_locker'" >/dev/null
wait "$LOCKER" 2>/dev/null || true
BG_PIDS=()
expect_apply $L "$UP2"
check_versions $L "1:bot_schema,2:cache_invalidation"

# ---------------------------------------------------------------- summary
printf '\n%d passed, %d failed\n' "$PASSES" "$FAILS"
if [ "$FAILS" -ne 0 ]; then
    printf 'failed:\n'; printf '  - %s\n' "${FAILED_NAMES[@]}"
    exit 1
fi
