#!/usr/bin/env python3
"""Load benchmark of one `sluice serve` process: many SSE clients and steady status polling while
an import runs, then many slow readers of a rejected-rows CSV. Python 3.11 standard library only.

Run through bench/load.sh, which makes the data directory (and on PostgreSQL the database) and
removes them afterwards; see BENCHMARKS.md for recorded figures.

Scenario `sse` (1): upload a 200k-row CSV (3% invalid), then for --seconds keep --sse clients on
`GET /api/v1/events` and `GET /api/v1/import/{id}/events` and send --status-rate status requests
per second (open loop: each request is due at a fixed time; its latency counts from then, so a
stalled server is not hidden by a client that waits). At the end the import's counts must equal
the generator's --expect file.

Scenario `slow` (2): import a 200k-row CSV with 30% invalid rows (60k row errors), then open
--readers connections that ask for the errors CSV, read the first --read-kb KiB and stop reading
for --hold seconds with the socket open; status requests and /healthz are measured meanwhile, and
the server's RSS before, during and after. Checks: status p50 and p99 under --p50-ms/--p99-ms,
RSS peak under --max-rss-mb, and RSS --after seconds later within --rss-after-ratio of before.

Scenario `download` (3): import --download-rows rows that are all invalid, then download the whole
rejected-rows CSV --downloads times with one client (parsed with Python's csv module): seconds per
download and rows/s; the CSV must hold exactly the job's error count. Run it on both backends to
compare them.

Every response is classified: `200`, `503 busy` (the bounded pool's answer, allowed), or anything
else (a failure, as are timeouts and connection errors). The server's database connections are
sampled every 200 ms: PostgreSQL from pg_stat_activity, SQLite as the server's open descriptors
of the database file. If `sluice serve --help` lists `--db-connections`, the maximum must not
exceed it. Exit status 1 when a check fails, 2 when the bench itself could not run.
"""

import argparse
import csv
import io
import asyncio
import http.client
import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
GEN = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "datagen", "gen_products.py"))
TOKEN = "bench-load-token"


# ---------------------------------------------------------------------------------------------
# Measurements


def pct(values, p):
    """Nearest-rank percentile of a list (None if empty)."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


class Stat:
    """Outcomes and latencies of one kind of request."""

    def __init__(self, name):
        self.name = name
        self.outcomes = Counter()
        self.latencies = []  # seconds, of completed responses
        self.lags = []  # client lateness: actual send - scheduled send

    def add(self, outcome, latency=None, lag=None):
        self.outcomes[outcome] += 1
        if latency is not None:
            self.latencies.append(latency)
        if lag is not None:
            self.lags.append(lag)

    def summary(self):
        lat = self.latencies
        return {
            "count": sum(self.outcomes.values()),
            "outcomes": dict(sorted(self.outcomes.items())),
            "p50_ms": None if not lat else round(pct(lat, 50) * 1000, 1),
            "p95_ms": None if not lat else round(pct(lat, 95) * 1000, 1),
            "p99_ms": None if not lat else round(pct(lat, 99) * 1000, 1),
            "max_ms": None if not lat else round(max(lat) * 1000, 1),
            "client_lag_p99_ms": None if not self.lags else round(pct(self.lags, 99) * 1000, 1),
        }

    def line(self):
        s = self.summary()
        out = ", ".join(f"{k}: {v}" for k, v in s["outcomes"].items()) or "none"
        text = f"  {self.name:<14} n={s['count']:<6} [{out}]"
        if self.latencies:
            text += (f"  p50 {s['p50_ms']} ms, p95 {s['p95_ms']} ms, p99 {s['p99_ms']} ms, "
                     f"max {s['max_ms']} ms")
        if self.lags and s["client_lag_p99_ms"] > 50:
            text += f"  (client sent late: p99 {s['client_lag_p99_ms']} ms)"
        return text

    def bad(self, allowed):
        return {k: v for k, v in self.outcomes.items() if k not in allowed}


class Sampler(threading.Thread):
    """Every 200 ms: the server's VmRSS, its database connections, and a gauge from the clients."""

    def __init__(self, pid, pg_db, sqlite_path, gauges, interval=0.2):
        super().__init__(daemon=True)
        self.pid, self.pg_db, self.sqlite_path = pid, pg_db, sqlite_path
        self.gauges = gauges  # name -> callable returning a number
        self.interval = interval
        self.samples = []  # (t, rss_kb, db_conns, {gauge: value})
        self.pg_errors = Counter()
        self.psql, self.psql_out = None, None
        self.stopping = threading.Event()

    def rss_kb(self):
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def hwm_kb(self):
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def pg_query(self, sql, timeout=3.0):
        """One query on a psql process kept open (no connection per sample): its first output line."""
        if self.psql is None or self.psql.poll() is not None:
            self.psql = subprocess.Popen(
                ["psql", "-h", PG_HOST, "-p", PG_PORT, "-U", PG_ADMIN, "-d", "postgres", "-X", "-tAq"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                env=dict(os.environ, PGCONNECT_TIMEOUT="3"))
            out = queue.Queue()
            threading.Thread(target=lambda p=self.psql, q=out: [q.put(l) for l in p.stdout] + [q.put(None)],
                             daemon=True).start()
            self.psql_out = out
        try:
            self.psql.stdin.write(sql + ";\n")
            self.psql.stdin.flush()
            line = self.psql_out.get(timeout=timeout)
        except (OSError, queue.Empty) as e:
            self.pg_errors[type(e).__name__ or "psql"] += 1
            self.psql.kill()
            self.psql = None
            return None
        if line is None:
            err = self.psql.stderr.read().strip().splitlines()
            self.pg_errors[(err[-1] if err else "psql exited")[:120]] += 1
            self.psql = None
            return None
        return line.strip()

    def db_conns(self):
        if self.pg_db:
            v = self.pg_query(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{self.pg_db}'")
            try:
                return int(v) if v is not None else None
            except ValueError:
                self.pg_errors[f"unexpected psql output {v[:60]!r}"] += 1
                return None
        # SQLite: each connection holds one descriptor of the database file.
        try:
            n = 0
            for fd in os.listdir(f"/proc/{self.pid}/fd"):
                try:
                    if os.readlink(f"/proc/{self.pid}/fd/{fd}") == self.sqlite_path:
                        n += 1
                except OSError:
                    pass
            return n
        except OSError:
            return None

    def run(self):
        while not self.stopping.is_set():
            t0 = time.monotonic()
            g = {k: f() for k, f in list(self.gauges.items())}
            self.samples.append((t0, self.rss_kb(), self.db_conns(), g))
            self.stopping.wait(max(0.0, self.interval - (time.monotonic() - t0)))

    def stop(self):
        self.stopping.set()
        self.join(timeout=10)
        if self.psql is not None:
            self.psql.stdin.close()
            try:
                self.psql.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.psql.kill()

    def between(self, t0, t1):
        return [s for s in self.samples if t0 <= s[0] <= t1]

    def max_rss_mb(self, t0, t1):
        v = [s[1] for s in self.between(t0, t1) if s[1] is not None]
        return None if not v else max(v) / 1024

    def max_conns(self, t0, t1):
        v = [s[2] for s in self.between(t0, t1) if s[2] is not None]
        return None if not v else max(v)

    def gauge_range(self, name, t0, t1):
        v = [s[3][name] for s in self.between(t0, t1) if name in s[3]]
        return (min(v), max(v)) if v else (None, None)


# ---------------------------------------------------------------------------------------------
# A minimal asyncio HTTP/1.1 client (keep-alive, Content-Length and chunked bodies)


class Http:
    def __init__(self, host, port, timeout, token=TOKEN):
        self.host, self.port, self.timeout, self.token = host, port, timeout, token
        self.idle = []  # keep-alive connections for short requests

    async def connect(self, rcvbuf=None, limit=2 ** 16):
        if rcvbuf:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            # A small receive buffer before connect: no autotuning, so the kernel cannot absorb a
            # whole CSV on the client's side (tcp_rmem allows 32 MB here).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (self.host, self.port))
            return await asyncio.open_connection(sock=sock, limit=limit)
        return await asyncio.open_connection(self.host, self.port, limit=limit)

    def request_bytes(self, method, path, headers=None):
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                 f"Authorization: Bearer {self.token}"]
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    @staticmethod
    async def read_head(reader):
        line = await reader.readline()
        if not line:
            raise EOFError("connection closed before the status line")
        parts = line.decode("latin-1").split(" ", 2)
        status = int(parts[1])
        headers = {}
        while True:
            h = await reader.readline()
            if not h:
                raise EOFError("connection closed in the headers")
            if h in (b"\r\n", b"\n"):
                break
            k, _, v = h.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        return status, headers

    @staticmethod
    async def body_chunks(reader, headers, status=200):
        if status in (204, 304) or 100 <= status < 200:
            return
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                line = await reader.readline()
                if not line:
                    raise EOFError("connection closed in a chunked body")
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass
                    return
                data = await reader.readexactly(size)
                await reader.readexactly(2)
                yield data
        elif "content-length" in headers:
            n = int(headers["content-length"])
            if n:
                yield await reader.readexactly(n)
        else:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                yield data

    async def read_body(self, reader, headers, status=200):
        out = []
        async for c in self.body_chunks(reader, headers, status):
            out.append(c)
        return b"".join(out)

    async def get(self, path):
        """A short GET on a kept-alive connection: (status, headers, body)."""
        # A kept-alive connection the server has closed meanwhile (idle past its header
        # timeout) fails at once: drop it and take the next, until a fresh one — as HTTP clients do.
        while True:
            reused = bool(self.idle)
            reader, writer = self.idle.pop() if reused else await self.connect()
            try:
                writer.write(self.request_bytes("GET", path))
                await writer.drain()
                status, headers = await self.read_head(reader)
                body = await self.read_body(reader, headers, status)
            except (EOFError, ConnectionError, asyncio.IncompleteReadError):
                writer.close()
                if reused:
                    continue  # the server closed an idle keep-alive connection: try the next
                raise
            except BaseException:
                writer.close()
                raise
            if headers.get("connection", "").lower() == "close":
                writer.close()
            else:
                self.idle.append((reader, writer))
            return status, headers, body

    def close(self):
        for _, w in self.idle:
            w.close()
        self.idle.clear()


def classify(status, headers, body):
    """`200`, `503 busy`, `503 busy (no Retry-After)`, `429 rate_limited`, `500 internal`, …"""
    if status < 300:
        return str(status)
    code = None
    try:
        code = json.loads(body or b"null")["error"]["code"]
    except (ValueError, TypeError, KeyError):
        pass
    key = f"{status} {code}" if code else str(status)
    if status == 503 and code == "busy" and "retry-after" not in headers:
        key += " (no Retry-After)"
    return key


def outcome_of_exception(e):
    if isinstance(e, asyncio.TimeoutError):
        return "timeout"
    return f"conn-error {type(e).__name__}"


async def steady(rate, seconds, fn, max_inflight):
    """Calls fn(due_time) `rate` times a second for `seconds`, on schedule, without waiting for
    earlier calls; returns the tasks (awaited by the caller)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    tasks, i = set(), 0
    while True:
        due = t0 + i / rate
        if due - t0 >= seconds:
            break
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        live = {t for t in tasks if not t.done()}
        tasks = live
        if len(live) >= max_inflight:
            tasks.add(asyncio.ensure_future(fn(due, skipped=True)))
        else:
            tasks.add(asyncio.ensure_future(fn(due)))
        i += 1
    return tasks


# ---------------------------------------------------------------------------------------------
# The server


def run_gen(path, rows, error_rate, seed, start_sku, fmt="csv"):
    expect = path + ".expect.json"
    subprocess.run([sys.executable, GEN, "--rows", str(rows), "--error-rate", str(error_rate),
                    "--seed", str(seed), "--start-sku", str(start_sku), "--format", fmt,
                    "--out", path, "--expect", expect, "--no-row-numbers", "-q"], check=True)
    with open(expect) as f:
        return json.load(f)


class Server:
    def __init__(self, args, log_path):
        self.args, self.log_path = args, log_path
        self.proc, self.base, self.host, self.port = None, None, None, None

    def start(self, extra):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        env.update(SLUICE_ADMIN_TOKEN=TOKEN, SLUICE_LOG=self.args.server_log_level)
        cmd = [self.args.binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", self.args.data_dir,
               "--workers", str(self.args.workers), "--rate-limit", "0"] + extra
        if self.args.database_url:
            cmd += ["--database-url", self.args.database_url]
        self.cmd = cmd
        log = open(self.log_path, "a")
        log.write(f"--- {time.strftime('%H:%M:%S')} {' '.join(cmd)}\n")
        log.flush()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=env, text=True)
        found = []

        def read_stdout():
            for line in self.proc.stdout:
                m = re.search(r"sluice listening on (http://\S+)", line)
                if m and not found:
                    found.append(m.group(1))
            # keep draining until exit so the server never blocks on a full pipe

        threading.Thread(target=read_stdout, daemon=True).start()
        deadline = time.monotonic() + 120
        while not found:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sluice exited with {self.proc.returncode} before listening; "
                                   f"see {self.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError("sluice did not print its address within 120 s")
            time.sleep(0.05)
        self.base = found[0]
        hostport = self.base.split("//", 1)[1]
        self.host, port = hostport.rsplit(":", 1)
        self.port = int(port)
        status, _ = self.blocking("GET", "/healthz")
        if status != 200:
            raise RuntimeError(f"/healthz answered {status}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=45)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return "killed after 45 s (did not stop on SIGTERM)"
        return f"exit {self.proc.returncode}" if self.proc else "not started"

    def blocking(self, method, path, body=None, headers=None, timeout=600, token=TOKEN):
        c = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            c.request(method, path, body=body, headers=dict({"Authorization": f"Bearer {token}"},
                                                             **(headers or {})))
            r = c.getresponse()
            data = r.read()
            try:
                return r.status, json.loads(data or b"null")
            except ValueError:
                return r.status, data
        finally:
            c.close()

    def upload(self, path, token=TOKEN, fields=None):
        """POST /api/v1/import/products with the file as multipart field `file`, streamed, after
        the form `fields` (name → value)."""
        boundary = "sluiceload" + uuid.uuid4().hex
        head = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n".encode()
                        for k, v in (fields or {}).items())
        head += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                 f"filename=\"{os.path.basename(path)}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        size = len(head) + os.path.getsize(path) + len(tail)

        def body():
            yield head
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    yield chunk
            yield tail

        status, data = self.blocking("POST", "/api/v1/import/products", body=body(), token=token, headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}", "Content-Length": str(size)})
        if status != 202:
            raise RuntimeError(f"upload answered {status}: {data}")
        return data["data"]["jobId"]

    def wait_done(self, job, timeout, token=TOKEN):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                status, data = self.blocking("GET", f"/api/v1/import/status/{job}", timeout=60, token=token)
            except OSError:
                status, data = None, None
            if status == 200:
                last = data["data"]
                if last["status"] in ("completed", "failed", "cancelled"):
                    return last
            time.sleep(0.5)
        raise RuntimeError(f"job {job} not finished after {timeout} s (last: {last and last['status']})")

    def cap(self):
        """--db-connections from `serve --help`, if the flag exists: (exists, value or None)."""
        if self.args.db_connections is not None:
            return True, self.args.db_connections
        return DB_CAP


def help_cap(binary, backend):
    """Whether `serve --help` lists --db-connections, and its default for `backend` (a plain
    `[default: N]`, or a per-backend "N on SQLite, M on PostgreSQL")."""
    out = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True).stdout
    if "--db-connections" not in out:
        return False, None
    block = out.split("--db-connections", 1)[1]
    block = re.split(r"\n\s+--", block, 1)[0]
    m = re.search(r"\[default: (\d+)\]", block) or re.search(
        r"(\d+) on " + ("SQLite" if backend == "sqlite" else "PostgreSQL"), block)
    return True, int(m.group(1)) if m else None


def check_counts(job, expect):
    """The job's counts against the generator's --expect (an import into keys not seen before)."""
    want = {"status": "completed", "createdCount": expect["valid_rows"], "updatedCount": 0,
            "unchangedCount": 0, "errorCount": expect["invalid_rows"]}
    got = {k: job.get(k) for k in want}
    res = job.get("results") or {}
    want.update(totalRows=expect["rows"], successCount=expect["valid_rows"])
    got.update(totalRows=res.get("totalRows"), successCount=res.get("successCount"))
    diff = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    return got, diff


def log_problems(path, since_offset):
    """WARN/ERROR lines the server wrote since the offset: (counts by message, examples)."""
    with open(path, errors="replace") as f:
        f.seek(since_offset)
        text = f.read()
    counts, examples = Counter(), []
    for line in text.splitlines():
        plain = re.sub(r"\x1b\[[0-9;]*m", "", line)  # colours first: `\x1b[31mERROR` has no \b
        if re.search(r"\b(WARN|ERROR)\b|panicked", plain):
            msg = re.sub(r"^\S+\s+", "", plain)  # drop the timestamp
            msg = re.sub(r"\d+", "N", msg)[:160]
            counts[msg] += 1
            if len(examples) < 3:
                examples.append(plain[:300])
    return counts, examples


# ---------------------------------------------------------------------------------------------
# Scenario 1: SSE clients and status polling while an import runs


async def sse_client(http, job, path, stat_connect, stat_events, state, stop):
    """One EventSource-like client: stays connected until `stop`; a job stream that ended with its
    `done` event reconnects once with Last-Event-ID (must be 204), then follows /api/v1/events."""
    last_id = None
    while not stop.is_set():
        headers = {"Accept": "text/event-stream"}
        if last_id is not None and path != "/api/v1/events":
            headers["Last-Event-ID"] = last_id
        t0 = time.monotonic()
        writer = None
        try:
            reader, writer = await http.connect()
            writer.write(http.request_bytes("GET", path, headers))
            await writer.drain()
            status, h = await asyncio.wait_for(http.read_head(reader), http.timeout)
        except asyncio.CancelledError:
            if writer:
                writer.close()
            raise
        except Exception as e:  # noqa: BLE001 - every failure is an outcome
            stat_connect.add(outcome_of_exception(e))
            if writer:
                writer.close()
            await asyncio.sleep(1)
            continue
        if status != 200:
            body = b""
            try:
                body = await asyncio.wait_for(http.read_body(reader, h, status), 10)
            except Exception:  # noqa: BLE001
                pass
            writer.close()
            key = classify(status, h, body)
            stat_connect.add(key, time.monotonic() - t0)
            if status == 204:
                path, last_id = "/api/v1/events", None  # the job stream is over: follow everything
                continue
            await asyncio.sleep(1)  # EventSource's retry
            continue
        stat_connect.add("200", time.monotonic() - t0)
        state["connected"] += 1
        saw_done, buf = False, b""
        try:
            async for data in http.body_chunks(reader, h):
                buf += data
                while b"\n\n" in buf:
                    block, buf = buf.split(b"\n\n", 1)
                    name = None
                    for line in block.split(b"\n"):
                        if line.startswith(b"event:"):
                            name = line[6:].strip().decode()
                        elif line.startswith(b"id:"):
                            last_id = line[3:].strip().decode()
                    if name:
                        stat_events.add(name)
                        saw_done = saw_done or name == "done"
            # The stream ended.
            if path == "/api/v1/events" or not saw_done:
                stat_events.add("stream ended unexpectedly")
                await asyncio.sleep(1)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001
            stat_events.add("stream " + outcome_of_exception(e))
            await asyncio.sleep(1)
        finally:
            state["connected"] -= 1
            writer.close()


async def scenario_sse(args, server, sampler_box, expect, csv_path):
    res = {"scenario": "sse", "failures": []}
    log_off = os.path.getsize(server.log_path)
    print(f"\n== Scenario 1: {args.sse} SSE clients + {args.status_rate} status/s for {args.seconds} s, "
          f"during a {expect['rows']:,}-row import ({expect['invalid_rows']:,} invalid) ==")
    print(f"  load average {os.getloadavg()[0]:.2f} at the start")
    t_up = time.monotonic()
    job = await asyncio.to_thread(server.upload, csv_path)
    t0 = time.monotonic()
    print(f"  uploaded in {t0 - t_up:.2f} s: job {job}")
    http = Http(server.host, server.port, args.timeout)
    st_status, st_connect, st_events = Stat("status"), Stat("sse connect"), Stat("sse events")
    state = {"connected": 0, "finished_at": None}
    sampler_box["gauges"]["sse_connected"] = lambda: state["connected"]
    stop = asyncio.Event()

    async def one_status(due, skipped=False):
        if skipped:
            st_status.add("client in-flight cap")
            return
        lag = asyncio.get_running_loop().time() - due
        try:
            status, h, body = await asyncio.wait_for(http.get(f"/api/v1/import/status/{job}"), args.timeout)
        except Exception as e:  # noqa: BLE001
            st_status.add(outcome_of_exception(e), lag=lag)
            return
        st_status.add(classify(status, h, body), asyncio.get_running_loop().time() - due, lag)
        if status == 200 and state["finished_at"] is None:
            try:
                d = json.loads(body)["data"]
                if d["status"] in ("completed", "failed", "cancelled"):
                    state["finished_at"] = time.monotonic()
            except (ValueError, KeyError):
                pass

    n_job = int(round(args.sse * args.sse_job_share))
    paths = [f"/api/v1/import/{job}/events"] * n_job + ["/api/v1/events"] * (args.sse - n_job)
    clients = [asyncio.ensure_future(sse_client(http, job, p, st_connect, st_events, state, stop))
               for p in paths]
    pending = await steady(args.status_rate, args.seconds, one_status, args.max_inflight)
    t1 = time.monotonic()
    stop.set()
    for c in clients:
        c.cancel()
    await asyncio.gather(*clients, return_exceptions=True)
    if pending:
        _, late = await asyncio.wait(pending, timeout=args.timeout + 5)
        for t in late:
            t.cancel()
    http.close()
    print(f"  load window {t1 - t0:.1f} s; waiting for the import to finish …")
    final = await asyncio.to_thread(server.wait_done, job, args.import_timeout)
    t_done = state["finished_at"] or time.monotonic()
    got, diff = check_counts(final, expect)
    sampler = sampler_box["sampler"]
    ramp = min(5.0, (t1 - t0) / 2)
    conn_lo, conn_hi = sampler.gauge_range("sse_connected", t0 + ramp, t1)
    res.update(
        job=job, window_s=round(t1 - t0, 1), import_s=round(t_done - t0, 1),
        import_under_load_share=round(min(1.0, (t_done - t0) / max(t1 - t0, 1e-9)), 2),
        status=st_status.summary(), sse_connect=st_connect.summary(), sse_events=dict(st_events.outcomes),
        sse_connected_min_after_ramp=conn_lo, sse_connected_max=conn_hi,
        counts=got, counts_ok=not diff,
        rss_peak_mb=round(sampler.max_rss_mb(t0, time.monotonic()) or 0, 1),
        db_conns_max=sampler.max_conns(t0, t1),
    )
    print(st_status.line())
    print(st_connect.line())
    print(f"  sse events     {dict(st_events.outcomes)}")
    print(f"  sse connected: min {conn_lo} / max {conn_hi} of {args.sse} (sampled after the first {ramp:.0f} s)")
    print(f"  import finished {t_done - t0:.1f} s after the upload ({final['status']}); "
          f"counts {'match' if not diff else 'DIFFER'} the generator's: {got}")
    if final.get("error"):
        res["import_error"] = final["error"]
        print(f"  the job's error: {final['error']} (attempts {final.get('attempts')})")
    for k, (g, w) in diff.items():
        res["failures"].append(f"import {k} = {g}, expected {w}")
    allowed = {"200", "503 busy"}
    if st_status.bad(allowed):
        res["failures"].append(f"status requests: {st_status.bad(allowed)}")
    if st_connect.bad(allowed | {"204"}):
        res["failures"].append(f"SSE connects: {st_connect.bad(allowed | {'204'})}")
    bad_events = {k: v for k, v in st_events.outcomes.items() if k.startswith("stream ")}
    if bad_events:
        res["failures"].append(f"SSE streams: {bad_events}")
    finish_common(args, server, sampler, res, t0, t1, log_off)
    return res


# ---------------------------------------------------------------------------------------------
# Scenario 2: slow readers of the rejected-rows CSV


async def slow_reader(http, path, args, stat, state, hold_until):
    t0 = time.monotonic()
    writer = None
    try:
        reader, writer = await http.connect(rcvbuf=args.reader_rcvbuf, limit=4096)
        writer.write(http.request_bytes("GET", path))
        await writer.drain()
        status, h = await asyncio.wait_for(http.read_head(reader), args.timeout)
        if status == 200:
            got = 0
            while got < args.read_kb * 1024:
                data = await asyncio.wait_for(reader.read(args.read_kb * 1024 - got), args.timeout)
                if not data:
                    break
                got += len(data)
            stat.add("200", time.monotonic() - t0)
            state["reading"] += 1
            state["bytes"] += got
        else:
            body = await asyncio.wait_for(http.read_body(reader, h, status), 10)
            stat.add(classify(status, h, body), time.monotonic() - t0)
        # Stop reading; keep the socket open.
        await asyncio.sleep(max(0.0, hold_until - time.monotonic()))
    except asyncio.CancelledError:
        raise
    except Exception as e:  # noqa: BLE001
        stat.add(outcome_of_exception(e))
    finally:
        if writer:
            writer.close()


async def scenario_slow(args, server, sampler_box, expect, csv_path):
    res = {"scenario": "slow", "failures": []}
    log_off = os.path.getsize(server.log_path)
    print(f"\n== Scenario 2: {args.readers} slow readers of the errors CSV for {args.hold} s, "
          f"{args.slow_status_rate} status/s + {args.healthz_rate} healthz/s ==")
    print(f"  load average {os.getloadavg()[0]:.2f} at the start")
    t_up = time.monotonic()
    job = await asyncio.to_thread(server.upload, csv_path)
    final = await asyncio.to_thread(server.wait_done, job, args.import_timeout)
    got, diff = check_counts(final, expect)
    print(f"  job {job}: {final['errorCount']:,} rejected rows, imported in {time.monotonic() - t_up:.1f} s; "
          f"counts {'match' if not diff else 'DIFFER'}")
    if final.get("error"):
        res["import_error"] = final["error"]
        print(f"  the job's error: {final['error']} (attempts {final.get('attempts')})")
    for k, (g, w) in diff.items():
        res["failures"].append(f"import {k} = {g}, expected {w}")
    await asyncio.sleep(args.settle)
    sampler = sampler_box["sampler"]
    rss_before = sampler.samples[-1][1] / 1024 if sampler.samples and sampler.samples[-1][1] else None
    conns_before = sampler.samples[-1][2] if sampler.samples else None

    http = Http(server.host, server.port, args.timeout)
    phases = {}
    stats = {p: (Stat(f"status {p}"), Stat(f"healthz {p}")) for p in ("during", "after")}
    st_reader = Stat("reader")
    state = {"reading": 0, "bytes": 0}
    sampler_box["gauges"]["readers"] = lambda: state["reading"]

    def timed(stat, path):
        async def one(due, skipped=False):
            if skipped:
                stat.add("client in-flight cap")
                return
            lag = asyncio.get_running_loop().time() - due
            try:
                status, h, body = await asyncio.wait_for(http.get(path), args.timeout)
            except Exception as e:  # noqa: BLE001
                stat.add(outcome_of_exception(e), lag=lag)
                return
            stat.add(classify(status, h, body), asyncio.get_running_loop().time() - due, lag)
        return one

    async def probes(phase, seconds):
        s, hz = stats[phase]
        a = steady(args.slow_status_rate, seconds, timed(s, f"/api/v1/import/status/{job}"), args.max_inflight)
        b = steady(args.healthz_rate, seconds, timed(hz, "/healthz"), args.max_inflight)
        pending = set().union(*await asyncio.gather(a, b))
        if pending:
            _, late = await asyncio.wait(pending, timeout=args.timeout + 5)
            for t in late:
                t.cancel()

    t0 = time.monotonic()
    hold_until = t0 + args.hold
    path = f"/api/v1/import/{job}/errors?format=csv"
    readers = [asyncio.ensure_future(slow_reader(http, path, args, st_reader, state, hold_until))
               for _ in range(args.readers)]
    await probes("during", args.hold)
    await asyncio.gather(*readers, return_exceptions=True)
    t1 = time.monotonic()
    phases["during"] = (t0, t1)
    await probes("after", args.after)
    t2 = time.monotonic()
    http.close()
    rss_after = sampler.samples[-1][1] / 1024 if sampler.samples and sampler.samples[-1][1] else None
    s_during, hz_during = stats["during"]
    s_after, hz_after = stats["after"]
    _, readers_max = sampler.gauge_range("readers", t0, t1)
    res.update(
        job=job, rejected_rows=final["errorCount"], readers=st_reader.summary(),
        readers_reading_max=readers_max, reader_bytes=state["bytes"],
        status_during=s_during.summary(), healthz_during=hz_during.summary(),
        status_after=s_after.summary(), healthz_after=hz_after.summary(),
        rss_before_mb=round(rss_before or 0, 1),
        rss_peak_mb=round(sampler.max_rss_mb(t0, t1) or 0, 1),
        rss_after_mb=round(rss_after or 0, 1),
        db_conns_before=conns_before, db_conns_max=sampler.max_conns(t0, t1),
        db_conns_after=sampler.samples[-1][2] if sampler.samples else None,
    )
    print(st_reader.line() + f"  (first {args.read_kb} KiB each; {readers_max} reading at once)")
    for st in (s_during, hz_during, s_after, hz_after):
        print(st.line())
    print(f"  server RSS: before {res['rss_before_mb']} MB, peak during {res['rss_peak_mb']} MB, "
          f"{args.after:.0f} s after the readers left {res['rss_after_mb']} MB")
    allowed = {"200", "503 busy"}
    for st in (st_reader, s_during, hz_during, s_after, hz_after):
        if st.bad(allowed):
            res["failures"].append(f"{st.name}: {st.bad(allowed)}")
    p99 = res["status_during"]["p99_ms"]
    if p99 is None or p99 >= args.p99_ms:
        res["failures"].append(f"status p99 during the slow readers {p99} ms >= {args.p99_ms} ms")
    p50 = res["status_during"]["p50_ms"]
    if p50 is None or p50 >= args.p50_ms:
        res["failures"].append(f"status p50 during the slow readers {p50} ms >= {args.p50_ms} ms")
    if res["rss_peak_mb"] > args.max_rss_mb:
        res["failures"].append(f"RSS peak {res['rss_peak_mb']} MB > {args.max_rss_mb} MB")
    if rss_before and rss_after and rss_after > args.rss_after_ratio * rss_before:
        res["failures"].append(f"RSS {args.after:.0f} s after the readers left {res['rss_after_mb']} MB "
                               f"> {args.rss_after_ratio} × {res['rss_before_mb']} MB before")
    finish_common(args, server, sampler, res, t0, t1, log_off)
    return res


def finish_common(args, server, sampler, res, t0, t1, log_off):
    what = "PostgreSQL connections (pg_stat_activity)" if args.pg_db else "SQLite connections (open db files)"
    exists, cap = server.cap()
    conns = res.get("db_conns_max")
    res["db_connections_cap"] = cap if exists else None
    line = f"  {what}: max {conns}"
    if exists:
        # As documented: the pool's cap, plus one batch writer per running worker, plus (on
        # PostgreSQL) the connection that listens for jobs.
        extra = args.workers + (1 if args.pg_db else 0)
        line += (f" (cap --db-connections {cap} + {extra} for the workers' writers"
                 f"{' and the listener' if args.pg_db else ''}"
                 f"{' + slack ' + str(args.cap_slack) if args.cap_slack else ''})")
        if cap is not None and conns is not None and conns > cap + extra + args.cap_slack:
            res["failures"].append(f"{what}: max {conns} > --db-connections {cap} + {extra}")
    else:
        line += " (this sluice has no --db-connections flag: no cap to check)"
    if args.pg_conn_limit and args.pg_db:
        line += f"; the bench's role is limited to {args.pg_conn_limit}"
    print(line)
    if sampler.pg_errors:
        print(f"  psql sampling failures: {dict(sampler.pg_errors)}")
    counts, examples = log_problems(server.log_path, log_off)
    res["server_log_problems"] = sum(counts.values())
    res["server_log_top"] = dict(counts.most_common(4))
    refused = sum(n for m, n in counts.items() if "too many connections" in m)
    res["db_connects_refused"] = refused
    if refused:
        print(f"  database connections refused (server log, 'too many connections'): {refused} — the "
              f"samples above miss connections that live less than {sampler.interval * 1000:.0f} ms")
    if counts:
        print(f"  server log: {sum(counts.values())} WARN/ERROR lines, by message:")
        for msg, n in counts.most_common(6):
            print(f"    {n:>6} × {msg}")
    else:
        print("  server log: no WARN/ERROR lines")
    res["checks"] = "pass" if not res["failures"] else "FAIL"
    for f in res["failures"]:
        print(f"  FAIL: {f}")


# ---------------------------------------------------------------------------------------------


async def scenario_download(args, server, sampler_box, expect, csv_path):
    """One client downloads a large rejected-rows CSV whole, a few times: seconds and MB/s."""
    res = {"scenario": "download", "failures": []}
    log_off = os.path.getsize(server.log_path)
    print(f"\n== Scenario 3: the rejected-rows CSV of {expect['invalid_rows']:,} errors, "
          f"downloaded whole {args.downloads} times ==")
    print(f"  load average {os.getloadavg()[0]:.2f} at the start")
    t_up = time.monotonic()
    job = await asyncio.to_thread(server.upload, csv_path)
    final = await asyncio.to_thread(server.wait_done, job, args.import_timeout)
    got, diff = check_counts(final, expect)
    print(f"  job {job}: {final['errorCount']:,} rejected rows, imported in {time.monotonic() - t_up:.1f} s; "
          f"counts {'match' if not diff else 'DIFFER'}")
    for k, (g, w) in diff.items():
        res["failures"].append(f"import {k} = {g}, expected {w}")
    sampler = sampler_box["sampler"]
    times, size, records = [], 0, 0

    def download():
        c = http.client.HTTPConnection(server.host, server.port, timeout=args.timeout)
        try:
            c.request("GET", f"/api/v1/import/{job}/errors?format=csv",
                      headers={"Authorization": f"Bearer {TOKEN}"})
            r = c.getresponse()
            if r.status != 200:
                raise RuntimeError(f"errors CSV answered {r.status}")
            text = io.TextIOWrapper(r, encoding="utf-8", newline="")
            n = sum(1 for _ in csv.reader(text))
            return n, r.length
        finally:
            c.close()

    t0 = time.monotonic()
    for _ in range(args.downloads):
        t = time.monotonic()
        records, _ = await asyncio.to_thread(download)
        times.append(time.monotonic() - t)
    t1 = time.monotonic()
    size = os.path.getsize(csv_path)
    res.update(job=job, rejected_rows=final["errorCount"], csv_records=records,
               seconds=[round(x, 2) for x in times], seconds_best=round(min(times), 2),
               rows_per_s=round(final["errorCount"] / min(times)),
               rss_peak_mb=round(sampler.max_rss_mb(t0, t1) or 0, 1),
               db_conns_max=sampler.max_conns(t0, t1))
    print(f"  {records - 1:,} rows (+ header) in " + " / ".join(f"{x:.2f}" for x in times)
          + f" s: best {res['rows_per_s']:,} rows/s; server RSS peak {res['rss_peak_mb']} MB "
          f"(source file {size / 1e6:.1f} MB)")
    if records - 1 != final["errorCount"]:
        res["failures"].append(f"the CSV has {records - 1} rows, the job {final['errorCount']} errors")
    finish_common(args, server, sampler, res, t0, t1, log_off)
    return res


async def run_scenario(name, fn, args, expect, csv_path, log_path):
    server = Server(args, log_path)
    extra = []
    if args.db_connections is not None:
        extra += ["--db-connections", str(args.db_connections)]
    server.start(extra)
    sqlite_path = os.path.realpath(os.path.join(args.data_dir, "sluice.db"))
    cpu = os.times()
    box = {"gauges": {}, "cpu0": cpu.user + cpu.system}
    sampler = Sampler(server.proc.pid, args.pg_db, sqlite_path, box["gauges"])
    box["sampler"] = sampler
    sampler.start()
    try:
        res = await fn(args, server, box, expect, csv_path)
        res["rss_hwm_mb"] = round((sampler.hwm_kb() or 0) / 1024, 1)
    finally:
        sampler.stop()
        how = server.stop()
    res["server_exit"] = how
    cpu = os.times()
    res["client_cpu_s"] = round(cpu.user + cpu.system - box["cpu0"], 1)
    res["loadavg_end"] = round(os.getloadavg()[0], 2)
    if not how.startswith("exit"):
        res["failures"].append(f"server {how}")
        res["checks"] = "FAIL"
    return res


def table(results, args):
    rows = [("scenario", "backend", "status p50/p99/max ms", "non-200", "db conns max", "RSS MB", "checks")]
    for r in results:
        if r["scenario"] in ("sse", "mixed"):
            s = r["status"]
            bad = {k: v for k, v in s["outcomes"].items() if k != "200"}
            rss = f"peak {r['rss_peak_mb']}"
        elif r["scenario"] == "download":
            rows.append(("download", args.backend, f"{r['rejected_rows']:,} rows in " +
                         " / ".join(f"{x:.2f}" for x in r["seconds"]) + " s", "0",
                         f"{r['db_conns_max']}", f"peak {r['rss_peak_mb']}", r["checks"]))
            continue
        else:
            s = r["status_during"]
            bad = {k: v for k, v in s["outcomes"].items() if k != "200"}
            bad.update({f"reader {k}": v for k, v in r["readers"]["outcomes"].items() if k != "200"})
            rss = f"{r['rss_before_mb']} → {r['rss_peak_mb']} → {r['rss_after_mb']}"
        cap = f" / {r['db_connections_cap']}" if r.get("db_connections_cap") else ""
        rows.append((r["scenario"], args.backend, f"{s['p50_ms']}/{s['p99_ms']}/{s['max_ms']}",
                     ", ".join(f"{k}: {v}" for k, v in bad.items()) or "0", f"{r['db_conns_max']}{cap}", rss,
                     r["checks"]))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for j, row in enumerate(rows):
        print("  " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)))
        if j == 0:
            print("  " + "-+-".join("-" * w for w in widths))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", required=True)
    ap.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--data-dir", required=True, help="a fresh, empty data directory")
    ap.add_argument("--work", required=True, help="directory for generated files and the server log")
    ap.add_argument("--database-url", default=None, help="postgres://… of a fresh database")
    ap.add_argument("--pg-db", default=None, help="its name (for pg_stat_activity)")
    ap.add_argument("--pg-conn-limit", type=int, default=0,
                    help="(reported only) the CONNECTION LIMIT load.sh put on the database role")
    ap.add_argument("--scenarios", default="sse,slow,download",
                    help="comma-separated: sse, slow, download, mixed (default: the first three; "
                         "mixed is bench/mixed.py, many organisations importing at once)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--db-connections", type=int, default=None,
                    help="pass --db-connections N to the server (default: its own default)")
    ap.add_argument("--cap-slack", type=int, default=0,
                    help="connections allowed above --db-connections before failing (default 0)")
    ap.add_argument("--server-log-level", default="warn", help="SLUICE_LOG for the server")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds one request may take (30)")
    ap.add_argument("--max-inflight", type=int, default=2000,
                    help="most status requests in flight; beyond, a due request is counted as failed")
    ap.add_argument("--import-timeout", type=float, default=900.0)
    ap.add_argument("--settle", type=float, default=3.0, help="seconds of quiet before 'RSS before'")
    # scenario 1
    ap.add_argument("--seconds", type=float, default=60.0, help="scenario 1's load window (60)")
    ap.add_argument("--rows", type=int, default=200_000, help="scenario 1's import (200000 rows)")
    ap.add_argument("--error-rate", type=float, default=0.03)
    ap.add_argument("--sse", type=int, default=300, help="concurrent SSE clients (300)")
    ap.add_argument("--sse-job-share", type=float, default=0.5,
                    help="share of the SSE clients on the job's stream; the rest on /api/v1/events")
    ap.add_argument("--status-rate", type=float, default=200.0, help="status requests/s (200)")
    # scenario 2
    ap.add_argument("--slow-rows", type=int, default=200_000)
    ap.add_argument("--slow-error-rate", type=float, default=0.30, help="(0.30: ~60k rejected rows)")
    ap.add_argument("--readers", type=int, default=300)
    ap.add_argument("--read-kb", type=int, default=4, help="KiB each reader reads before it stops (4)")
    ap.add_argument("--reader-rcvbuf", type=int, default=16384,
                    help="SO_RCVBUF of a reader's socket, bytes (16384; 0: the kernel's autotuning)")
    ap.add_argument("--hold", type=float, default=30.0, help="seconds the readers stay (30)")
    ap.add_argument("--after", type=float, default=15.0,
                    help="seconds measured after they leave (15: the idle blocking threads exit after 10)")
    ap.add_argument("--slow-status-rate", type=float, default=10.0)
    ap.add_argument("--healthz-rate", type=float, default=5.0)
    ap.add_argument("--p99-ms", type=float, default=100.0, help="scenario 2's status p99 target (100)")
    ap.add_argument("--p50-ms", type=float, default=100.0, help="scenario 2's status p50 target (100)")
    ap.add_argument("--max-rss-mb", type=float, default=300.0, help="scenario 2's RSS peak limit (300)")
    ap.add_argument("--rss-after-ratio", type=float, default=1.5,
                    help="scenario 2: RSS after the readers left may be at most this × before (1.5)")
    # scenario 3
    ap.add_argument("--download-rows", type=int, default=300_000,
                    help="scenario 3's file, every row invalid (300000 rejected rows)")
    ap.add_argument("--downloads", type=int, default=3, help="scenario 3's whole downloads (3)")
    import mixed
    mixed.add_arguments(ap)
    args = ap.parse_args()

    global DB_CAP
    DB_CAP = help_cap(args.binary, args.backend)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    os.makedirs(args.work, exist_ok=True)
    log_path = os.path.join(args.work, "server.log")
    print(f"sluice load bench: {args.backend}, binary {args.binary}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    print(f"  server: sluice serve --workers {args.workers} --rate-limit 0 (the per-token limit, "
          f"default 100/s, is off so the load reaches the store); log {log_path}")
    exists, cap = DB_CAP
    print(f"  --db-connections: {'default ' + str(cap) if exists else 'not a flag of this sluice'}"
          + (f", set to {args.db_connections}" if args.db_connections is not None else ""))
    cap = args.db_connections if args.db_connections is not None else cap
    if args.pg_db and args.pg_conn_limit and cap is not None and cap + args.cap_slack >= args.pg_conn_limit:
        print(f"  WARNING: --db-connections {cap} is not below the role's CONNECTION LIMIT "
              f"{args.pg_conn_limit}: refusals by PostgreSQL, not the pool, may decide the result")

    files = {}
    t = time.monotonic()
    if "sse" in scenarios:
        p = os.path.join(args.work, "sse.csv")
        files["sse"] = (p, run_gen(p, args.rows, args.error_rate, 11, 1))
    if "slow" in scenarios:
        p = os.path.join(args.work, "slow.csv")
        files["slow"] = (p, run_gen(p, args.slow_rows, args.slow_error_rate, 12, 10_000_001))
    if "download" in scenarios:
        p = os.path.join(args.work, "download.csv")
        files["download"] = (p, run_gen(p, args.download_rows, 1.0, 13, 20_000_001))
    if "mixed" in scenarios:
        files["mixed"] = (None, None)  # generated by the scenario
    made = ", ".join(f"{k}: {e['rows']:,} rows ({e['invalid_rows']:,} invalid)" for k, (_, e) in files.items() if e)
    print(f"  generated {made} in {time.monotonic() - t:.1f} s")

    results = []
    for name in scenarios:
        fn = {"sse": scenario_sse, "slow": scenario_slow, "download": scenario_download,
              "mixed": mixed.scenario_mixed}[name]
        path, expect = files[name]
        try:
            r = asyncio.run(run_scenario(name, fn, args, expect, path, log_path))
        except RuntimeError as e:
            print(f"  bench error in scenario {name}: {e}", file=sys.stderr)
            r = {"scenario": name, "failures": [f"bench error: {e}"], "checks": "ERROR"}
        results.append(r)
        if "client_cpu_s" in r:
            print(f"  bench client CPU {r['client_cpu_s']} s; load average {r['loadavg_end']} at the end")

    print("\n== Summary ==")
    table([r for r in results if r["checks"] != "ERROR"], args)
    failed = [f"{r['scenario']}: {f}" for r in results for f in r["failures"]]
    for f in failed:
        print(f"  FAIL {f}")
    print(json.dumps({"bench": "load", "backend": args.backend, "date": time.strftime("%Y-%m-%d"),
                      "ok": not failed, "results": results}, separators=(",", ":")))
    if any(r["checks"] == "ERROR" for r in results):
        sys.exit(2)
    sys.exit(1 if failed else 0)


PG_HOST = os.environ.get("SLUICE_LOAD_PG_HOST", "127.0.0.1")
PG_PORT = os.environ.get("SLUICE_LOAD_PG_PORT", "5432")
PG_ADMIN = os.environ.get("SLUICE_LOAD_PG_ADMIN", "postgres")
DB_CAP = (False, None)

if __name__ == "__main__":
    main()
