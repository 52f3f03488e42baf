#!/usr/bin/env python3
"""API latency while imports run: status requests from 4 pollers (persistent connections, rate
limit off) first on an idle server — the reference, measured in the same run — then while two
700k-row imports run on 2 workers. Prints p50 / p99 / max of both and the ratio of the p99s.

    bench/latency.py --binary target/release/sluice [--rows 700000] [--postgres URL] [--runs N]

See BENCHMARKS.md ("API latency under import")."""

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from import_bench import GEN, TOKEN, server_at  # noqa: E402
POLLERS = 4


def call(conn, method, path, body=None, headers=None):
    h = {"Authorization": f"Bearer {TOKEN}"}
    h.update(headers or {})
    conn.request(method, path, body=body, headers=h)
    resp = conn.getresponse()
    data = resp.read()
    return resp.status, json.loads(data or b"null")


def poll(host, port, path, stop, out):
    conn = http.client.HTTPConnection(host, port, timeout=60)
    while not stop.is_set():
        t0 = time.perf_counter()
        status, _ = call(conn, "GET", path)
        out.append((time.perf_counter() - t0) * 1000)
        assert status == 200, status


def measure(host, port, path, until):
    """Latencies (ms) of POLLERS pollers of `path` while `until()` is false."""
    stop = threading.Event()
    samples = [[] for _ in range(POLLERS)]
    threads = [threading.Thread(target=poll, args=(host, port, path, stop, s)) for s in samples]
    for t in threads:
        t.start()
    try:
        while not until():
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join()
    return sorted(x for s in samples for x in s)


def pct(xs, p):
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def describe(xs):
    return f"p50 {pct(xs, 0.5):.1f} / p99 {pct(xs, 0.99):.1f} / max {xs[-1]:.1f} ms ({len(xs)} requests)"


def run_once(args, work, files):
    data = tempfile.mkdtemp(prefix="data-", dir=work)
    try:
        with server_at(args.binary, data, args.postgres,
                       ["--workers", "2", "--rate-limit", "0"]) as (url, _):
            return measure_server(args, files, urllib.parse.urlsplit(url))
    finally:
        shutil.rmtree(data, ignore_errors=True)


def measure_server(args, files, url):
    """Idle, then busy: the status latencies of the server at `url`."""
    base = (url.hostname, url.port)
    conn = http.client.HTTPConnection(*base, timeout=600)

    def upload(path):
        with open(path, "rb") as f:
            status, body = call(conn, "POST",
                                f"/api/v1/import/products?filename={os.path.basename(path)}",
                                body=f, headers={"Content-Type": "text/csv",
                                                 "Content-Length": str(os.path.getsize(path))})
        assert status == 202, body
        return body["data"]["jobId"]

    def done(job):
        _, st = call(conn, "GET", f"/api/v1/import/status/{job}")
        return st["data"]["status"] in ("completed", "failed", "cancelled")

    warm = upload(files[0])
    while not done(warm):
        time.sleep(0.1)
    path = f"/api/v1/import/status/{warm}"
    deadline = time.monotonic() + args.idle_seconds
    idle = measure(*base, path, lambda: time.monotonic() > deadline)
    jobs = [upload(f) for f in files[1:]]
    t0 = time.monotonic()
    busy = measure(*base, path, lambda: all(done(j) for j in jobs))
    return idle, busy, time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--rows", type=int, default=700000)
    ap.add_argument("--idle-seconds", type=float, default=5.0)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--postgres", metavar="SERVER_URL", default=None)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="sluice-latency-")
    try:
        files = []
        for i, (rows, start) in enumerate([(1000, 5_000_001), (args.rows, 1), (args.rows, 2_000_001)]):
            f = os.path.join(work, f"f{i}.csv")
            subprocess.run([sys.executable, GEN, "--rows", str(rows), "--seed", str(i + 1),
                            "--start-sku", str(start), "--out", f, "-q"], check=True)
            files.append(f)
        for run in range(1, args.runs + 1):
            idle, busy, seconds = run_once(args, work, files)
            print(f"run {run}: idle (reference): {describe(idle)}")
            print(f"run {run}: two {args.rows}-row imports ({seconds:.1f} s): {describe(busy)}; "
                  f"p99 ratio {pct(busy, 0.99) / pct(idle, 0.99):.1f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
