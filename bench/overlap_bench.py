#!/usr/bin/env python3
"""What one writer per (organisation, dataset) costs: two files uploaded at the same instant,
into two organisations (they run side by side) and into one organisation (they take turns), on
one release server. The same rows are written either way; the ratio is the price of the rule.

    cargo build --release
    python3 bench/overlap_bench.py --binary target/release/sluice --rows 200000 [--postgres URL]

File A has --rows rows with 3% invalid (some keys repeated inside it), file B the same keys with
other values and no errors. Each scenario uses fresh organisations, so both write new rows.
Prints the wall time from the two uploads to both jobs completed, per scenario, and checks that
every job's counts equal its file's expected counts. See BENCHMARKS.md for recorded figures."""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from import_bench import GEN, TOKEN, server_at  # noqa: E402


def request(base, token, method, path, body=None, headers=None):
    req = urllib.request.Request(base + path, data=body, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    with urllib.request.urlopen(req, timeout=600) as resp:
        return resp.status, json.loads(resp.read() or b"null")


def upload(base, token, path):
    with open(path, "rb") as f:
        status, body = request(base, token, "POST",
                               f"/api/v1/import/products?filename={os.path.basename(path)}", body=f,
                               headers={"Content-Type": "text/csv",
                                        "Content-Length": str(os.path.getsize(path))})
    assert status == 202, body
    return body["data"]["jobId"]


def wait(base, token, job):
    while True:
        _, st = request(base, token, "GET", f"/api/v1/import/status/{job}")
        if st["data"]["status"] in ("completed", "failed", "cancelled"):
            return st["data"]
        time.sleep(0.05)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", required=True)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--postgres", metavar="SERVER_URL", default=None,
                    help="run on PostgreSQL: a fresh database on this server, dropped afterwards")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="sluice-overlap-")
    files, expect = {}, {}
    for name, seed, rate in (("a", 1, "0.03"), ("b", 2, "0")):
        files[name] = os.path.join(work, f"{name}.csv")
        e = files[name] + ".json"
        subprocess.run([sys.executable, GEN, "--rows", str(args.rows), "--seed", str(seed),
                        "--error-rate", rate, "--out", files[name], "--expect", e, "-q"], check=True)
        with open(e) as f:
            expect[name] = json.load(f)

    env = dict(os.environ, SLUICE_ADMIN_TOKEN=TOKEN, SLUICE_LOG="warn")
    try:
        with server_at(args.binary, os.path.join(work, "data"), args.postgres,
                       ["--workers", str(args.workers)]) as (base, server):
            run(args, base, server.storage, env, files, expect)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args, base, where, env, files, expect):
    """Both scenarios against the server at `base` (its store named by `where`)."""

    def sluice(*a):
        out = subprocess.run([args.binary, *a, *where], capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def org_token(name):
        sluice("org", "create", name)
        user = sluice("user", "create", "--org", name, "--name", "admin", "--role", "admin")
        return sluice("token", "create", "--user", user)

    print(f"{'PostgreSQL' if args.postgres else 'SQLite'}, {args.workers} workers, two files of "
          f"{args.rows:,} rows (A: {expect['a']['invalid_rows']:,} invalid) uploaded at once")
    times = {}
    for scenario, orgs in (("two organisations (side by side)", ("p1", "p2")),
                           ("one organisation (one after another)", ("s", "s"))):
        tokens = {o: org_token(o) for o in set(orgs)}
        jobs = [None, None]

        def go(i, name):
            jobs[i] = upload(base, tokens[orgs[i]], files[name])

        t0 = time.monotonic()
        threads = [threading.Thread(target=go, args=(i, n)) for i, n in enumerate("ab")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done = [wait(base, tokens[orgs[i]], jobs[i]) for i in range(2)]
        times[scenario] = time.monotonic() - t0
        for name, d in zip("ab", done):
            ok = (d["status"] == "completed"
                  and d["createdCount"] + d["updatedCount"] + d["unchangedCount"]
                  == expect[name]["valid_rows"]
                  and d["errorCount"] == expect[name]["invalid_rows"])
            assert ok, f"{scenario}: file {name} counts {d}"
        print(f"  {scenario}: both done in {times[scenario]:.2f} s; counts exact")
    side, turns = times.values()
    print(f"  ratio one organisation / two organisations: {turns / side:.2f}")


if __name__ == "__main__":
    main()
