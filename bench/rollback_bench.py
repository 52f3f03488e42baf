#!/usr/bin/env python3
"""Rollback benchmark: on a fresh server, import N rows (all new keys), then a second file that
updates half of them and creates as many new ones; roll the second import back, then the first.
Each rollback's time is printed with its reference, measured in the same run: the import it
undoes (a rollback does the same number of row writes the other way round).

    bench/rollback_bench.py --binary target/release/sluice [--rows 100000] [--postgres URL]

See BENCHMARKS.md for recorded figures."""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from import_bench import GEN, TOKEN, psql, request, run_import  # noqa: E402


def rollback(base, job):
    t0 = time.monotonic()
    status, body = request(base, "POST", f"/api/v1/import/{job}/rollback")
    assert status == 202, body
    rb = body["data"]["jobId"]
    while True:
        _, st = request(base, "GET", f"/api/v1/import/status/{rb}")
        d = st["data"]
        if d["status"] in ("completed", "failed", "cancelled"):
            break
        time.sleep(0.05)
    assert d["status"] == "completed", d
    return time.monotonic() - t0, d


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--rows", type=int, default=100000)
    ap.add_argument("--postgres", metavar="SERVER_URL", default=None)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="sluice-rollback-")
    first, second = os.path.join(work, "a.csv"), os.path.join(work, "b.csv")
    subprocess.run([sys.executable, GEN, "--rows", str(args.rows), "--seed", "1", "-q",
                    "--out", first], check=True)
    subprocess.run([sys.executable, GEN, "--rows", str(args.rows), "--seed", "2", "-q",
                    "--start-sku", str(args.rows // 2 + 1), "--out", second], check=True)
    data = os.path.join(work, "data")
    env = dict(os.environ, SLUICE_ADMIN_TOKEN=TOKEN, SLUICE_LOG="warn")
    cmd = [args.binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", data]
    database = None
    if args.postgres:
        database = "sluice_rollback_%d" % os.getpid()
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
        imports = [run_import(base, first), run_import(base, second)]
        for label, imp in reversed(list(zip(["first (all created)",
                                             "second (half updated, half created)"],
                                            imports))):
            d = imp["status"]
            seconds, r = rollback(base, d["jobId"])
            entries = r["progress"]["total"]
            print(f"rollback of the {label} import: {entries} entries in {seconds:.2f} s "
                  f"({entries / seconds:.0f}/s), deleted {r['deletedCount']} restored "
                  f"{r['updatedCount']}; its import {imp['import_s']:.2f} s, "
                  f"ratio {seconds / imp['import_s']:.2f}x")
    finally:
        server.terminate()
        server.wait(timeout=60)
        if database:
            psql(args.postgres, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
