#!/usr/bin/env python3
"""Drives one benchmark run of sluice: start the release server on a fresh data dir, upload a
generated products file over HTTP, poll until the job completes, report time, rows/s, peak RSS.

Used by bench/import-sqlite.sh; see BENCHMARKS.md for recorded figures."""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
GEN = os.path.join(HERE, "..", "..", "shared", "datagen", "gen_products.py")
TOKEN = "bench-token"


def request(base, method, path, body=None, headers=None):
    req = urllib.request.Request(base + path, data=body, method=method)
    req.add_header("Authorization", f"Bearer {TOKEN}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    with urllib.request.urlopen(req, timeout=600) as resp:
        return resp.status, json.loads(resp.read() or b"null")


def peak_rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_import(base, path, dataset="products"):
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        t0 = time.monotonic()
        status, body = request(
            base, "POST", f"/api/v1/import/{dataset}?filename={os.path.basename(path)}",
            body=f, headers={"Content-Type": "text/csv", "Content-Length": str(size)})
    uploaded = time.monotonic()
    assert status == 202, body
    job = body["data"]["jobId"]
    while True:
        _, st = request(base, "GET", f"/api/v1/import/status/{job}")
        d = st["data"]
        if d["status"] in ("completed", "failed", "cancelled"):
            break
        time.sleep(0.05)
    done = time.monotonic()
    return {"upload_s": uploaded - t0, "import_s": done - uploaded, "status": d}


def psql(server, sql):
    subprocess.run(["psql", f"{server}/postgres", "-qc", sql], check=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--rows", type=int, default=700000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--format", choices=["csv", "xlsx"], default="csv",
                    help="file format to generate (xlsx: shared strings, serial dates)")
    ap.add_argument("--first-only", action="store_true",
                    help="only the initial import (no second, overlapping file)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--postgres", metavar="SERVER_URL", default=None,
                    help="run on PostgreSQL: a fresh database is created on this server "
                         "(e.g. postgres://postgres@127.0.0.1:5432) and dropped afterwards")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="sluice-bench-")
    ext = args.format
    first = os.path.join(work, f"products.{ext}")
    second = os.path.join(work, f"update.{ext}")
    subprocess.run([sys.executable, GEN, "--rows", str(args.rows), "--seed", "1", "--out", first], check=True)
    if not args.first_only:
        subprocess.run([sys.executable, GEN, "--rows", str(args.rows), "--seed", "2",
                        "--start-sku", str(args.rows // 2 + 1), "--out", second], check=True)
    print(f"files: {os.path.getsize(first) / 1e6:.1f} MB {ext}")

    env = dict(os.environ, SLUICE_ADMIN_TOKEN=TOKEN, SLUICE_LOG="warn")
    cmd = [args.binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", os.path.join(work, "data"),
           "--workers", str(args.workers)]
    database = None
    if args.postgres:
        database = "sluice_bench_%d" % os.getpid()
        psql(args.postgres, f"CREATE DATABASE {database}")
        cmd += ["--database-url", f"{args.postgres}/{database}"]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    try:
        base = None
        for line in server.stdout:
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                base = m.group(1)
                break
        assert base, "server did not start"
        runs = [("initial import (all new keys)", first)]
        if not args.first_only:
            runs.append(("second import (half the keys overlap, values changed)", second))
        for label, path in runs:
            r = run_import(base, path)
            d = r["status"]
            rows = d["progress"]["total"]
            print(f"{label}: {rows} rows, status {d['status']}")
            total = r['upload_s'] + r['import_s']
            print(f"  upload {r['upload_s']:.2f} s; upload end -> completed {r['import_s']:.2f} s "
                  f"({rows / r['import_s']:.0f} rows/s); end to end {total:.2f} s")
            print(f"  created {d['createdCount']} updated {d['updatedCount']} "
                  f"unchanged {d['unchangedCount']} errors {d['errorCount']}")
            print(f"  server peak RSS so far: {peak_rss_mb(server.pid):.1f} MB")
    finally:
        server.terminate()
        server.wait(timeout=60)
        if database:
            psql(args.postgres, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
