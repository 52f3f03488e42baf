#!/usr/bin/env python3
"""Rollback benchmark: on a fresh server, import N rows (all new keys), then a second file that
updates half of them and creates as many new ones; roll the second import back, then the first.
Each rollback's time is printed with its reference, measured in the same run: the import it
undoes (a rollback does the same number of row writes the other way round).

With --replace, the first file is imported again with mode=replace instead (its swap deletes the
second file's new keys and puts the first file's values back on the keys it updated, all of it
ledgered), then that replace is rolled back. The replace's reference is the second import (an
upsert with as many row writes).

    bench/rollback_bench.py --binary target/release/sluice [--rows 100000] [--postgres URL]
                            [--replace]

See BENCHMARKS.md for recorded figures."""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from import_bench import GEN, request, run_import, server_at, wait_job  # noqa: E402


def rollback(base, job):
    t0 = time.monotonic()
    status, body = request(base, "POST", f"/api/v1/import/{job}/rollback")
    assert status == 202, body
    d = wait_job(base, body["data"]["jobId"])
    assert d["status"] == "completed", d
    return time.monotonic() - t0, d


def replace(base, path, reference):
    imp = run_import(base, path, query="&mode=replace")
    d, job, seconds = imp["status"], imp["status"]["jobId"], imp["import_s"]
    assert d["status"] == "completed", d
    print(f"replace: {seconds:.2f} s (created {d['createdCount']}, deleted {d['deletedCount']}); "
          f"the second import {reference['import_s']:.2f} s, ratio "
          f"{seconds / reference['import_s']:.2f}x")
    try:
        back, r = rollback(base, job)
    except urllib.error.HTTPError as e:  # a binary from before replace was ledgered: 409
        print(f"rollback of the replace: refused ({e.code})")
        return
    entries = r["progress"]["total"]
    print(f"rollback of the replace: {entries} entries in {back:.2f} s ({entries / back:.0f}/s),"
          f" ratio to the replace {back / seconds:.2f}x")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--rows", type=int, default=100000)
    ap.add_argument("--postgres", metavar="SERVER_URL", default=None)
    ap.add_argument("--replace", action="store_true",
                    help="time a replace of the first file and its rollback instead")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="sluice-rollback-")
    first, second = os.path.join(work, "a.csv"), os.path.join(work, "b.csv")
    subprocess.run([sys.executable, GEN, "--rows", str(args.rows), "--seed", "1", "-q",
                    "--out", first], check=True)
    subprocess.run([sys.executable, GEN, "--rows", str(args.rows), "--seed", "2", "-q",
                    "--start-sku", str(args.rows // 2 + 1), "--out", second], check=True)
    try:
        with server_at(args.binary, os.path.join(work, "data"), args.postgres) as (base, _):
            imports = [run_import(base, first), run_import(base, second)]
            if args.replace:
                replace(base, first, imports[1])
                return
            labels = ["first (all created)", "second (half updated, half created)"]
            for label, imp in reversed(list(zip(labels, imports))):
                seconds, r = rollback(base, imp["status"]["jobId"])
                entries = r["progress"]["total"]
                print(f"rollback of the {label} import: {entries} entries in {seconds:.2f} s "
                      f"({entries / seconds:.0f}/s), deleted {r['deletedCount']} restored "
                      f"{r['updatedCount']}; its import {imp['import_s']:.2f} s, "
                      f"ratio {seconds / imp['import_s']:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)

if __name__ == "__main__":
    main()
