"""Scenario `mixed` of bench/load.py: many organisations importing at once while clients watch.

--mixed-orgs organisations (5) each upload --mixed-jobs files (4) at the same moment — CSV and
XLSX in turn, sizes from --mixed-sizes (10k to 200k rows, 3% invalid) — so 20 imports are queued
together. For --mixed-seconds (300) the clients then send --status-rate status requests per second
(each org's token asking for its own jobs, round robin) and keep --mixed-sse SSE clients (100) on
the jobs' event streams. Afterwards every job must have finished with the generator's exact counts.

Reported: the outcome of every request by code (only 200, `503 busy` and `429` are allowed),
status latency p50/p99, the server's RSS peak and at the end, the database connections' peak
(PostgreSQL: pg_stat_activity), and fairness: how long each organisation waited for its first job
to start, and the order in which organisations' first jobs started.
"""

import asyncio
import os
from datetime import datetime
import subprocess
import time
from collections import Counter

import load
from load import Http, Stat, check_counts, classify, finish_common, outcome_of_exception, run_gen, \
    sse_client, steady


def cli(args, *argv):
    """`sluice ARGV` on the bench's store (data dir, database URL); returns stdout."""
    cmd = [args.binary, *argv, "--data-dir", args.data_dir]
    if args.database_url:
        cmd += ["--database-url", args.database_url]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env["SLUICE_LOG"] = "warn"
    return subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout.strip()


def org_token(args, name):
    cli(args, "org", "create", name)
    user = cli(args, "user", "create", "--org", name, "--name", "admin", "--role", "admin")
    return cli(args, "token", "create", "--user", user)


def files(args):
    """(org index, path, expect) for every upload; generated once per work directory."""
    sizes = [int(s) for s in args.mixed_sizes.split(",")]
    out = []
    for o in range(args.mixed_orgs):
        for j in range(args.mixed_jobs):
            rows = sizes[(o + j) % len(sizes)]
            fmt = "xlsx" if (o + j) % 2 else "csv"
            path = os.path.join(args.work, f"mixed-{o}-{j}.{fmt}")
            # Each job of an organisation has its own skus: every valid row is created.
            start = 1 + j * 1_000_000
            out.append((o, path, run_gen(path, rows, 0.03, 100 + 10 * o + j, start, fmt)))
    return out


async def scenario_mixed(args, server, sampler_box, _expect, _path):
    res = {"scenario": "mixed", "failures": []}
    log_off = os.path.getsize(server.log_path)
    t = time.monotonic()
    uploads = files(args)
    print(f"\n== Scenario mixed: {len(uploads)} imports from {args.mixed_orgs} organisations "
          f"(CSV and XLSX, {sum(e['rows'] for _, _, e in uploads):,} rows), {args.status_rate} status/s "
          f"and {args.mixed_sse} SSE clients for {args.mixed_seconds} s ==")
    print(f"  generated in {time.monotonic() - t:.1f} s; load average {os.getloadavg()[0]:.2f}")
    tokens = [org_token(args, f"org{o}") for o in range(args.mixed_orgs)]
    t0 = time.monotonic()
    jobs = await asyncio.gather(*[
        asyncio.to_thread(server.upload, path, tokens[o]) for o, path, _ in uploads])
    t_up = time.monotonic()
    print(f"  {len(jobs)} uploads accepted in {t_up - t0:.1f} s")
    owner = {job: tokens[o] for job, (o, _, _) in zip(jobs, uploads)}
    https = {tok: Http(server.host, server.port, args.timeout, tok) for tok in tokens}
    st_status, st_connect, st_events = Stat("status"), Stat("sse connect"), Stat("sse events")
    state = {"connected": 0, "finished_at": None}
    sampler_box["gauges"]["sse_connected"] = lambda: state["connected"]
    stop = asyncio.Event()
    turn = {"i": 0}

    async def one_status(due, skipped=False):
        if skipped:
            st_status.add("client in-flight cap")
            return
        job = jobs[turn["i"] % len(jobs)]
        turn["i"] += 1
        loop = asyncio.get_running_loop()
        lag = loop.time() - due
        try:
            status, h, body = await asyncio.wait_for(
                https[owner[job]].get(f"/api/v1/import/status/{job}"), args.timeout)
        except Exception as e:  # noqa: BLE001
            st_status.add(outcome_of_exception(e), lag=lag)
            return
        st_status.add(classify(status, h, body), loop.time() - due, lag)

    clients = []
    for i in range(args.mixed_sse):
        job = jobs[i % len(jobs)]
        clients.append(asyncio.ensure_future(sse_client(
            https[owner[job]], job, f"/api/v1/import/{job}/events", st_connect, st_events, state, stop)))
    t1 = time.monotonic()
    pending = await steady(args.status_rate, args.mixed_seconds, one_status, args.max_inflight)
    t2 = time.monotonic()
    stop.set()
    for c in clients:
        c.cancel()
    await asyncio.gather(*clients, return_exceptions=True)
    if pending:
        _, late = await asyncio.wait(pending, timeout=args.timeout + 5)
        for x in late:
            x.cancel()
    for h in https.values():
        h.close()
    print(f"  load window {t2 - t1:.1f} s; waiting for the imports to finish …")
    finals = await asyncio.gather(*[
        asyncio.to_thread(server.wait_done, job, args.import_timeout, owner[job]) for job in jobs])
    exact = 0
    # The imports' span from the jobs' own timestamps: first created to last completed.
    stamps = [(datetime.fromisoformat(f["createdAt"]), datetime.fromisoformat(f["completedAt"]))
              for f in finals if f.get("completedAt")]
    span = (max(c for _, c in stamps) - min(a for a, _ in stamps)).total_seconds() if stamps else None
    for job, final, (o, path, expect) in zip(jobs, finals, uploads):
        got, diff = check_counts(final, expect)
        if diff:
            res["failures"].append(f"job {job} ({os.path.basename(path)}): {diff}")
        else:
            exact += 1
    # Fairness: when each organisation's first job started (the jobs' own startedAt), counted
    # from the first upload.
    t_first = min(datetime.fromisoformat(f["createdAt"]) for f in finals)
    first = {}
    for final, (o, _, _) in zip(finals, uploads):
        if final.get("startedAt"):
            at = (datetime.fromisoformat(final["startedAt"]) - t_first).total_seconds()
            first[o] = min(first.get(o, 1e9), at)
    waits = {f"org{o}": round(first[o], 1) for o in sorted(first)}
    order = [f"org{o}" for o in sorted(first, key=first.get)]
    durations = sorted(
        (datetime.fromisoformat(f["completedAt"]) - datetime.fromisoformat(f["startedAt"])).total_seconds()
        for f in finals if f.get("startedAt") and f.get("completedAt"))
    # The resident memory once everything is over and the idle threads have gone.
    await asyncio.sleep(args.mixed_after)
    sampler = sampler_box["sampler"]
    res.update(
        jobs=len(jobs), jobs_exact=exact, import_s=span and round(span, 1),
        status=st_status.summary(), sse_connect=st_connect.summary(), sse_events=dict(st_events.outcomes),
        first_job_started_s=waits, first_job_order=order,
        job_seconds_max=durations and round(durations[-1], 1),
        rss_peak_mb=round(sampler.max_rss_mb(t0, time.monotonic()) or 0, 1),
        rss_end_mb=round((sampler.rss_kb() or 0) / 1024, 1),
        db_conns_max=sampler.max_conns(t0, time.monotonic()),
    )
    print(st_status.line())
    print(st_connect.line())
    print(f"  sse events     {dict(st_events.outcomes)}")
    print(f"  all {len(jobs)} imports done {span:.1f} s after the first upload (the jobs' timestamps); "
          f"{exact} with exact counts")
    print(f"  first job of each organisation started after (s): {waits}; longest job "
          f"{res['job_seconds_max']} s")
    print(f"  RSS peak {res['rss_peak_mb']} MB, {args.mixed_after:.0f} s after the end {res['rss_end_mb']} MB")
    allowed = {"200", "503 busy", "429 rate_limited"}
    if st_status.bad(allowed):
        res["failures"].append(f"status requests: {st_status.bad(allowed)}")
    if st_connect.bad(allowed | {"204"}):
        res["failures"].append(f"SSE connects: {st_connect.bad(allowed | {'204'})}")
    bad_events = Counter({k: v for k, v in st_events.outcomes.items() if k.startswith("stream ")})
    if bad_events:
        res["failures"].append(f"SSE streams: {dict(bad_events)}")
    finish_common(args, server, sampler, res, t1, t2, log_off)
    return res


def add_arguments(ap):
    ap.add_argument("--mixed-orgs", type=int, default=5, help="scenario mixed: organisations (5)")
    ap.add_argument("--mixed-jobs", type=int, default=4, help="scenario mixed: uploads per organisation (4)")
    ap.add_argument("--mixed-sizes", default="10000,50000,100000,200000",
                    help="scenario mixed: file sizes in rows, used in turn")
    ap.add_argument("--mixed-seconds", type=float, default=300.0, help="scenario mixed: load window (300)")
    ap.add_argument("--mixed-sse", type=int, default=100, help="scenario mixed: SSE clients (100)")
    ap.add_argument("--mixed-after", type=float, default=15.0,
                    help="scenario mixed: seconds after the end before the final RSS (15)")


assert load  # the module's globals (TOKEN, DB_CAP) are shared
