"""The staleness phase's race (imported by bench.py, which owns the worker and the report).

The bot reads cache-aside: on a miss it reads PostgreSQL, then SETs the key, with no TTL. A
reader that read a row just before a write committed, and whose SET lands after the keys were
deleted, puts the old value back, and nothing deletes it again. This module runs that race
against the bot's settle of a trade (UPDATE trades SET status = 'confirmed', one
trade_settled event deleting portfolio:{tid} and four other keys), once per variant, with the
same schedule and the same fill delays (one seed) every time:

  for each write (STALENESS_RATE/s, spread over STALENESS_WRITERS threads, one trade and one
  user per write, so no two writes share a key):
    SET  tx:{tid}:{hash} = warm     the marker: its deletion is the event's first deletion, seen
                                    through a keyspace notification (a DEL of a key that is
                                    absent notifies nothing, so the cached keys cannot show it)
    GET  portfolio:{tid}            the racing reader misses (timed: the bot's read latency)
    UPDATE ... status = 'confirmed' the writer, its transaction still open
    SELECT status ... (own conn)    the racing reader reads: 'pending', the value about to go stale
    COMMIT                          the writer; tc = when COMMIT returned
    [UNLINK the event's five keys]  the in-app design only: the writer deletes its own keys
    GET  main_menu:{tid}, SELECT    a fresh reader misses and reads after the COMMIT: 'confirmed'
    at tc + d:  SET portfolio:{tid} = pending   the racing fill (stale)
                SET main_menu:{tid} = confirmed the fresh fill (same delay): a later deletion of
                                                it is a cache miss the bot would not have had
    at tc + check: GET both keys    portfolio still there = stale; main_menu gone = a miss

A listener on the keyspace notifications (set and del) sees every SET and deletion of these
keys in Redis's own order, which classifies each racing fill: before the first deletion
(harmless: the first deletion removes it), within the window (first deletion + the second
deletion's delay: what the second deletion is for), or after it (the documented limit).
"""
import heapq
import math
import random
import re
import threading
import time

import psycopg
import redis

CHECK_SECONDS = 3.0
BUCKETS = ("before_first_deletion", "within_window", "after_window", "first_deletion_unseen")
BUCKET_LABELS = {"before_first_deletion": "<1st del", "within_window": "in window",
                 "after_window": "after win", "first_deletion_unseen": "1st del unseen"}
TID_BASE = 900_000_000
UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text):
    """A duration as the worker reads REDELETE_AFTER (250us, 500ms, 1.5s, 2m; a bare number is
    milliseconds), in seconds; None if it is not one."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(us|µs|ms|s|m|h|d)?\s*", text.lower())
    if not m:
        return None
    return float(m.group(1)) * UNITS[m.group(2) or "ms"]


def fill_delays(count, seed, tail_ms):
    """When each racing (and fresh) reader SETs, in seconds after the COMMIT returned: 95 %
    log-uniform over 1-200 ms (a reader busy for a few ms to a slow render), 5 % uniform over
    200 ms - tail_ms (a GC pause, a slow upstream call). Same seed, same delays."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        if rng.random() < 0.95 or tail_ms <= 200:
            ms = math.exp(rng.uniform(math.log(1.0), math.log(200.0)))
        else:
            ms = rng.uniform(200.0, tail_ms)
        out.append(ms / 1000.0)
    return out


def check_seconds(window, tail_ms):
    """3 s after the write, or later if the window or the slowest fill needs it."""
    return max(CHECK_SECONDS, window + 1.0, tail_ms / 1000.0 + 0.5)


def nearest_rank(values, p):
    s = sorted(values)
    return s[max(0, math.ceil(p * len(s)) - 1)] if s else None


def ms_percentiles(values, ps=(("p50", 0.5), ("p90", 0.9), ("p99", 0.99))):
    out = {name: (round(nearest_rank(values, p) * 1000, 3) if values else None) for name, p in ps}
    out["max"] = round(max(values) * 1000, 3) if values else None
    out["n"] = len(values)
    return out


class Write:
    __slots__ = ("i", "tid", "trade_id", "tx_hash", "delay", "slot", "committed", "commit_seconds",
                 "pre", "post", "stale_set_done", "fresh_set_done", "check_done", "stale_value",
                 "fresh_value", "marker_left", "app_deleted")

    def __init__(self, i, tid, trade_id, tx_hash, delay, slot):
        self.i, self.tid, self.trade_id, self.tx_hash, self.delay, self.slot = i, tid, trade_id, tx_hash, delay, slot
        self.committed = self.commit_seconds = self.pre = self.post = None
        self.stale_set_done = self.fresh_set_done = self.check_done = None
        self.stale_value = self.fresh_value = self.marker_left = self.app_deleted = None


class Race:
    """One variant's run. `stopping` is a callable: true once the driver was asked to stop."""

    def __init__(self, db_url, redis_url, prefix, trade_columns, token, stopping):
        self.db_url, self.redis_url, self.prefix = db_url, redis_url, prefix
        self.trade_columns, self.token = trade_columns, token
        self.stopping = stopping

    def keys(self, w):
        p = self.prefix
        return {"wallet": f"{p}wallet_balance:0xstale{w.tid}", "stale": f"{p}portfolio:{w.tid}",
                "fresh": f"{p}main_menu:{w.tid}", "state": f"{p}user_state:{w.tid}",
                "marker": f"{p}tx:{w.tid}:{w.tx_hash}"}

    def prepare(self, conn, variant_no, count, rate, delays):
        """The trades the run settles, inserted as 'pending' (no event: the trigger fires on a
        settled status only), one user each, in ranges no other variant or phase uses."""
        base = TID_BASE + variant_no * 10_000_000
        rows = conn.execute(
            f"INSERT INTO public.trades ({self.trade_columns}) "
            f"SELECT {base} + g, '0xstale' || ({base} + g), '{self.token}', 'buy', 'manual', 1.5, 4200, "
            f"'0xs' || ({base} + g), 'pending' FROM generate_series(0, %s) AS g RETURNING id, telegram_id",
            (count - 1,)).fetchall()
        ids = {tid: trade_id for trade_id, tid in rows}
        return [Write(i, base + i, ids[base + i], f"0xs{base + i}", delays[i], i / rate) for i in range(count)]

    def run(self, writes, rate, writers, in_app, window, check, delete_command="unlink"):
        """Runs the race over `writes` (from prepare) and returns (summary, per-write rows)."""
        r = redis.Redis.from_url(self.redis_url)
        done = threading.Event()
        errors = []
        keymap = {}
        for w in writes:
            for role, key in self.keys(w).items():
                if role in ("stale", "fresh", "marker"):
                    keymap[key.encode()] = (w.i, role)
        events = {}  # (i, role) -> [(t, b"set" | b"del"), ...] in Redis's order
        ready = threading.Event()
        channel_prefix = b"__keyspace@0__:"
        pattern = "__keyspace@0__:" + re.sub(r"([\\*?\[\]])", r"\\\1", self.prefix) + "*"

        def listen():
            try:
                ps = redis.Redis.from_url(self.redis_url).pubsub(ignore_subscribe_messages=True)
                ps.psubscribe(pattern)
                while ps.get_message(timeout=0.05) is not None:
                    pass
                ready.set()
                while not done.is_set():
                    m = ps.get_message(timeout=0.05)
                    if m is None:
                        continue
                    t = time.perf_counter()
                    if m["type"] != "pmessage":
                        continue
                    what = keymap.get(m["channel"][len(channel_prefix):])
                    if what is not None:
                        kind = b"del" if m["data"] in (b"del", b"unlink") else m["data"]
                        events.setdefault(what, []).append((t, kind))
                ps.close()
            except Exception as e:
                errors.append(e)
                ready.set()

        # One timer thread runs every delayed fill and every check, in due order.
        heap, cond, seq = [], threading.Condition(), [0]

        def schedule(due, action, w):
            with cond:
                seq[0] += 1
                heapq.heappush(heap, (due, seq[0], action, w))
                cond.notify()

        outstanding = [len(writes)]  # checks still to run

        def timer():
            try:
                tr = redis.Redis.from_url(self.redis_url)
                while True:
                    with cond:
                        while True:
                            if done.is_set():
                                return
                            if heap and heap[0][0] <= time.perf_counter():
                                _, _, action, w = heapq.heappop(heap)
                                break
                            cond.wait(min(0.05, heap[0][0] - time.perf_counter()) if heap else 0.05)
                    k = self.keys(w)
                    if action == "stale":
                        tr.set(k["stale"], f"{w.trade_id}:{w.pre}")  # no TTL, as the bot's user: keys
                        w.stale_set_done = time.perf_counter()
                    elif action == "fresh":
                        tr.set(k["fresh"], f"{w.trade_id}:{w.post}")
                        w.fresh_set_done = time.perf_counter()
                    else:
                        p = tr.pipeline(transaction=False)
                        p.get(k["stale"])
                        p.get(k["fresh"])
                        p.exists(k["marker"])
                        w.stale_value, w.fresh_value, w.marker_left = p.execute()
                        w.check_done = time.perf_counter()
                        with cond:
                            outstanding[0] -= 1
            except Exception as e:
                errors.append(e)

        gets = []  # the readers' GETs (both miss): seconds each
        late = [0]
        lock = threading.Lock()
        start = [None]
        update = (f"UPDATE public.trades SET status = 'confirmed', updated_at = now() WHERE id = %s")
        read = "SELECT status FROM public.trades WHERE id = %s"
        delete = delete_command.upper()

        def writer(offset):
            try:
                wr = redis.Redis.from_url(self.redis_url)
                wconn = psycopg.connect(self.db_url)  # the bot's transaction
                rconn = psycopg.connect(self.db_url, autocommit=True)  # the readers' own connection
                my_gets, my_late = [], 0
                interval = 1.0 / rate
                for w in writes[offset::writers]:
                    if done.is_set() or self.stopping():
                        break
                    slot = start[0] + w.slot
                    now = time.perf_counter()
                    if slot > now:
                        time.sleep(slot - now)
                    elif now - slot > interval * writers:
                        my_late += 1
                    k = self.keys(w)
                    wr.set(k["marker"], "warm")
                    t = time.perf_counter()
                    wr.get(k["stale"])
                    my_gets.append(time.perf_counter() - t)
                    wconn.execute(update, (w.trade_id,), prepare=True)
                    w.pre = rconn.execute(read, (w.trade_id,), prepare=True).fetchone()[0]
                    t = time.perf_counter()
                    wconn.commit()
                    w.committed = time.perf_counter()
                    w.commit_seconds = w.committed - t
                    if in_app:
                        p = wr.pipeline(transaction=False)
                        p.execute_command(delete, *k.values())
                        p.execute()
                        w.app_deleted = time.perf_counter()
                    schedule(w.committed + w.delay, "stale", w)
                    t = time.perf_counter()
                    wr.get(k["fresh"])
                    my_gets.append(time.perf_counter() - t)
                    w.post = rconn.execute(read, (w.trade_id,), prepare=True).fetchone()[0]
                    schedule(w.committed + w.delay, "fresh", w)
                    schedule(w.committed + check, "check", w)
                wconn.close()
                rconn.close()
                with lock:
                    gets.extend(my_gets)
                    late[0] += my_late
            except Exception as e:
                errors.append(e)

        threads = [threading.Thread(target=listen, daemon=True, name="staleness-listener")]
        threads[0].start()
        ready.wait(10)
        if errors:
            raise errors[0]
        threads.append(threading.Thread(target=timer, daemon=True, name="staleness-timer"))
        threads[-1].start()
        start[0] = time.perf_counter() + 0.05
        writer_threads = [threading.Thread(target=writer, args=(n,), daemon=True, name=f"staleness-writer-{n}")
                          for n in range(writers)]
        for t in writer_threads:
            t.start()
        try:
            for t in writer_threads:
                while t.is_alive():
                    t.join(0.2)
                    if errors:
                        raise errors[0]
            elapsed = time.perf_counter() - start[0]
            deadline = time.perf_counter() + check + 30
            while True:
                with cond:
                    left = outstanding[0] - sum(1 for w in writes if w.committed is None)
                if left <= 0:
                    break
                if errors:
                    raise errors[0]
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"staleness: {left} checks still to run {check + 30:.0f} s after the last write")
                time.sleep(0.05)
            time.sleep(0.2)  # the listener's last notifications
        finally:
            done.set()
            with cond:
                cond.notify_all()
            for t in threads:
                t.join(2)
        if errors:
            raise errors[0]
        ran = [w for w in writes if w.committed is not None]
        return self.summarize(ran, events, window, check, elapsed, rate, writers, late[0], gets)

    @staticmethod
    def summarize(writes, events, window, check, elapsed, rate, writers, late, gets):
        n = len(writes)
        buckets = {b: {"fills": 0, "stale": 0, "fresh_lost": 0} for b in BUCKETS}
        stale = fresh_lost = 0
        first, second, achieved, planned, late_by, commits, fresh_second = [], [], [], [], [], [], 0
        rows = []
        for w in writes:
            marker = events.get((w.i, "marker"), [])
            stale_events = events.get((w.i, "stale"), [])
            fresh_events = events.get((w.i, "fresh"), [])
            # The first deletion: the marker's deletion (there is one; a second deletion of the
            # absent marker notifies nothing). Fills are timed by their own notification.
            t1 = next((t for t, kind in marker if kind == b"del"), None)
            tf = next((t for t, kind in stale_events if kind == b"set"), w.stale_set_done)
            tff = next((t for t, kind in fresh_events if kind == b"set"), w.fresh_set_done)
            if t1 is None:
                bucket = "first_deletion_unseen"
            elif tf < t1:
                bucket = "before_first_deletion"
            elif tf < t1 + window:
                bucket = "within_window"
            else:
                bucket = "after_window"
            # A deletion of the racing fill after the first deletion: the second deletion.
            t2 = next((t for t, kind in stale_events if kind == b"del" and t > tf), None) if bucket != "before_first_deletion" else None
            if t2 is not None and t1 is not None:
                second.append(t2 - t1)
            if t1 is not None and tff >= t1 and any(kind == b"del" and t > tff for t, kind in fresh_events):
                fresh_second += 1
            is_stale = w.stale_value is not None and w.stale_value.endswith(b":pending")
            lost = w.fresh_value is None
            b = buckets[bucket]
            b["fills"] += 1
            b["stale"] += is_stale
            b["fresh_lost"] += lost
            stale += is_stale
            fresh_lost += lost
            if t1 is not None:
                first.append(max(0.0, t1 - w.committed))
            achieved.append(tf - w.committed)
            planned.append(w.delay)
            if w.stale_set_done is not None:
                late_by.append(max(0.0, w.stale_set_done - w.committed - w.delay))
            commits.append(w.commit_seconds)
            rows.append((w.i, round(w.delay * 1000, 3), round((tf - w.committed) * 1000, 3),
                         round((t1 - w.committed) * 1000, 3) if t1 is not None else "",
                         bucket, int(is_stale), int(lost),
                         round((t2 - t1) * 1000, 3) if t2 is not None and t1 is not None else ""))
        per_m = (lambda x: round(x / n * 1e6) if n else None)
        summary = {
            "writes": n,
            "rate_target": rate,
            "rate_achieved": round(n / elapsed, 1) if elapsed else None,
            "writers": writers,
            "late_slots": late,
            "window_seconds": window,
            "check_seconds": check,
            "stale_keys": stale,
            "stale_per_million_writes": per_m(stale),
            "by_fill": {b: dict(v, stale_per_million_writes=per_m(v["stale"]),
                                stale_share_of_fills=(round(v["stale"] / v["fills"], 4) if v["fills"] else None))
                        for b, v in buckets.items()},
            "fresh_fills_lost": fresh_lost,
            "fresh_fills_lost_per_write": round(fresh_lost / n, 4) if n else None,
            # Fresh fills that landed after the first deletion and were deleted again: the misses
            # the second deletion itself causes (with one fresh fill per write, an upper bound).
            "fresh_fills_deleted_again": fresh_second,
            "fresh_fills_deleted_again_per_write": round(fresh_second / n, 4) if n else None,
            "first_deletion_unseen": buckets["first_deletion_unseen"]["fills"],
            "first_deletion_ms": ms_percentiles(first),
            "second_deletions_seen": len(second),
            "second_deletion_after_first_ms": ms_percentiles(second),
            "fill_delay_planned_ms": ms_percentiles(planned),
            # When Redis announced the SET, from the COMMIT's return; and how late the timer ran.
            "fill_delay_achieved_ms": ms_percentiles(achieved),
            "fill_late_ms": ms_percentiles(late_by),
            "reader_get_ms": ms_percentiles(gets, (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999))),
            "commit_ms": ms_percentiles(commits),
        }
        return summary, rows
