#!/usr/bin/env python3
"""Drives one benchmark run of sluice: start the release server on a fresh data dir, upload a
generated products file over HTTP, poll until the job completes, report time, rows/s, peak RSS —
and, in the same run, the reference the figure is judged against:

- SQLite: `sqlite3 .import` of the same CSV into a table with a text primary key (and, for the
  update pass, `.import` into a scratch table plus one `INSERT … ON CONFLICT DO UPDATE`);
- PostgreSQL: `psql \\copy` into a typed table with a primary key (update pass: `\\copy` into a
  scratch table plus one upsert);
- XLSX: the same rows as CSV through sluice, on a fresh server.

Each figure is printed with its ratio to the reference. `--runs N` repeats everything N times
(references and sluice alternate, so a machine that gets busy shows in both).

Used by bench/import-*.sh; see BENCHMARKS.md for recorded figures."""

import argparse
import contextlib
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


def cpu_seconds(pid):
    """User + system CPU seconds of a process and all its threads so far (`/proc/PID/stat`):
    steadier than wall time on a shared machine, so small changes show in it first."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_import(base, path, dataset="products", query=""):
    """Uploads `path` (`query`: more parameters, `&mode=replace`) and waits for its job."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        t0 = time.monotonic()
        status, body = request(
            base, "POST", f"/api/v1/import/{dataset}?filename={os.path.basename(path)}{query}",
            body=f, headers={"Content-Type": "text/csv", "Content-Length": str(size)})
    uploaded = time.monotonic()
    assert status == 202, body
    d = wait_job(base, body["data"]["jobId"])
    done = time.monotonic()
    return {"upload_s": uploaded - t0, "import_s": done - uploaded, "status": d}


def wait_job(base, job):
    """Polls a job's status until it ends; its last status."""
    while True:
        _, st = request(base, "GET", f"/api/v1/import/status/{job}")
        d = st["data"]
        if d["status"] in ("completed", "failed", "cancelled"):
            return d
        time.sleep(0.05)


@contextlib.contextmanager
def server_at(binary, data, postgres=None, extra=()):
    """Starts `sluice serve` on a free port with `data` as its data dir (and, with `postgres`,
    a fresh database on that server, dropped afterwards); yields (base URL, process). The
    process's `storage` holds the arguments that name its store, for `sluice` CLI commands
    against the same data."""
    env = dict(os.environ, SLUICE_ADMIN_TOKEN=TOKEN, SLUICE_LOG="warn")
    storage = ["--data-dir", data]
    database = None
    if postgres:
        database = "sluice_bench_%d" % os.getpid()
        psql(postgres, f"CREATE DATABASE {database}")
        storage += ["--database-url", f"{postgres}/{database}"]
    cmd = [binary, "serve", "--listen", "127.0.0.1:0", *storage, *extra]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    server.storage = storage
    try:
        base = None
        for line in server.stdout:
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                base = m.group(1)
                break
        assert base, "server did not start"
        yield base, server
    finally:
        server.terminate()
        server.wait(timeout=60)
        if database:
            psql(postgres, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def psql(server, sql, database="postgres"):
    subprocess.run(["psql", f"{server}/{database}", "-qc", sql], check=True,
                   stdout=subprocess.DEVNULL)


COLUMNS = "sku TEXT PRIMARY KEY, name TEXT, category TEXT, price {dec}, stock INTEGER, updated_at {date}"
UPSERT = ("INSERT INTO products SELECT * FROM stage WHERE true ON CONFLICT (sku) DO UPDATE SET "
          "name = excluded.name, category = excluded.category, price = excluded.price, "
          "stock = excluded.stock, updated_at = excluded.updated_at")


def timed(f):
    t0 = time.monotonic()
    f()
    return time.monotonic() - t0


def sqlite_reference(work, first, second):
    """Seconds for `sqlite3 .import` of the first file, and of the second as an upsert."""
    db = os.path.join(work, "reference.db")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db + suffix):
            os.remove(db + suffix)
    cols = COLUMNS.format(dec="NUMERIC", date="TEXT")
    subprocess.run(["sqlite3", db, "PRAGMA journal_mode=WAL;", f"CREATE TABLE products ({cols});",
                    f"CREATE TABLE stage ({cols});"], check=True, stdout=subprocess.DEVNULL)
    out = {"initial": timed(lambda: subprocess.run(
        ["sqlite3", db, f".import --csv --skip 1 {first} products"], check=True))}
    if second:
        out["update"] = timed(lambda: subprocess.run(
            ["sqlite3", db, f".import --csv --skip 1 {second} stage", UPSERT + ";"], check=True))
    return out


def postgres_reference(server, first, second):
    """Seconds for `psql \\copy` of the first file, and of the second as an upsert."""
    database = "sluice_bench_ref_%d" % os.getpid()
    psql(server, f"CREATE DATABASE {database}")
    try:
        cols = COLUMNS.format(dec="NUMERIC(12,2)", date="DATE")
        psql(server, f"CREATE TABLE products ({cols}); CREATE TABLE stage ({cols})", database)
        out = {"initial": timed(lambda: psql(
            server, f"\\copy products FROM '{first}' CSV HEADER", database))}
        if second:
            out["update"] = timed(lambda: psql(
                server, f"\\copy stage FROM '{second}' CSV HEADER", database)
            ) + timed(lambda: psql(server, UPSERT, database))
        return out
    finally:
        psql(server, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def bench_server(args, work, runs, binary=None):
    """Starts a fresh server (`binary`, else `--binary`), imports each (label, path) in turn;
    returns the end-to-end seconds and prints each run."""
    data = tempfile.mkdtemp(prefix="data-", dir=work)
    times = []
    try:
        with server_at(binary or args.binary, data, args.postgres,
                       ["--workers", str(args.workers), *args.server_arg]) as (base, server):
            for label, path in runs:
                cpu = cpu_seconds(server.pid)
                r = run_import(base, path)
                cpu = cpu_seconds(server.pid) - cpu
                d = r["status"]
                rows = d["progress"]["total"]
                assert d["status"] == "completed", d
                total = r["upload_s"] + r["import_s"]
                times.append(total)
                print(f"{label}: {rows} rows, status {d['status']}")
                print(f"  upload {r['upload_s']:.2f} s; upload end -> completed "
                      f"{r['import_s']:.2f} s ({rows / r['import_s']:.0f} rows/s); "
                      f"end to end {total:.2f} s")
                print(f"  created {d['createdCount']} updated {d['updatedCount']} "
                      f"unchanged {d['unchangedCount']} errors {d['errorCount']}")
                print(f"  server CPU {cpu:.2f} s (sluice only; not the database server's)")
                print(f"  server peak RSS so far: {peak_rss_mb(server.pid):.1f} MB")
    finally:
        shutil.rmtree(data, ignore_errors=True)
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--baseline", metavar="BINARY", default=None,
                    help="another build to measure in the same run, alternating with --binary "
                         "(each run: the reference, then this, then --binary), so a change is "
                         "judged against the build before it in the same minutes")
    ap.add_argument("--rows", type=int, default=700000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--format", choices=["csv", "xlsx"], default="csv",
                    help="file format to generate (xlsx: shared strings, serial dates)")
    ap.add_argument("--first-only", action="store_true",
                    help="only the initial import (no second, overlapping file)")
    ap.add_argument("--runs", type=int, default=1, help="repeat the whole measurement N times")
    ap.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                    help="one more argument for `sluice serve` (repeat: --server-arg=--chunk-rows=0)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--postgres", metavar="SERVER_URL", default=None,
                    help="run on PostgreSQL: a fresh database is created on this server "
                         "(e.g. postgres://postgres@127.0.0.1:5432) and dropped afterwards")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="sluice-bench-")
    files = {}
    for ext in {"csv", args.format}:
        files[ext] = [os.path.join(work, f"products.{ext}")]
        subprocess.run([sys.executable, GEN, "--rows", str(args.rows), "--seed", "1",
                        "--out", files[ext][0]], check=True)
        if not args.first_only:
            files[ext].append(os.path.join(work, f"update.{ext}"))
            subprocess.run([sys.executable, GEN, "--rows", str(args.rows), "--seed", "2",
                            "--start-sku", str(args.rows // 2 + 1), "--out", files[ext][1]],
                           check=True)
        print(f"files: {os.path.getsize(files[ext][0]) / 1e6:.1f} MB {ext}")
    labels = ["initial import (all new keys)",
              "second import (half the keys overlap, values changed)"]
    csv_first, csv_second = files["csv"][0], (files["csv"][1:] or [None])[0]
    summary = []
    try:
        for run in range(1, args.runs + 1):
            print(f"== run {run} of {args.runs}")
            if args.format == "xlsx":
                name = "sluice CSV (the XLSX reference)"
                ref = bench_server(args, work, list(zip(labels, files["csv"])))
            elif args.postgres:
                name = "psql \\copy"
                ref = list(postgres_reference(args.postgres, csv_first, csv_second).values())
            else:
                name = "sqlite3 .import"
                ref = list(sqlite_reference(work, csv_first, csv_second).values())
            for label, seconds in zip(labels, ref):
                print(f"reference, {name}, {label}: {seconds:.2f} s")
            builds = [("sluice", args.binary)]
            if args.baseline:
                builds.insert(0, ("baseline", args.baseline))
            for who, binary in builds:
                print(f"-- {who}: {binary}")
                mine = bench_server(args, work, list(zip(labels, files[args.format])), binary)
                for label, a, b in zip(labels, mine, ref):
                    line = (f"run {run}, {label}: {who} {a:.2f} s, {name} {b:.2f} s, "
                            f"ratio {a / b:.2f}x")
                    print(line)
                    summary.append(line)
        print("== summary")
        print("\n".join(summary))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
