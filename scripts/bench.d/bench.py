"""The benchmark driver, run by scripts/bench (which starts the servers and owns their teardown).

Reads its settings from the environment scripts/bench exports; see `scripts/bench --help`.
Owns the worker and pgbench processes it starts and stops them on every exit path.
"""
import binascii
import json
import math
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timezone

import psycopg
import redis

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import staleness  # noqa: E402  (the staleness phase's race, beside this file)

sys.setswitchinterval(0.0001)  # the probe's listener thread must not wait 5 ms for the GIL

ENV = os.environ
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = ENV["RESULTS"]
TMP = ENV["BENCH_TMP"]
WORKER = ENV["WORKER"]
PG_BIN = ENV["PG_BIN"]
DB = ENV["DATABASE_URL"]
BASE_DB = ENV["BASE_DATABASE_URL"]
REDIS_URL = ENV["REDIS_URL"]
# REDIS_CLUSTER=1: scripts/bench started a cluster of 3 masters + 3 replicas beside the single node;
# the worker is given one node's URL (REDIS_CLUSTER_URL) and finds the rest itself.
REDIS_CLUSTER = ENV.get("REDIS_CLUSTER", "0") == "1"
REDIS_CLUSTER_URL = ENV.get("REDIS_CLUSTER_URL")
REDIS_CLUSTER_PORTS = [int(p) for p in ENV.get("REDIS_CLUSTER_PORTS", "").split()]
PREFIX = ENV.get("KEY_PREFIX", "area51:")
PROBES = int(ENV["PROBES"])
RATE = int(ENV["RATE"])
BG_RATE = int(ENV["BACKGROUND_RATE"])
BG_CLIENTS = int(ENV["BACKGROUND_CLIENTS"])
CLIENTS = [int(c) for c in ENV["CLIENTS"].split()]
PGBENCH_SECONDS = int(ENV["PGBENCH_SECONDS"])
PGBENCH_REPEATS = int(ENV["PGBENCH_REPEATS"])
DRAIN_SIZES = [int(n) for n in ENV["DRAIN_SIZES"].split()]
DRAIN_CHUNK = int(ENV["DRAIN_CHUNK"])
# 1: the drain first SETs every event's keys and checks afterwards that none is left; 0: the old
# keyless drain (the worker deletes keys that do not exist).
DRAIN_KEYS = ENV.get("DRAIN_KEYS", "1") == "1"
# The users of the drain's backlog: the keyless drain keeps its 50,000; the drain with keys has
# 10,000, so 100,000 trades make 4 x 10,000 per-user keys and 100,000 tx keys.
DRAIN_USERS = 10_000 if DRAIN_KEYS else 50_000
SOAK_SECONDS = int(ENV["SOAK_SECONDS"])
SOAK_RATE = int(ENV["SOAK_RATE"])
SOAK_SAMPLE = int(ENV["SOAK_SAMPLE_SECONDS"])
# Which lag phases: the standard ones (one probe connection, BACKGROUND_CLIENTS pgbench clients over
# 100,000 users), the pgbench profile (PROFILE_CONNECTIONS probe connections, PROFILE_CLIENTS
# clients over PROFILE_USERS users, the deletion seen on __keyevent@0__:del), or both.
LOAD_PROFILE = ENV.get("LOAD_PROFILE", "standard")
PROFILE_CONNECTIONS = int(ENV.get("PROFILE_CONNECTIONS", "4"))
PROFILE_CLIENTS = int(ENV.get("PROFILE_CLIENTS", "8"))
PROFILE_USERS = int(ENV.get("PROFILE_USERS", "10000"))
SKIP = {name: ENV.get("SKIP_" + name) == "1" for name in ("LAG", "BACKGROUND", "WRITE", "ROW_ONLY", "BOT_LATENCY", "STALENESS", "DRAIN")}
STALENESS_SECONDS = int(ENV.get("STALENESS_SECONDS", "20"))
STALENESS_RATE = int(ENV.get("STALENESS_RATE", "200"))
STALENESS_WRITERS = int(ENV.get("STALENESS_WRITERS", "4"))
STALENESS_REDELETE = ENV.get("STALENESS_REDELETE", "1s")
STALENESS_SEED = int(ENV.get("STALENESS_SEED", "1"))
STALENESS_TAIL_MS = int(ENV.get("STALENESS_TAIL_MS", "1000"))
BOT_LATENCY_SECONDS = int(ENV.get("BOT_LATENCY_SECONDS", "5"))
BOT_LATENCY_ROUNDS = int(ENV.get("BOT_LATENCY_ROUNDS", "3"))
WRITE_PARTS = ENV.get("WRITE_PARTS") == "1"
PARTS_ROUNDS = int(ENV.get("PARTS_ROUNDS", "3"))
PARTS_SECONDS = int(ENV.get("PARTS_SECONDS", "8"))
PARTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "write-parts")
# The write-path parts: (name, what it adds to the previous one, the SQL applied on top of every
# migration, or None for the migrations as shipped).
PARTS = [("trigger_only", "the trigger fires and does nothing", "trigger_only.sql"),
         ("event_row", "+ the event row (jsonb payload, primary key, BRIN on created_at)", "event_row.sql"),
         ("shipped", "+ emit(): the queue row, the G and W lock calls", None)]
# W, "worker polling" (migrations/0003_quiet_notify.up.sql): held, writers skip their NOTIFY.
POLLING_LOCK_KEY = 0x6361636865696E76 + 2
MISS_SECONDS = 5.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
PERCENTILES = [("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p99.9", 0.999)]
# The worker's settings that may come from the environment; recorded with the results.
WORKER_VARS = ["BATCH_SIZE", "DELETE_COMMAND", "SUMMARY_INTERVAL", "SLOW_THRESHOLD", "RETENTION", "REDELETE_AFTER",
               "REDIS_TIMEOUT", "REDIS_WAIT_REPLICAS", "FAILOVER_REPLAY", "RECONNECT_MAX", "LOG_LEVEL", "LOG_FORMAT", "RULES"]

# The bot's settled trade: what the probe, the background load, the backlog and pgbench write.
TRADE_COLUMNS = "telegram_id, wallet_address, token_address, side, source, amount_mon, amount_token, tx_hash, status"
TOKEN = "0x7b0c0000000000000000000000000000000000a5"
PGBENCH_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "settled-trade.sql")
# The pgbench profile's background: the same trade for one of PROFILE_USERS users (pgbench -D users=N).
PROFILE_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "settled-trade-users.sql")
# Lags counted per probe in the pgbench profile (ms); a missed probe counts as over each.
PROFILE_OVER_MS = (10, 50, 100)


def say(message):
    print(f"bench: {message}", flush=True)


class Stop(Exception):
    """A signal asked us to stop: unwind through every finally, which stops what we started."""


_stopping = False


def _on_signal(signum, _frame):
    global _stopping
    if _stopping:
        return  # the cleanup is running; a second Ctrl-C must not interrupt it
    _stopping = True
    raise Stop(signal.Signals(signum).name)


# ================================================================ child processes

CHILDREN = os.path.join(TMP, "children")


def spawn(args, name, **kwargs):
    """Starts a child in its own session (a Ctrl-C reaches only us; we stop it) and records its
    pid for scripts/bench's backstop cleanup."""
    proc = subprocess.Popen(args, start_new_session=True, **kwargs)
    with open(CHILDREN, "a") as f:
        f.write(f"{proc.pid} {name[:15]}\n")
    return proc


def terminate(proc, seconds=15):
    if proc is None or proc.poll() is not None:
        return proc.returncode if proc else None
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def proc_cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def proc_memory_kb(pid):
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmHWM:", "VmRSS:", "RssAnon:", "RssFile:")):
                values[line.split(":")[0]] = int(line.split()[1])
    return values


def reset_peak_rss(pid):
    """Writing 5 to clear_refs resets VmHWM to the current RSS (Linux 4.0+): a peak per phase."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ================================================================ database helpers

def connect(url=DB):
    return psycopg.connect(url, autocommit=True)


def scalar(conn, sql, params=None):
    row = conn.execute(sql, params).fetchone()
    return row[0] if row else None


def has_queue(conn):
    """0005_pending_queue applied: pending events are in cache_invalidation.pending, and the
    worker no longer writes processed_at."""
    return scalar(conn, "SELECT to_regclass('cache_invalidation.pending') IS NOT NULL")


def pending(conn):
    if has_queue(conn):
        return scalar(conn, "SELECT count(*) FROM cache_invalidation.pending")
    return scalar(conn, "SELECT count(*) FROM cache_invalidation.events WHERE processed_at IS NULL")


def acknowledged_since(conn, t0):
    """Events acknowledged since t0. With the queue there is no per-event acknowledgement time:
    the events created since t0 that have left the queue (every phase processes what it writes)."""
    if has_queue(conn):
        return scalar(conn, "SELECT count(*) FROM cache_invalidation.events e WHERE e.created_at >= %s "
                            "AND NOT EXISTS (SELECT 1 FROM cache_invalidation.pending p WHERE p.id = e.id)", (t0,))
    return scalar(conn, "SELECT count(*) FROM cache_invalidation.events WHERE processed_at >= %s", (t0,))


def settle(conn, label):
    """Same starting state for each phase: the event log vacuumed, a fresh checkpoint."""
    conn.execute("VACUUM (ANALYZE) cache_invalidation.events")
    if has_queue(conn):
        conn.execute("VACUUM (ANALYZE) cache_invalidation.pending")
    conn.execute("VACUUM (ANALYZE) public.trades")
    conn.execute("CHECKPOINT")


# ================================================================ the worker

class Worker:
    """The release-built worker on the bench database, its log in the results directory."""

    def __init__(self):
        self.proc = None
        self.log_path = None
        self.redis_url = None
        self.runs = []

    def start(self, phase, env=None, redis_url=REDIS_URL):
        """`env`: variables for this run only, over the bench's own (the staleness phase's
        REDELETE_AFTER: a variable, not a flag, so a binary without the setting still runs).
        `redis_url`: the single node, or a node of the cluster (REDIS_CLUSTER_URL)."""
        assert self.proc is None
        self.log_path = os.path.join(RESULTS, f"worker-{phase}.log")
        self.redis_url = redis_url
        env = dict(os.environ, DATABASE_URL=DB, KEY_PREFIX=PREFIX, **(env or {}), REDIS_URL=redis_url)
        self.log = open(self.log_path, "w")
        self.started_at = time.perf_counter()
        self.proc = spawn([WORKER, "run"], "cache-invalidat", env=env, stdin=subprocess.DEVNULL,
                          stdout=self.log, stderr=subprocess.STDOUT)
        return self.proc

    def wait_ready(self, timeout=20):
        """Both servers answered (the worker logs each once its first round trip worked)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the worker exited with code {self.proc.returncode} at start; see {self.log_path}")
            with open(self.log_path) as f:
                text = f.read()
            if 'msg="postgres connected, listening"' in text and 'msg="redis connected"' in text:
                return
            time.sleep(0.02)
        raise RuntimeError(f"the worker did not connect within {timeout} s; see {self.log_path}")

    def stop(self):
        if self.proc is None:
            return None
        rc = terminate(self.proc)
        self.log.close()
        self.runs.append({"log": os.path.basename(self.log_path), "exit_code": rc, "redis_url": self.redis_url})
        self.proc = None
        if rc != 0:
            raise RuntimeError(f"the worker exited with code {rc}; see {self.log_path}")
        return rc

    @property
    def pid(self):
        return self.proc.pid


class Meter:
    """The worker's CPU and peak RSS over one phase, and the events it acknowledged in it."""

    def __init__(self, worker, conn, fresh=False):
        self.pid = worker.pid
        self.conn = conn
        self.reset_ok = True if fresh else reset_peak_rss(self.pid)
        self.cpu0 = 0.0 if fresh else proc_cpu_seconds(self.pid)
        self.t0 = scalar(conn, "SELECT clock_timestamp()")

    def finish(self, events=None):
        cpu = proc_cpu_seconds(self.pid) - self.cpu0
        mem = proc_memory_kb(self.pid)
        if events is None:
            events = acknowledged_since(self.conn, self.t0)
        return {
            "cpu_seconds": round(cpu, 3),
            "events": events,
            "cpu_seconds_per_1000_events": round(cpu / events * 1000, 4) if events else None,
            "peak_rss_kb": mem.get("VmHWM"),
            "rss_kb_at_end": mem.get("VmRSS"),
            # What the RSS is made of: heap and stacks vs mapped files (the binary, Swift runtime,
            # Foundation and ICU data, libpq, hiredis), which no code change in the worker shrinks.
            "rss_anon_kb_at_end": mem.get("RssAnon"),
            "rss_file_kb_at_end": mem.get("RssFile"),
            "peak_is_per_phase": self.reset_ok,
        }


def wait_drained(conn, timeout=300):
    deadline = time.monotonic() + timeout
    while True:
        left = pending(conn)
        if left == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{left} events still pending after {timeout} s")
        time.sleep(0.2)


def free_port():
    """A loopback port nothing listens on now (for the worker's /metrics in the staleness phase)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape_counter(port, name):
    """The sum of a counter's series on the worker's /metrics, or None (no such metric: a
    worker without it, or /metrics not answering)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as f:
            text = f.read().decode()
    except Exception:
        return None
    values = [float(line.rsplit(None, 1)[1]) for line in text.splitlines()
              if line.startswith(name) and (line[len(name):len(name) + 1] in ("{", " "))]
    return int(sum(values)) if values else None


# ================================================================ pgbench

def pgbench(url, clients, seconds, rate=None, label="pgbench", transaction_log=None, script=PGBENCH_SCRIPT, defines=None):
    """Starts pgbench with the settled-trade script (or `script`, its variables `defines`);
    returns (process, log path). With `transaction_log` (a path prefix), pgbench also logs every
    transaction there (-l)."""
    args = [os.path.join(PG_BIN, "pgbench"), "-n", "-M", "prepared", "-f", script,
            "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(seconds)]
    for name, value in (defines or {}).items():
        args += ["-D", f"{name}={value}"]
    if rate:
        args += ["--rate", str(rate)]
    if transaction_log:
        args += ["-l", "--log-prefix", transaction_log]
    args.append(url)
    log_path = os.path.join(RESULTS, f"{label}.log")
    log = open(log_path, "w")
    log.write("$ " + " ".join(args) + "\n")
    log.flush()
    proc = spawn(args, "pgbench", stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    proc._bench_log = log
    return proc, log_path


def checkpointed_pgbench(conn, url, clients, seconds, label, rate=None, transaction_log=None):
    """A CHECKPOINT (on `conn`'s server) so no run starts under another's dirty pages, then one
    pgbench run to its end; returns its result."""
    conn.execute("CHECKPOINT")
    proc, log = pgbench(url, clients, seconds, rate=rate, label=label, transaction_log=transaction_log)
    return pgbench_result(proc, log, seconds + 60)


def hold_polling_lock(url=DB):
    """A session holding W on `url`'s database: every writer skips its NOTIFY while it lives, and
    nothing polls or acknowledges. Close it to let go."""
    hold = connect(url)
    hold.execute("SELECT pg_advisory_lock(%s)", (POLLING_LOCK_KEY,))
    return hold


def pgbench_result(proc, log_path, timeout):
    try:
        rc = proc.wait(timeout)
    finally:
        if proc.poll() is None:
            terminate(proc)
        proc._bench_log.close()
    with open(log_path) as f:
        text = f.read()
    if rc != 0:
        raise RuntimeError(f"pgbench exited with code {rc}; see {log_path}")
    tps = re.search(r"^tps = ([0-9.]+)", text, re.M)
    done = re.search(r"number of transactions actually processed: (\d+)", text)
    failed = re.search(r"number of failed transactions: (\d+)", text)
    latency = re.search(r"latency average = ([0-9.]+) ms", text)
    if not tps:
        raise RuntimeError(f"no tps line in pgbench's output; see {log_path}")
    return {
        "tps": float(tps.group(1)),
        "transactions": int(done.group(1)) if done else None,
        "failed": int(failed.group(1)) if failed else 0,
        "latency_avg_ms": float(latency.group(1)) if latency else None,
        "log": os.path.basename(log_path),
    }


def transaction_durations(prefix):
    """Each transaction's own duration in seconds, from pgbench's -l logs under `prefix` (one file
    per thread: prefix.PID[.N]). A line is `client txn time_us script epoch epoch_us lag_us`
    with --rate; `time` counts from the scheduled start, so the time the transaction itself took
    is time - lag: what the bot waits for its INSERT and COMMIT, without pgbench's own queueing.
    The logs are removed once read (a 10 s run at 2,000/s is 20,000 lines)."""
    directory, base = os.path.split(prefix)
    durations = []
    for name in sorted(os.listdir(directory)):
        if not name.startswith(base + "."):
            continue
        path = os.path.join(directory, name)
        with open(path) as f:
            for line in f:
                fields = line.split()
                # Skipped transactions (--latency-limit) log "skipped"; none are asked for here.
                if len(fields) < 7 or not fields[2].isdigit():
                    raise RuntimeError(f"unexpected line in pgbench's transaction log {path}: {line.strip()!r}")
                durations.append((int(fields[2]) - int(fields[6])) / 1e6)
        os.remove(path)
    if not durations:
        raise RuntimeError(f"pgbench wrote no transaction log under {prefix}")
    return durations


# ================================================================ Redis: the single node or the cluster

SLOTS = 16384


def hash_slot(key):
    """Redis Cluster's slot of a key (str or bytes): CRC16-XMODEM of the key, or of its hash tag
    (between the first '{' and the next '}', when not empty), mod 16384; as the worker's
    HashSlot."""
    if isinstance(key, str):
        key = key.encode()
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1:end]
    return binascii.crc_hqx(key, 0) % SLOTS


class RedisTarget:
    """Where the probe and the drain put their keys and watch them go: the single node, or the
    masters of the cluster, each key on the master of its slot (CLUSTER SLOTS, as the node of
    `url` sees it). On a cluster a multi-key command must stay within one slot (CROSSSLOT
    otherwise, even on one node), so by_slot() groups keys for MSET and EXISTS; keyspace
    notifications are per node, so a listener subscribes on every master."""

    def __init__(self, url, cluster):
        self.url = url
        self.cluster = cluster
        seed = redis.Redis.from_url(url)
        if cluster:
            self.masters, self.owner = self.slot_map(seed)
            self.replicas = self.replica_map(seed, self.masters)
            # The bench's slot function must be the cluster's (a wrong one would SET keys on
            # a node that refuses them with MOVED).
            for key in (f"{PREFIX}portfolio:200000", f"{PREFIX}tx:777:0xp1", "{user1000}.following", "a{}{b}"):
                if int(seed.execute_command("CLUSTER", "KEYSLOT", key)) != hash_slot(key):
                    raise RuntimeError(f"hash_slot({key!r}) is not the cluster's CLUSTER KEYSLOT")
        else:
            kwargs = seed.connection_pool.connection_kwargs
            self.masters, self.owner, self.replicas = [(kwargs["host"], int(kwargs["port"]))], None, {}
        self.db = seed.connection_pool.connection_kwargs.get("db", 0)
        seed.close()

    @staticmethod
    def slot_map(r):
        """(masters [(host, port)], the index of each slot's master), from CLUSTER SLOTS."""
        masters, owner = [], [None] * SLOTS
        for entry in r.execute_command("CLUSTER", "SLOTS"):
            start, end, master = int(entry[0]), int(entry[1]), entry[2]
            node = (master[0].decode() if isinstance(master[0], bytes) else master[0], int(master[1]))
            if node not in masters:
                masters.append(node)
            index = masters.index(node)
            for slot in range(start, end + 1):
                owner[slot] = index
        uncovered = owner.count(None)
        if uncovered:
            raise RuntimeError(f"the cluster leaves {uncovered} slots without a master")
        return masters, owner

    @staticmethod
    def replica_map(r, masters):
        """{master: [its replicas]}, from CLUSTER NODES (CLUSTER SLOTS leaves a replica out until
        the node asked has heard its replication offset, seconds after the sync)."""
        text = r.execute_command("CLUSTER", "NODES")
        text = text.decode() if isinstance(text, bytes) else text
        address, master_of = {}, {}
        for line in text.splitlines():
            fields = line.split()
            if len(fields) < 8:
                continue
            host, port = fields[1].split("@")[0].rsplit(":", 1)
            address[fields[0]] = (host, int(port))
            if "slave" in fields[2].split(",") and "fail" not in fields[2]:
                master_of[(host, int(port))] = fields[3]
        replicas = {node: [] for node in masters}
        for replica, master_id in master_of.items():
            master = address.get(master_id)
            if master in replicas:
                replicas[master].append(replica)
        return replicas

    @property
    def label(self):
        return "cluster" if self.cluster else "single node"

    def describe(self):
        return {"url": self.url, "cluster": self.cluster,
                "masters": [f"{h}:{p}" for h, p in self.masters],
                "replicas": {f"{h}:{p}": [f"{rh}:{rp}" for rh, rp in r] for (h, p), r in self.replicas.items()},
                "slots_per_master": ({f"{h}:{p}": self.owner.count(i) for i, (h, p) in enumerate(self.masters)}
                                     if self.cluster else None)}

    def client(self, index=0):
        host, port = self.masters[index]
        return redis.Redis(host=host, port=port, db=self.db)

    def clients(self):
        return [self.client(i) for i in range(len(self.masters))]

    def node_of(self, key):
        return self.owner[hash_slot(key)] if self.cluster else 0

    def by_node(self, keys):
        """{master index: its keys}."""
        out = {}
        for key in keys:
            out.setdefault(self.node_of(key), []).append(key)
        return out

    def by_slot(self, keys):
        """{(master index, slot): keys}: the groups a multi-key command may take (the single node: one)."""
        if not self.cluster:
            return {(0, None): list(keys)}
        out = {}
        for key in keys:
            slot = hash_slot(key)
            out.setdefault((self.owner[slot], slot), []).append(key)
        return out

    def config_get(self, name):
        r = self.client(0)
        try:
            return r.config_get(name).get(name, "")
        finally:
            r.close()

    def config_set(self, name, value):
        """On every master."""
        for r in self.clients():
            r.config_set(name, value)
            r.close()


# ================================================================ the lag probe

def percentiles(values):
    """Nearest-rank percentiles of a list of seconds, in ms."""
    if not values:
        return {name: None for name, _ in PERCENTILES} | {"max": None}
    s = sorted(values)
    out = {name: round(s[max(0, math.ceil(p * len(s)) - 1)] * 1000, 4) for name, p in PERCENTILES}
    out["max"] = round(s[-1] * 1000, 4)
    return out


class Probe:
    """Open loop at RATE/s: SET the five keys of a settled trade (one MSET), INSERT the trade in
    autocommit, t0 = perf_counter() when the COMMIT returned; a listener thread on its own
    connection notes when Redis announced the deletion of the probe's tx key (keyspace
    notification). For the floor, the probe UNLINKs the five keys itself, pipelined, right after
    t0 (and the worker is stopped).

    On a cluster (`target`): each key SET on its slot's master (one pipeline per master: an MSET
    across slots is refused), and one listener thread per master, each subscribed there (keyspace
    notifications are per node); the first to see the tx key's deletion notes it. No floor."""

    TID = 777
    WALLET = "0xprobe"

    def __init__(self, target=None):
        self.target = target or RedisTarget(REDIS_URL, cluster=False)
        self.r = self.target.client(0)
        self.nodes = self.target.clients()
        self.target.config_set("notify-keyspace-events", "Kg")
        self.db = connect()
        self.sql = (f"INSERT INTO public.trades ({TRADE_COLUMNS}) "
                    f"VALUES ({self.TID}, '{self.WALLET}', '{TOKEN}', 'buy', 'manual', 1.5, 4200, %s, 'confirmed')")
        self.run_number = 0

    def keys(self, tx_hash):
        p = PREFIX
        return [f"{p}wallet_balance:{self.WALLET}", f"{p}portfolio:{self.TID}", f"{p}main_menu:{self.TID}",
                f"{p}user_state:{self.TID}", f"{p}tx:{self.TID}:{tx_hash}"]

    def run(self, count, rate, floor, delete_command="unlink"):
        self.run_number += 1
        tag = f"0xp{os.getpid()}r{self.run_number}n"
        escaped = re.sub(r"([\\*?\[\]])", r"\\\1", f"{PREFIX}tx:{self.TID}:{tag}")
        channel_prefix = f"__keyspace@0__:{PREFIX}tx:{self.TID}:"
        seen = {}
        masters = len(self.target.masters)
        ready = [threading.Event() for _ in range(masters)]
        done = threading.Event()
        listener_error = []

        def listen(node):
            try:
                r = self.target.client(node)
                ps = r.pubsub(ignore_subscribe_messages=True)
                ps.psubscribe(f"__keyspace@0__:{escaped}*")
                while ps.get_message(timeout=0.05) is not None:
                    pass
                ready[node].set()
                while not done.is_set():
                    m = ps.get_message(timeout=0.05)
                    if m is None:
                        continue
                    t = time.perf_counter()
                    if m["type"] == "pmessage" and m["data"] in (b"del", b"unlink"):
                        key = m["channel"].decode()[len(channel_prefix):]
                        seen.setdefault(key, t)
                ps.close()
                r.close()
            except Exception as e:  # reported by the main thread
                listener_error.append(e)
                ready[node].set()

        threads = [threading.Thread(target=listen, args=(node,), daemon=True) for node in range(masters)]
        for thread in threads:
            thread.start()
        for event in ready:
            event.wait(10)
        if listener_error:
            raise listener_error[0]
        committed = {}
        interval = 1.0 / rate
        pipe = self.r.pipeline(transaction=False)
        pipes = [r.pipeline(transaction=False) for r in self.nodes]
        cluster = self.target.cluster
        if floor and cluster:
            raise RuntimeError("the probe has no floor on a cluster")
        delete = delete_command.upper()
        late = 0
        start = time.perf_counter()
        try:
            for i in range(count):
                slot = start + i * interval
                now = time.perf_counter()
                if slot > now:
                    time.sleep(slot - now)
                elif now - slot > interval:
                    late += 1
                tx_hash = f"{tag}{i}"
                keys = self.keys(tx_hash)
                if cluster:
                    for node, node_keys in self.target.by_node(keys).items():
                        for k in node_keys:
                            pipes[node].set(k, "cached")
                        pipes[node].execute()
                else:
                    self.r.mset({k: "cached" for k in keys})
                self.db.execute(self.sql, (tx_hash,), prepare=True)
                t0 = time.perf_counter()
                committed[tx_hash] = t0
                if floor:
                    pipe.execute_command(delete, *keys)
                    pipe.execute()
            elapsed = time.perf_counter() - start
            # Every probe gets MISS_SECONDS from its commit to be seen.
            deadline = time.perf_counter() + MISS_SECONDS
            while len(seen) < count and time.perf_counter() < deadline:
                time.sleep(0.01)
        finally:
            done.set()
            for thread in threads:
                thread.join(2)
        lags, missed, negative = [], 0, 0
        for tx_hash, t0 in committed.items():
            t = seen.get(tx_hash)
            if t is None or t - t0 > MISS_SECONDS:
                missed += 1
                continue
            if t < t0:
                negative += 1  # deleted before the client saw its COMMIT return
            lags.append(max(0.0, t - t0))
        return {
            "redis": self.target.label,
            "probes": count,
            "seen": len(lags),
            "missed": missed,
            "deleted_before_commit_returned": negative,
            "rate_target": rate,
            "rate_achieved": round(count / elapsed, 1),
            # Probes sent more than one interval behind their schedule (a slow INSERT before them).
            "late_slots": late,
            "lag_ms": percentiles(lags),
        }, lags


class ProfileProbe:
    """The pgbench load profile's probe, an independent probe reproduced: open loop at RATE/s
    over PROFILE_CONNECTIONS autocommit connections (probe i is due at start + i / RATE, taken by
    whichever connection is free, never "after the previous one"). Each probe SETs the five keys
    of a settled trade of a telegram id of its own (one MSET), INSERTs the trade, t0 =
    perf_counter() when the COMMIT returned; a listener thread on its own Redis connection,
    subscribed to __keyevent@<db>__:del, notes when the probe's portfolio: key was deleted. For
    the floor, the probe UNLINKs its five keys itself, pipelined, right after t0 (and the worker
    is stopped)."""

    TID_BASE = 1_000_000_000  # the probes' telegram ids, one per probe; the background's are 300,000 + user

    def __init__(self, connections):
        self.r = redis.Redis.from_url(REDIS_URL)
        self.db_index = self.r.connection_pool.connection_kwargs.get("db", 0)
        self.connections = connections
        # One PostgreSQL and one Redis connection per probe connection, kept over the runs.
        self.dbs = [connect() for _ in range(connections)]
        self.clients = [redis.Redis.from_url(REDIS_URL) for _ in range(connections)]
        self.next_tid = self.TID_BASE
        self.sql = (f"INSERT INTO public.trades ({TRADE_COLUMNS}) "
                    f"VALUES (%s, %s, '{TOKEN}', 'buy', 'manual', 1.5, 4200, %s, 'confirmed')")

    def close(self):
        for db in self.dbs:
            db.close()
        for r in self.clients:
            r.close()

    @staticmethod
    def keys(tid, wallet, tx_hash):
        p = PREFIX
        return [f"{p}wallet_balance:{wallet}", f"{p}portfolio:{tid}", f"{p}main_menu:{tid}",
                f"{p}user_state:{tid}", f"{p}tx:{tid}:{tx_hash}"]

    def run(self, count, rate, floor, delete_command="unlink"):
        base = self.next_tid
        self.next_tid += count
        portfolio = f"{PREFIX}portfolio:".encode()
        seen = {}
        ready = threading.Event()
        done = threading.Event()
        errors = []

        def listen():
            try:
                r = redis.Redis.from_url(REDIS_URL)
                ps = r.pubsub(ignore_subscribe_messages=True)
                ps.subscribe(f"__keyevent@{self.db_index}__:del")
                while ps.get_message(timeout=0.05) is not None:
                    pass
                ready.set()
                while not done.is_set():
                    m = ps.get_message(timeout=0.05)
                    if m is None:
                        continue
                    t = time.perf_counter()
                    if m["type"] == "message" and m["data"].startswith(portfolio):
                        tid = m["data"][len(portfolio):]
                        if tid.isdigit():
                            seen.setdefault(int(tid), t)
                ps.close()
            except Exception as e:  # reported by the main thread
                errors.append(e)
                ready.set()

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        committed = {}
        timings = {}  # tid: (due, sent late, MSET, INSERT + COMMIT), in seconds
        start_delays = []
        lock = threading.Lock()
        state = {"next": 0, "late": 0}
        interval = 1.0 / rate
        delete = delete_command.upper()

        def probe(k):
            db, r = self.dbs[k], self.clients[k]
            pipe = r.pipeline(transaction=False)
            try:
                while not done.is_set():
                    with lock:
                        i = state["next"]
                        if i >= count:
                            return
                        state["next"] += 1
                    slot = start + i * interval
                    now = time.perf_counter()
                    if slot > now:
                        time.sleep(slot - now)
                        now = time.perf_counter()
                    start_delays.append(now - slot)
                    if now - slot > interval:
                        with lock:
                            state["late"] += 1
                    tid = base + i
                    wallet = f"0xprobe{tid}"
                    tx_hash = f"0xpp{tid}"
                    keys = self.keys(tid, wallet, tx_hash)
                    r.mset({key: "cached" for key in keys})
                    t_set = time.perf_counter()
                    db.execute(self.sql, (tid, wallet, tx_hash), prepare=True)
                    t0 = time.perf_counter()
                    committed[tid] = t0
                    timings[tid] = (i * interval, now - slot, t_set - now, t0 - t_set)
                    if floor:
                        pipe.execute_command(delete, *keys)
                        pipe.execute()
            except Exception as e:  # reported by the main thread
                errors.append(e)
                done.set()

        threads = [threading.Thread(target=probe, args=(k,), daemon=True) for k in range(self.connections)]
        start = time.perf_counter() + 0.05
        try:
            for t in threads:
                t.start()
            # Joined with a timeout: the main thread must stay free for a Ctrl-C (Stop).
            for t in threads:
                while t.is_alive():
                    t.join(0.1)
            elapsed = time.perf_counter() - start
            if errors:
                raise errors[0]
            # Every probe gets MISS_SECONDS from its commit to be seen.
            deadline = time.perf_counter() + MISS_SECONDS
            while len(seen) < len(committed) and time.perf_counter() < deadline:
                time.sleep(0.01)
        finally:
            done.set()
            for t in threads:
                t.join(2)
            listener.join(2)
        lags, missed, negative, rows = [], 0, 0, []
        for tid, t0 in sorted(committed.items()):
            t = seen.get(tid)
            due, sent_late, mset, commit = timings[tid]
            lag = None if t is None or t - t0 > MISS_SECONDS else max(0.0, t - t0)
            rows.append((tid - base, f"{due * 1000:.1f}", f"{sent_late * 1000:.3f}", f"{mset * 1000:.3f}",
                         f"{commit * 1000:.3f}", "" if lag is None else f"{lag * 1000:.4f}"))
            if lag is None:
                missed += 1
                continue
            if t < t0:
                negative += 1  # deleted before the client saw its COMMIT return
            lags.append(lag)
        over = {f"over_{ms}ms": sum(1 for x in lags if x * 1000 > ms) + missed for ms in PROFILE_OVER_MS}
        return {
            "probes": count,
            "connections": self.connections,
            "seen": len(lags),
            "missed": missed,
            "deleted_before_commit_returned": negative,
            "rate_target": rate,
            "rate_achieved": round(count / elapsed, 1),
            # Probes sent more than one interval behind their schedule (every connection was busy).
            "late_slots": state["late"],
            "start_delay_ms": percentiles(start_delays),
            # The probe's own INSERT + COMMIT (the bot's transaction, as the probe saw it).
            "insert_commit_ms": percentiles([x[3] for x in timings.values()]),
            "lag_ms": percentiles(lags),
            # Probes whose key was deleted more than N ms after their COMMIT returned, or never (missed).
            **over,
        }, lags, rows


# ================================================================ phases

class Bench:
    def __init__(self):
        self.conn = connect()
        self.worker = Worker()
        self.single = RedisTarget(REDIS_URL, cluster=False)
        self.cluster = RedisTarget(REDIS_CLUSTER_URL, cluster=True) if REDIS_CLUSTER else None
        self.results = {"meta": self.meta(), "lag": {}, "lag_pgbench": {}, "write_path": {}, "write_path_row_only": {}, "write_path_parts": {}, "bot_latency": {}, "staleness": {}, "drain": {}, "soak": None,
                        # REDIS_CLUSTER=1: the worker's runs against the cluster, beside the single node's
                        # (results["lag"]["worker_*"], results["drain"]); ratios are cluster / single.
                        "cluster": None}
        if self.cluster:
            self.results["cluster"] = {"topology": self.cluster.describe(), "nodes": REDIS_CLUSTER_PORTS,
                                       "redis_version": self.cluster.client(0).info("server")["redis_version"],
                                       "lag": {}, "drain": {}}
        self.samples = {}

    def meta(self):
        conn = connect()
        settings = {}
        for name in ("server_version", "fsync", "synchronous_commit", "wal_sync_method", "full_page_writes",
                     "shared_buffers", "max_wal_size", "checkpoint_timeout", "track_commit_timestamp", "max_connections"):
            settings[name] = scalar(conn, "SELECT current_setting(%s)", (name,))
        conn.close()
        r = redis.Redis.from_url(REDIS_URL)

        def run(args):
            try:
                return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=30).stdout.strip()
            except Exception:
                return None

        return {
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "git_commit": run(["git", "rev-parse", "HEAD"]),
            "git_dirty": bool(run(["git", "status", "--porcelain", "--untracked-files=no"])),
            "host": {"cpus": os.cpu_count(), "kernel": os.uname().release, "machine": os.uname().machine,
                     "loadavg_at_start": os.getloadavg()},
            "postgres": settings,
            "redis_version": r.info("server")["redis_version"],
            "worker_binary": WORKER,
            "worker_binary_sha256": run(["sha256sum", WORKER]).split()[0] if run(["sha256sum", WORKER]) else None,
            "worker_built_by_bench": "WORKER_BIN" not in ENV,
            "worker_env": {k: ENV[k] for k in WORKER_VARS if k in ENV},
            "key_prefix": PREFIX,
            "knobs": {"PROBES": PROBES, "RATE": RATE, "BACKGROUND_RATE": BG_RATE, "BACKGROUND_CLIENTS": BG_CLIENTS,
                      "CLIENTS": CLIENTS, "PGBENCH_SECONDS": PGBENCH_SECONDS, "PGBENCH_REPEATS": PGBENCH_REPEATS,
                      "DRAIN_SIZES": DRAIN_SIZES, "DRAIN_CHUNK": DRAIN_CHUNK, "DRAIN_KEYS": DRAIN_KEYS, "SOAK_SECONDS": SOAK_SECONDS,
                      "LOAD_PROFILE": LOAD_PROFILE, "PROFILE_CONNECTIONS": PROFILE_CONNECTIONS,
                      "PROFILE_CLIENTS": PROFILE_CLIENTS, "PROFILE_USERS": PROFILE_USERS,
                      "SOAK_RATE": SOAK_RATE, "WRITE_PARTS": WRITE_PARTS, "PARTS_ROUNDS": PARTS_ROUNDS, "PARTS_SECONDS": PARTS_SECONDS,
                      "BOT_LATENCY_SECONDS": BOT_LATENCY_SECONDS,
                      "BOT_LATENCY_ROUNDS": BOT_LATENCY_ROUNDS, "SKIP": [k for k, v in SKIP.items() if v],
                      "STALENESS_SECONDS": STALENESS_SECONDS, "STALENESS_RATE": STALENESS_RATE,
                      "STALENESS_WRITERS": STALENESS_WRITERS, "STALENESS_REDELETE": STALENESS_REDELETE,
                      "STALENESS_SEED": STALENESS_SEED, "STALENESS_TAIL_MS": STALENESS_TAIL_MS,
                      "PG_SETTINGS": ENV.get("PG_SETTINGS", ""), "REDIS_CLUSTER": REDIS_CLUSTER},
        }

    def ensure_worker(self, phase, redis_url=REDIS_URL):
        """The worker running against `redis_url` (restarted if it runs against the other one),
        and nothing pending."""
        if self.worker.proc is not None and self.worker.redis_url != redis_url:
            self.stop_worker()
        if self.worker.proc is None:
            self.worker.start(phase, redis_url=redis_url)
            self.worker.wait_ready()
        wait_drained(self.conn)

    def stop_worker(self):
        self.worker.stop()

    # ------------------------------------------------------------ lag
    def lag(self):
        """The floor and the worker at RATE probes/s, at rest and with BACKGROUND_RATE; with
        REDIS_CLUSTER=1, right after each worker run the same run against the cluster ("cluster":
        results["cluster"]["lag"]["worker_<load>"], samples cluster_worker_<load>)."""
        probe = Probe(self.single)
        cluster_probe = Probe(self.cluster) if self.cluster else None
        loads = [("idle", 0)] + ([] if SKIP["BACKGROUND"] or BG_RATE == 0 else [("background", BG_RATE)])
        modes = ("floor", "worker") + (("cluster",) if self.cluster else ())
        for load, bg in loads:
            for mode in modes:
                name = f"{mode}_{load}"
                if mode == "cluster":
                    name = f"cluster_worker_{load}"
                    self.ensure_worker(f"lag-{name}", redis_url=REDIS_CLUSTER_URL)
                elif mode == "floor":
                    self.stop_worker()
                    if pending(self.conn):
                        # Events still pending (a floor phase leaves its own): the worker drains them, then stops.
                        self.ensure_worker(f"lag-{name}-predrain")
                        self.stop_worker()
                else:
                    self.ensure_worker(f"lag-{name}")
                settle(self.conn, name)
                say(f"lag: {name}: {PROBES} probes at {RATE}/s" + (f", {bg} settled trades/s in the background" if bg else "")
                    + (" (worker stopped, the probe deletes its own keys)" if mode == "floor" else "")
                    + (f" (the worker against the cluster, {len(self.cluster.masters)} masters)" if mode == "cluster" else ""))
                meter = Meter(self.worker, self.conn) if mode != "floor" else None
                bg_proc = None
                if bg:
                    seconds = math.ceil(PROBES / RATE) + 4
                    bg_proc, bg_log = pgbench(DB, BG_CLIENTS, seconds, rate=bg, label=f"pgbench-background-{name}")
                    time.sleep(2)
                try:
                    result, lags = (cluster_probe if mode == "cluster" else probe).run(
                        PROBES, RATE, floor=(mode == "floor"), delete_command=ENV.get("DELETE_COMMAND", "unlink"))
                finally:
                    if bg_proc is not None and bg_proc.poll() is None and _stopping:
                        terminate(bg_proc)
                if bg_proc is not None:
                    b = pgbench_result(bg_proc, bg_log, seconds + 30)
                    result["background"] = {"target_per_s": bg, "achieved_per_s": round(b["tps"], 1),
                                            "clients": BG_CLIENTS, "pgbench": b}
                else:
                    result["background"] = None
                if meter:
                    wait_drained(self.conn)
                    result["worker"] = meter.finish()
                result["mode"], result["load"] = mode, load
                # The machine may be shared: how busy it was is part of reading the figures.
                result["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
                if mode == "cluster":
                    self.samples[name] = lags
                    self.results["cluster"]["lag"][f"worker_{load}"] = result
                else:
                    self.samples[name] = lags
                    self.results["lag"][name] = result
                p = result["lag_ms"]
                say(f"lag: {name}: p50 {p['p50']} ms, p99 {p['p99']} ms, max {p['max']} ms, missed {result['missed']}"
                    + (f", background achieved {result['background']['achieved_per_s']}/s" if bg else ""))
        for load, _ in loads:
            floor = self.results["lag"].get(f"floor_{load}")
            worker = self.results["lag"].get(f"worker_{load}")
            if floor and worker:
                worker["ratio_to_floor"] = {
                    k: (round(worker["lag_ms"][k] / floor["lag_ms"][k], 2) if floor["lag_ms"][k] else None)
                    for k in worker["lag_ms"]}
            cluster = self.results["cluster"] and self.results["cluster"]["lag"].get(f"worker_{load}")
            if cluster and worker:
                cluster["ratio_to_single"] = {
                    k: (round(cluster["lag_ms"][k] / worker["lag_ms"][k], 2) if worker["lag_ms"][k] and cluster["lag_ms"][k] is not None else None)
                    for k in cluster["lag_ms"]}

    # ------------------------------------------------------------ lag, the pgbench load profile
    def lag_pgbench(self):
        """The pgbench load profile (LOAD_PROFILE=pgbench or both): an independent probe
        reproduced. PROBES probes at RATE/s over PROFILE_CONNECTIONS connections (ProfileProbe),
        at rest and with `pgbench -n -M prepared -c PROFILE_CLIENTS -j 2 --rate BACKGROUND_RATE`
        inserting one settled trade per transaction for PROFILE_USERS other users (keys never
        set), started a second before the probes; each as the in-app floor and with the worker,
        back to back. Results in results["lag_pgbench"], samples as pgbench_<mode>_<load>."""
        probe = ProfileProbe(PROFILE_CONNECTIONS)
        r = redis.Redis.from_url(REDIS_URL)
        notify = r.config_get("notify-keyspace-events").get("notify-keyspace-events", "")
        # E: keyevent channels; g: DEL/UNLINK. Put back as it was at the end.
        r.config_set("notify-keyspace-events", "Eg")
        out = self.results["lag_pgbench"]
        loads = [("idle", 0)] + ([] if SKIP["BACKGROUND"] or BG_RATE == 0 else [("background", BG_RATE)])
        samples = open(os.path.join(RESULTS, "lag-pgbench-samples.csv"), "w")
        samples.write("phase,probe,due_ms,sent_late_ms,mset_ms,insert_commit_ms,lag_ms\n")
        try:
            for load, bg in loads:
                for mode in ("floor", "worker"):
                    name = f"{mode}_{load}"
                    label = f"lag-pgbench-{mode}-{load}"
                    if mode == "floor":
                        self.stop_worker()
                        if pending(self.conn):
                            # Events still pending (a floor run leaves its own): the worker drains them, then stops.
                            self.ensure_worker(f"{label}-predrain")
                            self.stop_worker()
                    else:
                        self.ensure_worker(label)
                    settle(self.conn, label)
                    # The floor holds W, as a polling worker does: writers skip the NOTIFY nobody
                    # listens to (in the in-app design nothing notifies), so its background is the
                    # worker's (unheld, every commit notifies and serializes: far below the rate).
                    hold = hold_polling_lock() if mode == "floor" else None
                    say(f"lag, pgbench profile: {name}: {PROBES} probes at {RATE}/s over {PROFILE_CONNECTIONS} connections"
                        + (f", pgbench -c {PROFILE_CLIENTS} --rate {bg} over {PROFILE_USERS} other users" if bg else ", at rest")
                        + (" (worker stopped, W held, the probe deletes its own keys)" if mode == "floor" else ""))
                    meter = Meter(self.worker, self.conn) if mode == "worker" else None
                    bg_proc = None
                    if bg:
                        # A second before the probes, to a second after the last one is due.
                        seconds = math.ceil(PROBES / RATE) + 2
                        bg_proc, bg_log = pgbench(DB, PROFILE_CLIENTS, seconds, rate=bg, label=f"pgbench-{label}",
                                                  script=PROFILE_SCRIPT, defines={"users": PROFILE_USERS})
                        time.sleep(1)
                    try:
                        result, lags, rows = probe.run(PROBES, RATE, floor=(mode == "floor"),
                                                       delete_command=ENV.get("DELETE_COMMAND", "unlink"))
                        if bg_proc is not None:
                            b = pgbench_result(bg_proc, bg_log, seconds + 30)
                    finally:
                        if bg_proc is not None and bg_proc.poll() is None and _stopping:
                            terminate(bg_proc)
                        if hold is not None:
                            hold.close()
                    if bg_proc is not None:
                        result["background"] = {"target_per_s": bg, "achieved_per_s": round(b["tps"], 1),
                                                "clients": PROFILE_CLIENTS, "threads": min(PROFILE_CLIENTS, 2),
                                                "users": PROFILE_USERS, "pgbench": b}
                    else:
                        result["background"] = None
                    result["w_held"] = hold is not None
                    samples.writelines(f"{name},{','.join(str(x) for x in row)}\n" for row in rows)
                    if meter:
                        wait_drained(self.conn)
                        result["worker"] = meter.finish()
                    result["mode"], result["load"] = mode, load
                    result["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
                    self.samples[f"pgbench_{name}"] = lags
                    out[name] = result
                    p = result["lag_ms"]
                    say(f"lag, pgbench profile: {name}: p50 {p['p50']} ms, p99 {p['p99']} ms, p99.9 {p['p99.9']} ms, "
                        f"max {p['max']} ms, over 10 ms {result['over_10ms']}, over 100 ms {result['over_100ms']}, "
                        f"missed {result['missed']}" + (f", background achieved {result['background']['achieved_per_s']}/s" if bg else ""))
        finally:
            samples.close()
            r.config_set("notify-keyspace-events", notify)
            probe.close()
        for load, _ in loads:
            floor, worker = out.get(f"floor_{load}"), out.get(f"worker_{load}")
            if floor and worker:
                worker["ratio_to_floor"] = {
                    k: (round(worker["lag_ms"][k] / floor["lag_ms"][k], 2) if floor["lag_ms"][k] else None)
                    for k in worker["lag_ms"]}

    # ------------------------------------------------------------ write path
    def compare_with_base(self, phase, variant, base_conn, after_run=None):
        """pgbench on the bot schema only (0001) and on `variant` (every migration), PGBENCH_REPEATS
        runs each interleaved ABBA so drift cancels out, for each of CLIENTS. Stores
        {clients: {tps_without_invalidation, tps_<variant>, ratio, runs}} in results[phase]."""
        label = phase.replace("_", " ")
        for clients in CLIENTS:
            runs = {"without_invalidation": [], variant: []}
            order = []
            for r in range(PGBENCH_REPEATS):
                pair = [("without_invalidation", BASE_DB, base_conn), (variant, DB, self.conn)]
                order += pair if r % 2 == 0 else pair[::-1]
            for i, (name, url, conn) in enumerate(order):
                say(f"{label}: {clients} clients, {name.replace('_', ' ')}, {PGBENCH_SECONDS} s")
                runs[name].append(checkpointed_pgbench(conn, url, clients, PGBENCH_SECONDS,
                                                       f"pgbench-{phase.replace('_', '-')}-{clients}c-{i + 1}-{name}"))
                runs[name][-1]["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
                say(f"{label}: {clients} clients, {name.replace('_', ' ')}: {runs[name][-1]['tps']:.0f} tps")
                if name == variant and after_run:
                    after_run()
            base = sum(r["tps"] for r in runs["without_invalidation"]) / len(runs["without_invalidation"])
            other = sum(r["tps"] for r in runs[variant]) / len(runs[variant])
            self.results[phase][str(clients)] = {
                "clients": clients,
                "tps_without_invalidation": round(base, 1),
                f"tps_{variant}": round(other, 1),
                "ratio": round(other / base, 3),
                "runs": runs,
            }
            say(f"{label}: {clients} clients: ratio {other / base:.3f} ({other:.0f} / {base:.0f} tps)")

    def write_path(self):
        self.ensure_worker("write-path")
        base_conn = connect(BASE_DB)
        meter = Meter(self.worker, self.conn)
        try:
            self.compare_with_base("write_path", "with_invalidation", base_conn, after_run=lambda: wait_drained(self.conn))
        finally:
            base_conn.close()
        wait_drained(self.conn)
        self.results["write_path"]["worker"] = meter.finish()

    # ------------------------------------------------------------ event row only
    def write_path_row_only(self):
        """What the event row alone costs the bot: all migrations, no worker, and W held by an
        idle session, so every writer skips its NOTIFY and nothing acknowledges. The difference
        to the write-path phase is what the worker's own work (polls, acknowledgements, Redis)
        costs the bot on the same machine."""
        self.stop_worker()
        base_conn = connect(BASE_DB)
        hold = hold_polling_lock()
        try:
            self.compare_with_base("write_path_row_only", "event_row_only", base_conn)
        finally:
            hold.close()
            base_conn.close()
        # The rows written meanwhile are a backlog: drained before the next phase measures anything.
        self.ensure_worker("write-path-row-only-drain")

    # ------------------------------------------------------------ the bot's latency
    def bot_latency(self):
        """What the bot feels at the rates it runs at, not at saturation: how long each of its
        transactions (INSERT + COMMIT) takes at RATE and at BACKGROUND_RATE trades/s, on 0001
        only; with every migration, no worker and W held (the trigger and its rows: what any
        design with an event log costs); and with every migration and the worker running (at RATE
        it is notified, so every commit NOTIFYs and wakes it; at BACKGROUND_RATE it polls, and
        none does). BOT_LATENCY_ROUNDS rounds, the order reversed every other round; each
        variant's percentiles are over all its transactions."""
        variants = [("without_invalidation", BASE_DB), ("event_row_only", DB), ("with_invalidation", DB)]
        n = 0
        for rate in sorted({RATE, BG_RATE} - {0}):
            durations = {name: [] for name, _ in variants}
            for r in range(BOT_LATENCY_ROUNDS):
                for name, url in (variants if r % 2 == 0 else variants[::-1]):
                    n += 1
                    label = f"bot-latency-{rate}-{n}-{name.replace('_', '-')}"
                    if name == "with_invalidation":
                        self.ensure_worker(label)
                    else:
                        self.stop_worker()
                    hold = hold_polling_lock() if name == "event_row_only" else None
                    try:
                        say(f"bot latency: {rate} trades/s, {name.replace('_', ' ')}, {BOT_LATENCY_SECONDS} s")
                        checkpointed_pgbench(self.conn, url, BG_CLIENTS, BOT_LATENCY_SECONDS, f"pgbench-{label}", rate=rate,
                                             transaction_log=os.path.join(TMP, label))
                        durations[name] += transaction_durations(os.path.join(TMP, label))
                    finally:
                        if hold is not None:
                            hold.close()
            result = {"rate": rate, "clients": BG_CLIENTS, "transactions": {k: len(v) for k, v in durations.items()}}
            base = percentiles(durations["without_invalidation"])
            for name, _ in variants:
                q = percentiles(durations[name])
                result[name + "_ms"] = q
                if name != "without_invalidation":
                    result[name + "_added_ms"] = {k: round(q[k] - base[k], 4) for k in q}
            self.results["bot_latency"][str(rate)] = result
            say(f"bot latency: {rate} trades/s: p50 {base['p50']} ms; event row only {result['event_row_only_ms']['p50']} ms; "
                f"with the worker {result['with_invalidation_ms']['p50']} ms")
        # What the runs without a worker left pending: drained before the next phase.
        self.ensure_worker("bot-latency-drain")

    # ------------------------------------------------------------ write-path parts
    def write_path_parts(self):
        """Where the bot's cost comes from (WRITE_PARTS=1): the shipped trigger taken apart, each
        part in a database of its own (0001 + every migration + the part's SQL), no worker, W
        held so no writer notifies. Each part's run sits between two runs on 0001 only, and is
        compared with their mean: on a shared machine whose speed drifts by +-20 % within
        minutes, only neighbours in time compare. The median of PARTS_ROUNDS such ratios."""
        self.stop_worker()
        admin_url = DB.rsplit("/", 1)[0] + "/postgres"
        admin = connect(admin_url)
        holds = []
        urls = {}
        try:
            for name, _, sql in PARTS:
                db = f"parts_{name}"
                admin.execute(f"DROP DATABASE IF EXISTS {db}")
                admin.execute(f"CREATE DATABASE {db}")
                urls[name] = DB.rsplit("/", 1)[0] + "/" + db
                with open(os.path.join(RESULTS, "migrate.log"), "a") as log:
                    subprocess.run([WORKER, "migrate", "up", "--migrations-dir", os.path.join(ROOT, "migrations")],
                                   env=dict(ENV, DATABASE_URL=urls[name]), check=True, stdout=log, stderr=subprocess.STDOUT)
                if sql:
                    subprocess.run([os.path.join(PG_BIN, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", os.path.join(PARTS_DIR, sql),
                                    urls[name]], check=True, stdout=subprocess.DEVNULL)
                holds.append(hold_polling_lock(urls[name]))

            def tps(url, clients, label):
                return checkpointed_pgbench(admin, url, clients, PARTS_SECONDS, label)["tps"]

            for clients in CLIENTS:
                runs = {name: [] for name, _, _ in PARTS}
                n = 0
                previous = tps(BASE_DB, clients, f"pgbench-parts-{clients}c-{n}-base")
                for r in range(PARTS_ROUNDS):
                    order = PARTS if r % 2 == 0 else PARTS[::-1]
                    for name, _, _ in order:
                        n += 1
                        t = tps(urls[name], clients, f"pgbench-parts-{clients}c-{n}-{name}")
                        following = tps(BASE_DB, clients, f"pgbench-parts-{clients}c-{n}-base")
                        runs[name].append({"tps": round(t, 1), "base_tps_around": [round(previous, 1), round(following, 1)],
                                           "ratio": round(t / ((previous + following) / 2), 3)})
                        say(f"write-path parts: {clients} clients, {name}: {runs[name][-1]['ratio']:.3f} of 0001 only")
                        previous = following
                self.results["write_path_parts"][str(clients)] = {
                    name: {"adds": adds, "median_ratio": statistics.median(x["ratio"] for x in runs[name]), "runs": runs[name]}
                    for name, adds, _ in PARTS}
        finally:
            for hold in holds:
                hold.close()
            for name, _, _ in PARTS:
                admin.execute(f"DROP DATABASE IF EXISTS parts_{name}")
            admin.close()

    # ------------------------------------------------------------ staleness
    def staleness(self):
        """The cache-aside race, counted (see staleness.py): the same writes, schedule and fill
        delays (one seed) against the worker without a second deletion (REDELETE_AFTER=0), the
        worker with it (STALENESS_REDELETE), and the in-app design (no worker: the writer deletes
        its own keys right after its COMMIT). Stale keys 3 s after their write, per million
        writes, by when the racing fill landed; the fresh fills lost (extra misses); the
        readers' GET latency."""
        window = staleness.parse_duration(STALENESS_REDELETE)
        check = staleness.check_seconds(window, STALENESS_TAIL_MS)
        count = STALENESS_SECONDS * STALENESS_RATE
        delays = staleness.fill_delays(count, STALENESS_SEED, STALENESS_TAIL_MS)
        variants = [("worker_no_redelete", "0"), ("worker_redelete", STALENESS_REDELETE), ("in_app", None)]
        race = staleness.Race(DB, REDIS_URL, PREFIX, TRADE_COLUMNS, TOKEN, lambda: _stopping)
        r = redis.Redis.from_url(REDIS_URL)
        notify = r.config_get("notify-keyspace-events").get("notify-keyspace-events", "")
        # K: keyspace channels; $: SET; g: DEL/UNLINK. Put back as it was at the end.
        r.config_set("notify-keyspace-events", "K$g")
        out = {"window_seconds": window, "check_seconds": check, "seed": STALENESS_SEED, "tail_ms": STALENESS_TAIL_MS,
               "redelete_after": STALENESS_REDELETE, "variants": {},
               "about": {
                   "stale_per_million_writes": "keys still holding the value read before the COMMIT check_seconds after "
                                               "the write; every write is raced by one reader, so per million raced writes",
                   "by_fill": "when the racing SET landed (Redis's keyspace notifications, so in Redis's order): before "
                              "the first deletion (the deletion of the event's tx key), within first deletion + "
                              "window_seconds, after it; the same window in every variant",
                   "fresh_fills_lost_per_write": "fills by a reader that read after the COMMIT (main_menu:{tid}, same "
                                                 "delays) gone at the check; extra_misses_per_write: minus the "
                                                 "REDELETE_AFTER=0 run's",
                   "fresh_fills_deleted_again_per_write": "fresh fills that landed after the first deletion and were "
                                                          "deleted later: the misses the second deletion causes",
                   "first_deletion_ms": "COMMIT returned to the listener seeing the deletion (includes the Python "
                                        "listener's own delay; the lag phase measures the lag itself)",
                   "reader_get_ms": "the readers' GETs (both miss), Python client included",
                   "worker_refilled_keys_total": "the worker's own count (/metrics) of keys its second deletion removed",
               }}
        self.results["staleness"] = out
        samples = open(os.path.join(RESULTS, "staleness-samples.csv"), "w")
        samples.write("variant,write,planned_delay_ms,fill_delay_ms,first_deletion_ms,bucket,stale,fresh_lost,second_deletion_after_first_ms\n")
        try:
            for number, (name, redelete) in enumerate(variants):
                self.stop_worker()
                if pending(self.conn):
                    self.ensure_worker(f"staleness-{name}-predrain")
                    self.stop_worker()
                writes = race.prepare(self.conn, number, count, STALENESS_RATE, delays)
                settle(self.conn, f"staleness-{name}")
                metrics_port = None
                if redelete is not None:
                    metrics_port = free_port()
                    self.worker.start(f"staleness-{name}", env={"REDELETE_AFTER": redelete,
                                                                "METRICS_ADDRESS": f"127.0.0.1:{metrics_port}"})
                    self.worker.wait_ready()
                say(f"staleness: {name}: {count} settled trades at {STALENESS_RATE}/s, each raced by a reader "
                    + (f"(worker, REDELETE_AFTER={redelete})" if redelete is not None else "(no worker: the writer deletes its own keys)"))
                meter = Meter(self.worker, self.conn) if redelete is not None else None
                result, rows = race.run(writes, STALENESS_RATE, STALENESS_WRITERS, in_app=(redelete is None),
                                        window=window, check=check, delete_command=ENV.get("DELETE_COMMAND", "unlink"))
                result["variant"] = name
                result["redelete_after"] = redelete
                if meter:
                    wait_drained(self.conn)
                    result["worker"] = meter.finish()
                    result["worker_refilled_keys_total"] = scrape_counter(metrics_port, "cache_invalidator_refilled_keys_total")
                    self.stop_worker()
                result["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
                samples.writelines(f"{name},{','.join(str(x) for x in row)}\n" for row in rows)
                out["variants"][name] = result
                b = result["by_fill"]
                say(f"staleness: {name}: {result['stale_keys']} stale keys of {result['writes']} writes "
                    f"({result['stale_per_million_writes']} per million; fills before the first deletion "
                    f"{b['before_first_deletion']['fills']}, within the window {b['within_window']['fills']}, after "
                    f"{b['after_window']['fills']}), fresh fills lost {result['fresh_fills_lost']}, "
                    f"second deletions seen {result['second_deletions_seen']}")
            base = out["variants"].get("worker_no_redelete")
            for name, v in out["variants"].items():
                if base and name != "worker_no_redelete":
                    v["extra_misses_per_write"] = round(v["fresh_fills_lost_per_write"] - base["fresh_fills_lost_per_write"], 4)
        finally:
            samples.close()
            r.config_set("notify-keyspace-events", notify)
        # The in-app run's events: drained before the next phase.
        self.ensure_worker("staleness-drain")

    # ------------------------------------------------------------ drain
    def drain(self, size, target=None):
        """`target`: the single node (default), or the cluster (REDIS_CLUSTER=1: the same backlog
        again, its keys SET on their masters, the worker given a node of the cluster; stored in
        results["cluster"]["drain"])."""
        target = target or self.single
        phase = f"drain-cluster-{size}" if target.cluster else f"drain-{size}"
        self.stop_worker()
        wait_drained_by_sql = pending(self.conn)
        if wait_drained_by_sql:
            self.ensure_worker(f"{phase}-predrain")
            self.stop_worker()
        settle(self.conn, phase)
        first = scalar(self.conn, "SELECT COALESCE(max(id), 0) FROM cache_invalidation.events") + 1
        say(f"drain{' (cluster)' if target.cluster else ''}: writing a backlog of {size} settled trades of {min(size, DRAIN_USERS)} users "
            f"(worker stopped, {DRAIN_CHUNK} per transaction)")
        t = time.perf_counter()
        written = 0
        while written < size:
            n = min(DRAIN_CHUNK, size - written)
            self.conn.execute(
                f"INSERT INTO public.trades ({TRADE_COLUMNS}) "
                f"SELECT 200000 + g %% {DRAIN_USERS}, '0xdrain' || (g %% {DRAIN_USERS}), '{TOKEN}', "
                f"CASE WHEN g %% 4 = 0 THEN 'sell' ELSE 'buy' END, 'auto', 1.5, 4200, "
                f"'0xd{size}_' || g, CASE WHEN g %% 10 = 0 THEN 'failed' ELSE 'confirmed' END "
                f"FROM generate_series(%s::int8, %s::int8) AS g", (written + 1, written + n))
            written += n
        write_seconds = time.perf_counter() - t
        last = scalar(self.conn, "SELECT max(id) FROM cache_invalidation.events")
        backlog = pending(self.conn)
        if last - first + 1 != size or backlog != size:
            raise RuntimeError(f"expected a backlog of {size} events (ids {first}..{last}), found {backlog} pending")
        keys, notify = self.set_drain_keys(size, target) if DRAIN_KEYS else (None, None)
        settle(self.conn, f"{phase}-written")
        say(f"drain{' (cluster)' if target.cluster else ''}: {size} events written in {write_seconds:.1f} s"
            + (f", their {keys['distinct_keys']} keys set in {keys['set_seconds']:.1f} s" if keys else " (no keys set)")
            + (f" on {len(target.masters)} masters" if keys and target.cluster else "")
            + "; starting the worker")
        poll = self.conn.cursor()
        queue = has_queue(self.conn)
        done_sql = ("SELECT NOT EXISTS (SELECT 1 FROM cache_invalidation.pending WHERE id = %s)" if queue
                    else "SELECT processed_at IS NOT NULL FROM cache_invalidation.events WHERE id = %s")
        started_at = scalar(self.conn, "SELECT clock_timestamp()")
        t0 = time.perf_counter()
        self.worker.start(phase, redis_url=target.url)
        meter = Meter(self.worker, self.conn, fresh=True)
        self.worker.wait_ready(60)
        # The drain pass goes in id order, so the newest event acknowledged means the pass is
        # through; a primary-key lookup is cheap enough to poll every 20 ms (count(*) is not).
        last_polls = 0
        while True:
            last_polls += 1
            if scalar(poll, done_sql, (last,)):
                t1 = time.perf_counter()
                done_at = scalar(poll, "SELECT clock_timestamp()")
                if pending(self.conn) == 0:
                    break
            if self.worker.proc.poll() is not None:
                raise RuntimeError(f"the worker exited during the drain; see {self.worker.log_path}")
            if time.perf_counter() - t0 > 1800:
                raise RuntimeError("the drain took more than 30 minutes")
            time.sleep(0.02)
        external = t1 - t0
        if queue:
            # From the worker's first acknowledgement record of the phase (it records before its
            # first acknowledgement, so after the first batch's deletion) to when this poll saw
            # the last event acknowledged.
            own = scalar(self.conn, "SELECT extract(epoch FROM %s::timestamptz - min(at))::float8 "
                                    "FROM cache_invalidation.acknowledged WHERE at >= %s", (done_at, started_at))
        else:
            own = scalar(self.conn, "SELECT extract(epoch FROM max(processed_at) - min(processed_at))::float8 "
                                    "FROM cache_invalidation.events WHERE id BETWEEN %s AND %s", (first, last))
        w = meter.finish(events=size)
        if keys:
            keys["left"], left_by_master = self.count_drain_keys(size, target)
            keys["left_by_master"] = left_by_master
            keys["dbsize_after_by_master"] = {f"{h}:{p}": r.dbsize() for (h, p), r in zip(target.masters, target.clients())}
            target.config_set("notify-keyspace-events", notify)
        result = {
            "redis": target.label,
            "events": size,
            # With keys: every event's keys were SET before the worker started (keys), and those
            # still there once the last event was acknowledged are keys.left (must be 0).
            "with_keys": DRAIN_KEYS,
            "users": min(size, DRAIN_USERS),
            "keys": keys,
            "write_seconds": round(write_seconds, 2),
            "write_events_per_s": round(size / write_seconds),
            "external_seconds": round(external, 3),
            "external_events_per_s": round(size / external),
            "worker_seconds": round(own, 3),
            "worker_events_per_s": round(size / own) if own else None,
            "polls": last_polls,
            "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
            "worker": w,
            "log": os.path.basename(self.worker.log_path),
        }
        if target.cluster:
            single = self.results["drain"].get(str(size))
            if single:
                result["ratio_to_single"] = {
                    "external_events_per_s": round(result["external_events_per_s"] / single["external_events_per_s"], 2),
                    "worker_events_per_s": (round(result["worker_events_per_s"] / single["worker_events_per_s"], 2)
                                            if result["worker_events_per_s"] and single["worker_events_per_s"] else None)}
            self.results["cluster"]["drain"][str(size)] = result
        else:
            self.results["drain"][str(size)] = result
        say(f"drain{' (cluster)' if target.cluster else ''}: {size} events{' with keys' if keys else ', keyless'}: {result['external_events_per_s']}/s from start "
            f"(worker's own: {result['worker_events_per_s']}/s), peak RSS {w['peak_rss_kb'] / 1024:.1f} MB, "
            f"CPU {w['cpu_seconds_per_1000_events']} s per 1000 events"
            + (f"; keys left {keys['left']} of {keys['distinct_keys']}" if keys else "")
            + (f" (by master: {keys['left_by_master']})" if keys and target.cluster else ""))

    @staticmethod
    def drain_keys(size, chunk=10_000):
        """The keys of the backlog's events as the default rules render them from the trigger's
        payload (the INSERT ... SELECT of drain(): user u = g % DRAIN_USERS, telegram id 200000 + u,
        wallet 0xdrain<u>, tx hash 0xd<size>_<g>; no sell_id, so no temp_sell_data key), each
        distinct key once, in lists of about `chunk`: first the four per-user keys of every user,
        then every trade's tx key."""
        p = PREFIX
        users = sorted({g % DRAIN_USERS for g in range(1, min(size, DRAIN_USERS) + 1)})
        out = []
        for u in users:
            tid = 200000 + u
            out += [f"{p}wallet_balance:0xdrain{u}", f"{p}portfolio:{tid}", f"{p}main_menu:{tid}", f"{p}user_state:{tid}"]
            if len(out) >= chunk:
                yield out
                out = []
        for g in range(1, size + 1):
            out.append(f"{p}tx:{200000 + g % DRAIN_USERS}:0xd{size}_{g}")
            if len(out) >= chunk:
                yield out
                out = []
        if out:
            yield out

    def set_drain_keys(self, size, target):
        """SETs every key of the backlog, keyspace notifications off until the check (a drain
        deleting keys would otherwise publish one per key; the lag phases turn them on); returns
        what was set, and the setting to put back after the check. The single node: pipelined
        MSETs of 10,000 keys. The cluster: the keys grouped by slot (chunks of 160,000 keys, ~10
        per slot), one MSET per slot on the slot's master, pipelined per master."""
        notify = target.config_get("notify-keyspace-events")
        target.config_set("notify-keyspace-events", "")
        t = time.perf_counter()
        distinct = 0
        if target.cluster:
            clients = target.clients()
            per_master = [0] * len(clients)
            for chunk in self.drain_keys(size, chunk=160_000):
                pipes = [r.pipeline(transaction=False) for r in clients]
                for (node, _), keys in target.by_slot(chunk).items():
                    pipes[node].mset(dict.fromkeys(keys, "cached"))
                    per_master[node] += len(keys)
                for pipe in pipes:
                    pipe.execute()
                distinct += len(chunk)
            set_by_master = {f"{h}:{p}": n for (h, p), n in zip(target.masters, per_master)}
        else:
            r = target.client(0)
            pipe = r.pipeline(transaction=False)
            for n, chunk in enumerate(self.drain_keys(size)):
                pipe.mset(dict.fromkeys(chunk, "cached"))
                distinct += len(chunk)
                if n % 10 == 9:
                    pipe.execute()
            pipe.execute()
            set_by_master = None
        set_seconds = time.perf_counter() - t
        present, present_by_master = self.count_drain_keys(size, target)
        if present != distinct:
            raise RuntimeError(f"drain: {distinct} keys set, but {present} of them are in Redis ({target.label})")
        return {"distinct_keys": distinct, "present_before": present, "set_seconds": round(set_seconds, 2),
                "set_by_master": set_by_master, "left": None}, notify

    def count_drain_keys(self, size, target):
        """How many of the backlog's keys are in Redis (EXISTS, pipelined; on a cluster one EXISTS
        per slot on its master): (total, {master: count}) (the single node: {} by master)."""
        clients = target.clients()
        per_master = [0] * len(clients)
        for chunk in self.drain_keys(size, chunk=160_000 if target.cluster else 10_000):
            pipes = [r.pipeline(transaction=False) for r in clients]
            groups = target.by_slot(chunk)
            for (node, _), keys in groups.items():
                pipes[node].exists(*keys)
            for node, pipe in enumerate(pipes):
                per_master[node] += sum(pipe.execute())
        by_master = {f"{h}:{p}": n for (h, p), n in zip(target.masters, per_master)} if target.cluster else {}
        return sum(per_master), by_master

    # ------------------------------------------------------------ soak
    def soak(self):
        self.stop_worker()
        self.ensure_worker("soak")
        settle(self.conn, "soak")
        say(f"soak: {SOAK_SECONDS} s at {SOAK_RATE} settled trades/s, RSS sampled every {SOAK_SAMPLE} s")
        meter = Meter(self.worker, self.conn)
        proc, log = pgbench(DB, BG_CLIENTS, SOAK_SECONDS, rate=SOAK_RATE, label="pgbench-soak")
        samples = []
        t0 = time.perf_counter()
        try:
            while proc.poll() is None:
                m = proc_memory_kb(self.worker.pid)
                samples.append({"t": round(time.perf_counter() - t0, 1), "rss_kb": m["VmRSS"],
                                "anon_kb": m.get("RssAnon"), "file_kb": m.get("RssFile"),
                                "cpu_s": round(proc_cpu_seconds(self.worker.pid) - meter.cpu0, 2)})
                time.sleep(SOAK_SAMPLE)
        finally:
            if proc.poll() is None and _stopping:
                terminate(proc)
        b = pgbench_result(proc, log, 60)
        wait_drained(self.conn)
        def first_and_last_tenth(values):
            """The medians of the first and of the last tenth of the samples."""
            tenth = max(1, len(values) // 10)
            return sorted(values[:tenth])[tenth // 2], sorted(values[-tenth:])[tenth // 2]

        rss = [s["rss_kb"] for s in samples]
        early, late = first_and_last_tenth(rss)
        growth = late - early
        # RSS is mostly the binary's own pages (RssFile, ~22-25 MB of the static binary, touched
        # as code paths first run); the heap is RssAnon, where a per-event leak would show.
        anon = [s["anon_kb"] for s in samples if s["anon_kb"] is not None]
        anon_early, anon_late = first_and_last_tenth(anon) if len(anon) == len(rss) else (None, None)
        self.results["soak"] = {
            "seconds": SOAK_SECONDS, "rate_target": SOAK_RATE, "rate_achieved": round(b["tps"], 1),
            "rss_kb_first_tenth_median": early, "rss_kb_last_tenth_median": late, "rss_kb_max": max(rss),
            "rss_growth_kb": growth,
            "anon_kb_first_tenth_median": anon_early, "anon_kb_last_tenth_median": anon_late,
            "anon_kb_max": max(anon) if anon else None,
            # Flat: the last tenth within 1 MB or 5 % of the first tenth.
            "flat": growth <= max(1024, early * 0.05),
            "samples": samples, "worker": meter.finish(), "pgbench": b,
        }
        say(f"soak: RSS {early / 1024:.1f} MB -> {late / 1024:.1f} MB (max {max(rss) / 1024:.1f} MB), "
            f"heap (RssAnon) {anon_early} -> {anon_late} kB, {b['tps']:.0f} trades/s")

    # ------------------------------------------------------------ all
    def run(self):
        try:
            if not SKIP["LAG"] and LOAD_PROFILE in ("standard", "both"):
                self.lag()
            if not SKIP["LAG"] and LOAD_PROFILE in ("pgbench", "both"):
                self.lag_pgbench()
            if not SKIP["WRITE"]:
                self.write_path()
            if not SKIP["ROW_ONLY"]:
                self.write_path_row_only()
            if not SKIP["BOT_LATENCY"]:
                self.bot_latency()
            if WRITE_PARTS:
                self.write_path_parts()
            if not SKIP["STALENESS"]:
                self.staleness()
            if not SKIP["DRAIN"]:
                for size in DRAIN_SIZES:
                    self.drain(size)
                    if self.cluster:
                        self.drain(size, self.cluster)
            if SOAK_SECONDS > 0:
                self.soak()
        finally:
            try:
                self.stop_worker()
            finally:
                self.results["meta"]["worker_runs"] = self.worker.runs
                self.results["meta"]["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")


# ================================================================ report

TARGETS = []


def targets(res):
    out = []

    def add(name, target, value, ok, unit=""):
        out.append({"target": name, "limit": target, "value": value, "unit": unit,
                    "met": None if value is None else bool(ok)})

    lag = res["lag"]
    w = lag.get("worker_idle")
    add(f"lag p50 at {RATE}/s", "<= 0.30 ms", w and w["lag_ms"]["p50"], w and w["lag_ms"]["p50"] <= 0.30, "ms")
    add(f"lag p99 at {RATE}/s", "<= 1.0 ms", w and w["lag_ms"]["p99"], w and w["lag_ms"]["p99"] <= 1.0, "ms")
    wb = lag.get("worker_background")
    add(f"lag p99 at {RATE}/s + {BG_RATE}/s background", "<= 2.0 ms", wb and wb["lag_ms"]["p99"], wb and wb["lag_ms"]["p99"] <= 2.0, "ms")
    lp = res.get("lag_pgbench") or {}
    fb, wb = lp.get("floor_background"), lp.get("worker_background")
    qb = wb and wb.get("ratio_to_floor")
    if wb:
        add("pgbench profile, bg: lag p99 / floor's", "<= 1.25", qb and qb["p99"], qb and qb["p99"] is not None and qb["p99"] <= 1.25, "x")
        add("pgbench profile, bg: lag p99", "<= 2.0 ms", wb["lag_ms"]["p99"], wb["lag_ms"]["p99"] is not None and wb["lag_ms"]["p99"] <= 2.0, "ms")
        add("pgbench profile, bg: lag p99.9 / floor's", "<= 2.0", qb and qb["p99.9"], qb and qb["p99.9"] is not None and qb["p99.9"] <= 2.0, "x")
        add("pgbench profile, bg: probes over 50 ms", "= 0", wb["over_50ms"], wb["over_50ms"] == 0)
    wi = lp.get("worker_idle")
    qi = wi and wi.get("ratio_to_floor")
    if wi:
        add("pgbench profile, at rest: lag p50 / floor's", "<= 1.0", qi and qi["p50"], qi and qi["p50"] is not None and qi["p50"] <= 1.0, "x")
        add("pgbench profile, at rest: lag p99 / floor's", "<= 1.0", qi and qi["p99"], qi and qi["p99"] is not None and qi["p99"] <= 1.0, "x")
    for size, d in res["drain"].items():
        kind = "with keys" if d.get("with_keys") else "keyless"
        add(f"drain rate, {int(size):,} backlog ({kind}, external)", ">= 100,000 events/s", d["external_events_per_s"],
            d["external_events_per_s"] >= 100_000, "events/s")
        if d.get("keys"):
            add(f"keys left after the {int(size):,} drain", "= 0", d["keys"]["left"], d["keys"]["left"] == 0)
    for clients, wp in res["write_path"].items():
        if clients == "worker":
            continue
        add(f"write-path ratio, {clients} clients", ">= 0.80", wp["ratio"], wp["ratio"] >= 0.80)
    big = res["drain"].get("1000000")
    rss = big and round(big["worker"]["peak_rss_kb"] / 1024, 1)
    add("worker peak RSS, 1,000,000 backlog", "<= 32 MB", rss, big and rss <= 32, "MB")
    if res.get("soak"):
        s = res["soak"]
        add(f"RSS flat over {s['seconds']} s under load", "growth <= max(1 MB, 5 %)", round(s["rss_growth_kb"] / 1024, 2),
            s["flat"], "MB")
    v = ((res.get("staleness") or {}).get("variants") or {}).get("worker_redelete")
    if v:
        w = v["by_fill"]["within_window"]
        add(f"stale keys, fills within the window ({v['redelete_after']})", "= 0 per million writes",
            w["stale_per_million_writes"], w["stale"] == 0, "per M")
    cl = res.get("cluster") or {}
    for load, c in (cl.get("lag") or {}).items():
        q = c.get("ratio_to_single")
        what = f"{RATE}/s" + (f" + {BG_RATE}/s background" if load == "worker_background" else "")
        add(f"cluster lag p99 / single's, {what}", "<= 1.2", q and q["p99"], q and q["p99"] is not None and q["p99"] <= 1.2, "x")
    for size, d in (cl.get("drain") or {}).items():
        kind = "with keys" if d.get("with_keys") else "keyless"
        add(f"cluster drain, {int(size):,} ({kind}, external)", ">= 100,000 events/s", d["external_events_per_s"],
            d["external_events_per_s"] >= 100_000, "events/s")
        if d.get("keys"):
            add(f"cluster keys left after the {int(size):,} drain", "= 0", d["keys"]["left"], d["keys"]["left"] == 0)
    missed = sum(v["missed"] for v in lag.values()) + sum(v["missed"] for v in lp.values())
    if lag or lp:
        add("missed probes (key not deleted within 5 s)", "= 0", missed, missed == 0)
    if cl.get("lag"):
        cmissed = sum(v["missed"] for v in cl["lag"].values())
        add("cluster missed probes (not deleted in 5 s)", "= 0", cmissed, cmissed == 0)
    return out


def fmt(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def table(res):
    lines = []
    lag = res["lag"]
    if lag:
        lines.append(f"Commit-to-deletion lag (ms; probe: {PROBES} settled trades at {RATE}/s; ratio = worker / floor)")
        lines.append(f"{'phase':<22} {'p50':>8} {'p90':>8} {'p99':>8} {'p99.9':>8} {'max':>8} {'missed':>6}  {'bg/s':>7}  {'CPU s/1k':>8} {'RSS MB':>7}")
        for name in ("floor_idle", "worker_idle", "floor_background", "worker_background"):
            r = lag.get(name)
            if not r:
                continue
            p = r["lag_ms"]
            bg = r["background"]["achieved_per_s"] if r["background"] else 0
            w = r.get("worker") or {}
            lines.append(f"{name:<22} {fmt(p['p50']):>8} {fmt(p['p90']):>8} {fmt(p['p99']):>8} {fmt(p['p99.9']):>8} "
                         f"{fmt(p['max']):>8} {r['missed']:>6}  {bg:>7.0f}  {fmt(w.get('cpu_seconds_per_1000_events'), 3):>8} "
                         f"{fmt(w['peak_rss_kb'] / 1024 if w else None, 1):>7}")
            if "ratio_to_floor" in r:
                q = r["ratio_to_floor"]
                lines.append(f"{'  x floor':<22} {fmt(q['p50'], 2):>8} {fmt(q['p90'], 2):>8} {fmt(q['p99'], 2):>8} "
                             f"{fmt(q['p99.9'], 2):>8} {fmt(q['max'], 2):>8}")
        lines.append("")
    lp = res.get("lag_pgbench") or {}
    if lp:
        lines.append(f"Commit-to-deletion lag, pgbench load profile (ms; {PROBES} probes at {RATE}/s over {PROFILE_CONNECTIONS} connections; "
                     f"background: pgbench -c {PROFILE_CLIENTS} -j {min(PROFILE_CLIENTS, 2)} --rate {BG_RATE}, {PROFILE_USERS} other users;")
        lines.append("idle = at rest; >N ms: probes deleted more than N ms after their COMMIT returned, or missed; ratio = worker / floor)")
        lines.append(f"{'phase':<22} {'p50':>8} {'p99':>8} {'p99.9':>8} {'max':>8} {'>10ms':>6} {'>50ms':>6} {'>100ms':>6} {'missed':>6}  "
                     f"{'bg/s':>7}  {'CPU s/1k':>8} {'RSS MB':>7}")
        for name in ("floor_idle", "worker_idle", "floor_background", "worker_background"):
            r = lp.get(name)
            if not r:
                continue
            p = r["lag_ms"]
            bg = r["background"]["achieved_per_s"] if r["background"] else 0
            w = r.get("worker") or {}
            lines.append(f"{name:<22} {fmt(p['p50']):>8} {fmt(p['p99']):>8} {fmt(p['p99.9']):>8} {fmt(p['max']):>8} "
                         f"{r['over_10ms']:>6} {r['over_50ms']:>6} {r['over_100ms']:>6} {r['missed']:>6}  {bg:>7.0f}  "
                         f"{fmt(w.get('cpu_seconds_per_1000_events'), 3):>8} {fmt(w['peak_rss_kb'] / 1024 if w else None, 1):>7}")
            if "ratio_to_floor" in r:
                q = r["ratio_to_floor"]
                lines.append(f"{'  x floor':<22} {fmt(q['p50'], 2):>8} {fmt(q['p99'], 2):>8} {fmt(q['p99.9'], 2):>8} {fmt(q['max'], 2):>8}")
        late = [f"{name} {r['late_slots']}" for name, r in lp.items() if r["late_slots"]]
        if late:
            lines.append("late probes (sent more than one interval behind schedule: every connection busy): " + ", ".join(late))
        lines.append("")
    wp = res["write_path"]
    if wp or res["write_path_row_only"] or res.get("write_path_parts"):
        lines.append(f"Bot write throughput (pgbench, 1 settled-trade INSERT per transaction, {PGBENCH_SECONDS} s x {PGBENCH_REPEATS} runs, worker running)")
        lines.append(f"{'clients':>7} {'0001 only':>10} {'all migrations':>15} {'ratio':>7}")
        for clients, r in wp.items():
            if clients == "worker":
                continue
            lines.append(f"{clients:>7} {r['tps_without_invalidation']:>10.0f} {r['tps_with_invalidation']:>15.0f} {r['ratio']:>7.3f}")
        for clients, r in res["write_path_row_only"].items():
            lines.append(f"{clients:>7} {r['tps_without_invalidation']:>10.0f} {r['tps_event_row_only']:>15.0f} {r['ratio']:>7.3f}"
                         "  event row only: no worker, every NOTIFY skipped")
        for clients, parts in res.get("write_path_parts", {}).items():
            lines.append(f"{clients:>7} parts (no worker; median ratio of {PARTS_ROUNDS} runs, each to the 0001-only runs beside it):")
            for name, part in parts.items():
                lines.append(f"{'':>7} {name:<14} {part['median_ratio']:>7.3f}  {part['adds']}")
        w = wp.get("worker")
        if w:
            lines.append(f"worker over the phase: {w['events']} events, CPU {fmt(w['cpu_seconds_per_1000_events'])} s per 1000 events, "
                         f"peak RSS {w['peak_rss_kb'] / 1024:.1f} MB")
        lines.append("")
    bl = res.get("bot_latency") or {}
    if bl:
        lines.append(f"The bot's transaction (INSERT + COMMIT) at a steady rate, {BG_CLIENTS} clients (ms; {BOT_LATENCY_ROUNDS} x {BOT_LATENCY_SECONDS} s per variant)")
        lines.append(f"{'trades/s':>8}  {'':<34} {'p50':>8} {'p90':>8} {'p99':>8} {'p99.9':>8} {'max':>8}")
        rows = (("0001 only", "without_invalidation_ms"),
                ("event row only (no worker, W held)", "event_row_only_ms"), ("  added", "event_row_only_added_ms"),
                ("all migrations, worker running", "with_invalidation_ms"), ("  added", "with_invalidation_added_ms"))
        for rate, r in bl.items():
            for label, key in rows:
                q = r[key]
                lines.append(f"{rate if key.startswith('without') else '':>8}  {label:<34} {fmt(q['p50']):>8} {fmt(q['p90']):>8} "
                             f"{fmt(q['p99']):>8} {fmt(q['p99.9']):>8} {fmt(q['max']):>8}")
        lines.append("")
    st = res.get("staleness") or {}
    if st.get("variants"):
        lines += staleness_table(st)
        lines.append("")
    if res["drain"]:
        lines.append("Backlog drain (written with the worker stopped, then the worker started; with keys: every event's keys SET "
                     "first, keys left = those still in Redis after the last acknowledgement)")
        lines.append(f"{'events':>9} {'keys':>9} {'external/s':>11} {'worker own/s':>13} {'seconds':>8} {'CPU s/1k':>9} {'peak RSS MB':>12} "
                     f"{'written/s':>10} {'keys left':>10}")
        for size, d in res["drain"].items():
            k = d.get("keys")
            lines.append(f"{int(size):>9} {(k['distinct_keys'] if k else 'none'):>9} {d['external_events_per_s']:>11} "
                         f"{fmt(d['worker_events_per_s']):>13} {d['external_seconds']:>8.2f} "
                         f"{fmt(d['worker']['cpu_seconds_per_1000_events']):>9} {d['worker']['peak_rss_kb'] / 1024:>12.1f} "
                         f"{d['write_events_per_s']:>10} {(fmt(k['left']) if k else '-'):>10}")
        lines.append("")
    s = res.get("soak")
    if s:
        lines.append(f"Soak: {s['seconds']} s at {s['rate_achieved']:.0f} trades/s: RSS {s['rss_kb_first_tenth_median'] / 1024:.1f} MB -> "
                     f"{s['rss_kb_last_tenth_median'] / 1024:.1f} MB, max {s['rss_kb_max'] / 1024:.1f} MB "
                     f"({'flat' if s['flat'] else 'GROWING'}); heap (RssAnon) {s.get('anon_kb_first_tenth_median')} -> "
                     f"{s.get('anon_kb_last_tenth_median')} kB; CPU {fmt(s['worker']['cpu_seconds_per_1000_events'])} s per 1000 events")
        lines.append("")
    cl = res.get("cluster")
    if cl and (cl["lag"] or cl["drain"]):
        lines += cluster_table(res)
        lines.append("")
    lines.append("Targets (from the benchmark issue; reported, never enforced)")
    for t in res["targets"]:
        verdict = "n/a" if t["met"] is None else ("met" if t["met"] else "NOT MET")
        lines.append(f"  {t['target']:<46} {t['limit']:<26} {fmt(t['value']):>10} {t['unit']:<9} {verdict}")
    return "\n".join(lines)


def cluster_table(res):
    """The worker against the single node and against the cluster, side by side: the lag phase's
    worker runs (the cluster's right after the single node's), and the drains."""
    cl = res["cluster"]
    topo = cl["topology"]
    replicas = sum(len(r) for r in topo["replicas"].values())
    lines = [f"Redis Cluster ({len(topo['masters'])} masters + {replicas} replicas, Redis {cl['redis_version']}) against the single node: "
             f"the same worker, the cluster's run right after the single node's"]
    if cl["lag"]:
        lines.append(f"Lag (ms; {PROBES} probes at {RATE}/s; the deletion seen on every master's keyspace notifications; ratio = cluster / single)")
        lines.append(f"{'run':<26} {'p50':>8} {'p90':>8} {'p99':>8} {'p99.9':>8} {'max':>8} {'missed':>6}  {'bg/s':>7}  {'CPU s/1k':>8} {'RSS MB':>7}")
        for load in ("worker_idle", "worker_background"):
            c = cl["lag"].get(load)
            if not c:
                continue
            for label, r in ((f"single, {load[7:]}", res["lag"].get(load)), (f"cluster, {load[7:]}", c)):
                if not r:
                    continue
                p = r["lag_ms"]
                bg = r["background"]["achieved_per_s"] if r["background"] else 0
                w = r.get("worker") or {}
                lines.append(f"{label:<26} {fmt(p['p50']):>8} {fmt(p['p90']):>8} {fmt(p['p99']):>8} {fmt(p['p99.9']):>8} "
                             f"{fmt(p['max']):>8} {r['missed']:>6}  {bg:>7.0f}  {fmt(w.get('cpu_seconds_per_1000_events'), 3):>8} "
                             f"{fmt(w['peak_rss_kb'] / 1024 if w else None, 1):>7}")
            q = c.get("ratio_to_single")
            if q:
                lines.append(f"{'  cluster / single':<26} {fmt(q['p50'], 2):>8} {fmt(q['p90'], 2):>8} {fmt(q['p99'], 2):>8} "
                             f"{fmt(q['p99.9'], 2):>8} {fmt(q['max'], 2):>8}")
    if cl["drain"]:
        lines.append("Drain (events/s from the worker's start, external; worker's own in brackets; keys left: on the single node / "
                     "on each master of the cluster)")
        lines.append(f"{'events':>9} {'keys':>9} {'single/s':>17} {'cluster/s':>17} {'ratio':>6} {'CPU s/1k s/c':>13} "
                     f"{'RSS MB s/c':>11}  keys left")
        for size, c in cl["drain"].items():
            d = res["drain"].get(size)
            k, ck = (d or {}).get("keys"), c.get("keys")
            single = f"{d['external_events_per_s']} ({fmt(d['worker_events_per_s'])})" if d else "-"
            cluster = f"{c['external_events_per_s']} ({fmt(c['worker_events_per_s'])})"
            ratio = fmt((c.get("ratio_to_single") or {}).get("external_events_per_s"), 2)
            cpu = f"{fmt(d['worker']['cpu_seconds_per_1000_events'], 3) if d else '-'}/{fmt(c['worker']['cpu_seconds_per_1000_events'], 3)}"
            rss = f"{d['worker']['peak_rss_kb'] / 1024:.0f}/" if d else "-/"
            rss += f"{c['worker']['peak_rss_kb'] / 1024:.0f}"
            left = (f"{fmt(k['left']) if k else '-'} / " + (" + ".join(str(n) for n in ck["left_by_master"].values()) + f" = {ck['left']}"
                                                           if ck else "-"))
            lines.append(f"{int(size):>9} {(ck['distinct_keys'] if ck else 'none'):>9} {single:>17} {cluster:>17} {ratio:>6} {cpu:>13} "
                         f"{rss:>11}  {left}")
    return lines


STALENESS_LABELS = {"worker_no_redelete": "worker, REDELETE_AFTER=0", "worker_redelete": "worker, REDELETE_AFTER={}",
                    "in_app": "in-app (writer deletes)"}


def staleness_table(st):
    """The staleness section: stale keys per million writes, overall and by when the racing fill
    landed; then what the second deletion costs (fresh fills lost) and the readers' GET."""
    variants = st["variants"]
    any_v = next(iter(variants.values()))
    lines = [f"Staleness: cache-aside readers racing the bot's settles ({any_v['writes']} writes per variant at "
             f"{any_v['rate_target']}/s, {any_v['writers']} writers, seed {st['seed']}); each write raced by one reader that "
             f"read the trade before the COMMIT",
             f"and SET portfolio:{{tid}} (no TTL) 1-200 ms after it (5 % 200-{st['tail_ms']} ms); a key still stale "
             f"{st['check_seconds']:g} s after its write counts. Window = first deletion + {st['redelete_after']} in every row.",
             f"{'':<28} {'stale keys per million writes, by when the fill landed':^61}   {'racing fills landing':^26}",
             f"{'variant':<28} {'all':>10} {'<1st del':>10} {'in window':>10} {'after win':>10} {'unseen':>8}   "
             f"{'<1st del':>8} {'in win':>8} {'after':>8}"]
    for name, v in variants.items():
        b = v["by_fill"]
        label = STALENESS_LABELS.get(name, name).format(v.get("redelete_after"))
        lines.append(f"{label:<28} {fmt(v['stale_per_million_writes']):>10} "
                     f"{fmt(b['before_first_deletion']['stale_per_million_writes']):>10} "
                     f"{fmt(b['within_window']['stale_per_million_writes']):>10} "
                     f"{fmt(b['after_window']['stale_per_million_writes']):>10} "
                     f"{fmt(b['first_deletion_unseen']['stale_per_million_writes']):>8}   "
                     f"{b['before_first_deletion']['fills']:>8} {b['within_window']['fills']:>8} {b['after_window']['fills']:>8}")
    lines.append("")
    lines.append(f"{'':<28} {'fresh fills lost per write':^32} {'worker':>9} {'reader GET ms':^17} {'deletions, ms after COMMIT':^37}")
    lines.append(f"{'variant':<28} {'all':>10} {'vs =0':>10} {'by 2nd del':>10} {'refilled':>9} {'p50':>8} {'p99':>8} "
                 f"{'1st p50':>8} {'1st p99':>8} {'2nd seen':>9} {'2nd-1st':>10}")
    for name, v in variants.items():
        label = STALENESS_LABELS.get(name, name).format(v.get("redelete_after"))
        g, f1, f2 = v["reader_get_ms"], v["first_deletion_ms"], v["second_deletion_after_first_ms"]
        lines.append(f"{label:<28} {fmt(v['fresh_fills_lost_per_write'], 4):>10} {fmt(v.get('extra_misses_per_write'), 4):>10} "
                     f"{fmt(v['fresh_fills_deleted_again_per_write'], 4):>10} "
                     f"{fmt(v.get('worker_refilled_keys_total')):>9} {fmt(g['p50']):>8} {fmt(g['p99']):>8} "
                     f"{fmt(f1['p50']):>8} {fmt(f1['p99']):>8} {v['second_deletions_seen']:>9} {fmt(f2['p50'], 1):>10}")
    d = any_v["fill_delay_planned_ms"]
    lines.append(f"fill delay after COMMIT (ms): planned p50 {fmt(d['p50'], 1)}, p90 {fmt(d['p90'], 1)}, p99 {fmt(d['p99'], 1)}, "
                 f"max {fmt(d['max'], 1)}; the timer late by p50/p99 "
                 + ", ".join(f"{fmt(v['fill_late_ms']['p50'], 1)}/{fmt(v['fill_late_ms']['p99'], 1)}" for v in variants.values())
                 + " (per variant)")
    lines.append("Every write is raced: stale per million = per million raced writes. Fresh fills (a reader after the COMMIT, main_menu:{tid},"
                 " same delays), one per write: lost at the check; vs =0: minus REDELETE_AFTER=0's; by 2nd del: deleted after landing"
                 " after the first deletion (the second deletion's misses; an upper bound, every key is re-read here).")
    v = variants.get("worker_redelete")
    if v and v["by_fill"]["within_window"]["fills"] and not v["second_deletions_seen"]:
        lines.append("NOTE: no second deletion was seen: this worker binary does not delete again (REDELETE_AFTER unsupported?).")
    late = [f"{name} {v['late_slots']}" for name, v in variants.items() if v["late_slots"]]
    if late:
        lines.append("late write slots (behind schedule by more than a writer's interval): " + ", ".join(late))
    return lines


# ================================================================ the plot

def svg(samples, path):
    """Percentile curves (HdrHistogram style): x = percentile on a 1/(1-p) log scale, y = lag in
    ms on a log scale; worker solid, floor dashed; blue without, red with background load."""
    W, H, L, R, T, B = 860, 500, 70, 230, 40, 60
    pw, ph = W - L - R, H - T - B
    series = [(k, v) for k, v in samples.items() if v]
    if not series:
        return False
    xmax = 4.0  # up to 99.99 %
    # The axis starts below every series' 5th percentile: lags of 0 (the worker deleted the key
    # before the probe saw its COMMIT return) would otherwise stretch a log axis without end;
    # they are drawn on the axis.
    p5 = min(sorted(v)[len(v) // 20] for _, v in series) * 1000
    ymin = 10 ** math.floor(math.log10(p5)) if p5 > 0 else 0.1
    ymax = 10 ** math.ceil(math.log10(max(max(v) for _, v in series) * 1000))

    def X(p):
        return L + min(xmax, -math.log10(max(1e-12, 1 - p))) / xmax * pw

    def Y(ms):
        ms = min(max(ms, ymin), ymax)
        return T + ph - (math.log10(ms) - math.log10(ymin)) / (math.log10(ymax) - math.log10(ymin)) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{L}" y="22" font-size="15">Commit-to-deletion lag by percentile ({PROBES} probes at {RATE}/s per curve)</text>']
    for i, label in enumerate(["0 %", "90 %", "99 %", "99.9 %", "99.99 %"]):
        x = L + i / xmax * pw
        out.append(f'<line x1="{x:.1f}" y1="{T}" x2="{x:.1f}" y2="{T + ph}" stroke="#ddd"/>')
        out.append(f'<text x="{x:.1f}" y="{T + ph + 18}" text-anchor="middle">{label}</text>')
    out.append(f'<text x="{L + pw / 2}" y="{H - 15}" text-anchor="middle">percentile</text>')
    d = int(math.log10(ymin))
    while 10 ** d <= ymax * 1.0001:
        for m in (1, 2, 5):
            v = m * 10 ** d
            if ymin <= v <= ymax:
                y = Y(v)
                out.append(f'<line x1="{L}" y1="{y:.1f}" x2="{L + pw}" y2="{y:.1f}" stroke="{"#ccc" if m == 1 else "#eee"}"/>')
                out.append(f'<text x="{L - 6}" y="{y + 4:.1f}" text-anchor="end">{v:g}</text>')
        d += 1
    out.append(f'<text transform="translate(18,{T + ph / 2}) rotate(-90)" text-anchor="middle">lag (ms, log scale)</text>')
    out.append(f'<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>')
    styles = {"floor_idle": ("#1f77b4", "6,4"), "worker_idle": ("#1f77b4", ""),
              "floor_background": ("#d62728", "6,4"), "worker_background": ("#d62728", ""),
              "pgbench_floor_idle": ("#2ca02c", "6,4"), "pgbench_worker_idle": ("#2ca02c", ""),
              "pgbench_floor_background": ("#ff7f0e", "6,4"), "pgbench_worker_background": ("#ff7f0e", ""),
              "cluster_worker_idle": ("#9467bd", "2,2"), "cluster_worker_background": ("#8c564b", "2,2")}
    for k, (name, values) in enumerate(series):
        s = sorted(values)
        n = len(s)
        pts = []
        for i, v in enumerate(s):
            p = i / n
            if -math.log10(max(1e-12, 1 - p)) > xmax:
                break
            pts.append(f"{X(p):.1f},{Y(max(v * 1000, ymin)):.1f}")
        pts.append(f"{X(1 - 1 / n):.1f},{Y(s[-1] * 1000):.1f}")
        color, dash = styles.get(name, ("#555", ""))
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.6"{dash_attr} points="{" ".join(pts)}"/>')
        ly = T + 20 + k * 36
        out.append(f'<line x1="{L + pw + 12}" y1="{ly}" x2="{L + pw + 42}" y2="{ly}" stroke="{color}" stroke-width="2"{dash_attr}/>')
        pc = percentiles(values)
        out.append(f'<text x="{L + pw + 48}" y="{ly + 4}">{name.replace("_", ", ")}</text>')
        out.append(f'<text x="{L + pw + 48}" y="{ly + 17}" font-size="10" fill="#555">p50 {pc["p50"]:.2f}, p99 {pc["p99"]:.2f} ms</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    return True


# ================================================================ main

def main():
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    bench = None
    ok = False
    stopped_by = None
    try:
        bench = Bench()
        bench.run()
        ok = True
    except Stop as e:
        stopped_by = str(e)
        say(f"stopped by {e}")
    except Exception as e:
        say(f"error: {type(e).__name__}: {e}")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # The shell's convention for a death by signal, so scripts/bench exits 130 on Ctrl-C.
    failed = {"SIGINT": 130, "SIGTERM": 143}.get(stopped_by, 1)
    if bench is None:
        return failed
    res = bench.results
    res["complete"] = ok
    res["targets"] = targets(res)
    with open(os.path.join(RESULTS, "results.json"), "w") as f:
        json.dump(res, f, indent=2)
    if bench.samples:
        with open(os.path.join(RESULTS, "lag-samples.csv"), "w") as f:
            f.write("phase,lag_ms\n")
            for name, values in bench.samples.items():
                f.writelines(f"{name},{v * 1000:.4f}\n" for v in values)
        svg(bench.samples, os.path.join(RESULTS, "lag.svg"))
    print()
    print(table(res))
    print()
    say(f"results: {os.path.join(RESULTS, 'results.json')}")
    if bench.samples:
        say(f"plot:    {os.path.join(RESULTS, 'lag.svg')}")
    if (res.get("staleness") or {}).get("variants"):
        say(f"race:    {os.path.join(RESULTS, 'staleness-samples.csv')} (each raced write)")
    say(f"logs:    {RESULTS}/worker-*.log, pgbench-*.log, postgres.log")
    cl = res.get("cluster") or {}
    missed = (sum(v["missed"] for v in res["lag"].values()) + sum(v["missed"] for v in res["lag_pgbench"].values())
              + sum(v["missed"] for v in (cl.get("lag") or {}).values()))
    left = sum(d["keys"]["left"] or 0 for d in list(res["drain"].values()) + list((cl.get("drain") or {}).values()) if d.get("keys"))
    if missed and ok:
        say(f"error: {missed} probes missed (key not deleted within {MISS_SECONDS:.0f} s)")
    if left and ok:
        say(f"error: {left} keys of the drained backlogs still in Redis after the drain")
    if (missed or left) and ok:
        return 1
    return 0 if ok else failed


if __name__ == "__main__":
    sys.exit(main())
