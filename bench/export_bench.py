#!/usr/bin/env python3
"""Export benchmark: import a generated products file once (release server, fresh data dir),
then for each format restart the server (so its peak RSS, VmHWM, covers the export alone),
export over the HTTP API, poll to `completed`, download, and report the export time (POST to
completed), the download time, the file size, the peak RSS and the RSS sampled while it ran.
As a reference in the same run (SQLite): `sqlite3 DB .mode csv .once F "SELECT …"`.

Used by bench/export.sh; figures in BENCHMARKS.md."""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
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


def status_mb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def wait(base, job):
    while True:
        _, st = request(base, "GET", f"/api/v1/import/status/{job}")
        d = st["data"]
        if d["status"] in ("completed", "failed", "cancelled"):
            return d
        time.sleep(0.02)


class Server:
    def __init__(self, binary, data, database_url):
        env = dict(os.environ, SLUICE_ADMIN_TOKEN=TOKEN, SLUICE_LOG="warn")
        cmd = [binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", data, "--workers", "2"]
        if database_url:
            cmd += ["--database-url", database_url]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
        self.base = None
        for line in self.proc.stdout:
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                self.base = m.group(1)
                break
        assert self.base, "server did not start"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--rows", type=int, default=700000)
    ap.add_argument("--postgres", metavar="SERVER_URL", default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="sluice-export-bench-")
    data = os.path.join(work, "data")
    source = os.path.join(work, "products.csv")
    subprocess.run([sys.executable, GEN, "--rows", str(args.rows), "--seed", "1", "--out", source,
                    "-q"], check=True)
    database = url = None
    if args.postgres:
        database = "sluice_export_bench_%d" % os.getpid()
        subprocess.run(["psql", f"{args.postgres}/postgres", "-qc", f"CREATE DATABASE {database}"],
                       check=True)
        url = f"{args.postgres}/{database}"
    try:
        server = Server(args.binary, data, url)
        size = os.path.getsize(source)
        with open(source, "rb") as f:
            t0 = time.monotonic()
            st, body = request(server.base, "POST", "/api/v1/import/products?filename=p.csv",
                               body=f, headers={"Content-Type": "text/csv",
                                                "Content-Length": str(size)})
        d = wait(server.base, body["data"]["jobId"])
        print(f"{args.rows} rows imported in {time.monotonic() - t0:.2f} s ({d['status']}); "
              f"backend {'postgres' if url else 'sqlite'}")
        server.stop()
        for fmt in ("csv", "xlsx"):
            server = Server(args.binary, data, url)
            samples = []
            stop = threading.Event()

            def sample():
                while not stop.is_set():
                    samples.append(status_mb(server.proc.pid, "VmRSS"))
                    time.sleep(0.05)
            idle = status_mb(server.proc.pid, "VmRSS")
            sampler = threading.Thread(target=sample)
            sampler.start()
            t0 = time.monotonic()
            st, body = request(server.base, "POST", "/api/v1/export/products",
                               body=json.dumps({"format": fmt, "formulaSafe": False}).encode(),
                               headers={"Content-Type": "application/json"})
            d = wait(server.base, body["data"]["jobId"])
            took = time.monotonic() - t0
            stop.set()
            sampler.join()
            out = os.path.join(work, f"export.{fmt}")
            t1 = time.monotonic()
            req = urllib.request.Request(server.base + d["downloadUrl"])
            req.add_header("Authorization", f"Bearer {TOKEN}")
            with urllib.request.urlopen(req, timeout=600) as resp, open(out, "wb") as f:
                shutil.copyfileobj(resp, f, 1 << 20)
            download = time.monotonic() - t1
            peak = status_mb(server.proc.pid, "VmHWM")
            print(f"export {fmt}: {d['results']['totalRows']} rows, {d['status']}, POST -> completed "
                  f"{took:.2f} s ({d['results']['totalRows'] / took:.0f} rows/s); download "
                  f"{download:.2f} s; file {os.path.getsize(out) / 1e6:.1f} MB")
            print(f"  server RSS idle {idle:.1f} MB, sampled max during the export "
                  f"{max(samples or [0]):.1f} MB, peak (VmHWM, this process) {peak:.1f} MB")
            server.stop()
        if url:
            ref = os.path.join(work, "psql.csv")
            t0 = time.monotonic()
            subprocess.run(["psql", url, "-qc",
                            f"\\copy (SELECT sku, name, category, price, stock, updated_at FROM "
                            f"products WHERE _sluice_org = 1 ORDER BY _sluice_org, sku) TO '{ref}' "
                            f"CSV HEADER"], check=True)
            print(f"reference psql \\copy (SELECT …) TO file CSV: {time.monotonic() - t0:.2f} s, "
                  f"{os.path.getsize(ref) / 1e6:.1f} MB")
        else:
            db = os.path.join(data, "sluice.db")
            ref = os.path.join(work, "sqlite3.csv")
            t0 = time.monotonic()
            subprocess.run(["sqlite3", db, ".headers on", ".mode csv", f".once {ref}",
                            "SELECT sku, name, category, price, stock, updated_at FROM products "
                            "WHERE _sluice_org = 1 ORDER BY _sluice_org, sku"], check=True)
            print(f"reference sqlite3 .mode csv .once: {time.monotonic() - t0:.2f} s, "
                  f"{os.path.getsize(ref) / 1e6:.1f} MB")
    finally:
        if database:
            subprocess.run(["psql", f"{args.postgres}/postgres", "-qc",
                            f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"])
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
