#!/usr/bin/env python3
"""Analysis (dry run) vs import of the same file, in the same run: start the release server on a
fresh data dir, import a base file holding half the keys of the file under test, then analyse
the file (`dryRun=true`) and import it (`POST /api/v1/import/{id}/run`, the same stored file,
no second upload) over the very same table. Reports both times (upload end -> completed, resp.
/run -> completed), their ratio, and the server's peak RSS after each.

Used by bench/analyze.sh; see BENCHMARKS.md for recorded figures."""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from import_bench import GEN, peak_rss_mb, request, server_at  # noqa: E402


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


PHASE_RSS = [0.0]


def wait(base, job, pid=None):
    """Polls the job to its end; with `pid`, the highest RSS sampled meanwhile (every 50 ms) is
    left in PHASE_RSS[0] (VmHWM only says the process's peak so far)."""
    PHASE_RSS[0] = 0.0
    while True:
        if pid:
            PHASE_RSS[0] = max(PHASE_RSS[0], rss_mb(pid))
        _, st = request(base, "GET", f"/api/v1/import/status/{job}")
        d = st["data"]
        if d["status"] in ("completed", "failed", "cancelled"):
            return d
        time.sleep(0.05)


XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def upload(base, path, query=""):
    size = os.path.getsize(path)
    kind = XLSX_TYPE if path.endswith(".xlsx") else "text/csv"
    with open(path, "rb") as f:
        status, body = request(
            base, "POST", f"/api/v1/import/products?filename={os.path.basename(path)}{query}",
            body=f, headers={"Content-Type": kind, "Content-Length": str(size)})
    assert status == 202, body
    return body["data"]["jobId"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--rows", type=int, default=700000)
    ap.add_argument("--error-rate", type=float, default=0.0)
    ap.add_argument("--format", choices=("csv", "xlsx"), default="csv",
                    help="the analysed file's format (the base file is CSV)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--postgres", metavar="SERVER_URL", default=None)
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="sluice-analyze-")
    base_file = os.path.join(work, "base.csv")
    file = os.path.join(work, f"products.{args.format}")
    half = args.rows // 2
    subprocess.run([sys.executable, GEN, "-q", "--rows", str(half), "--seed", "1",
                    "--start-sku", str(args.rows // 4 + 1), "--out", base_file], check=True)
    subprocess.run([sys.executable, GEN, "-q", "--rows", str(args.rows), "--seed", "2",
                    "--error-rate", str(args.error_rate), "--format", args.format,
                    "--out", file], check=True)
    print(f"file: {args.rows} rows, {os.path.getsize(file) / 1e6:.1f} MB {args.format}; "
          f"the table holds {half} of its keys (other values)")

    try:
        with server_at(args.binary, os.path.join(work, "data"), args.postgres,
                       ["--workers", str(args.workers)]) as (base, server):
            d = wait(base, upload(base, base_file))
            assert d["status"] == "completed", d
            print(f"base import: {d['createdCount']} rows; peak RSS {peak_rss_mb(server.pid):.1f} MB")

            def phase(label, start):
                """Starts a job with `start()`, waits for it and prints its figures."""
                t0 = time.monotonic()
                job = start()
                d = wait(base, job, server.pid)
                seconds = time.monotonic() - t0
                assert d["status"] == "completed", d
                print(f"{label} {seconds:.2f} s ({args.rows / seconds:.0f} rows/s); created "
                      f"{d['createdCount']} updated {d['updatedCount']} unchanged "
                      f"{d['unchangedCount']} errors {d['errorCount']}; RSS sampled during it up "
                      f"to {PHASE_RSS[0]:.1f} MB, peak RSS so far {peak_rss_mb(server.pid):.1f} MB")
                return job, d, seconds

            def run_analysed():
                status, body = request(base, "POST", f"/api/v1/import/{job}/run")
                assert status == 202, body
                return body["data"]["jobId"]

            # The analysis is timed from its upload's answer, the import from its /run request.
            uploaded = upload(base, file, "&dryRun=true")
            job, a, analysis_s = phase("analysis (would be):", lambda: uploaded)
            _, i, import_s = phase("import:", run_analysed)
            same = all(a[k] == i[k] for k in
                       ("createdCount", "updatedCount", "unchangedCount", "errorCount"))
            print(f"analysis / import = {analysis_s / import_s * 100:.0f} %; counts equal: {same}")
            if not same:
                sys.exit(1)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
