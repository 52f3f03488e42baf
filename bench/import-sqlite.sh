#!/usr/bin/env bash
# Benchmark: import a 700k-row products CSV through the HTTP API on the embedded SQLite store.
# Prints seconds from upload end to `completed`, rows/s, and the server's peak RSS (VmHWM).
#   bench/import-sqlite.sh [ROWS]          (default 700000)
# Then imports a second file that overlaps half the keys with changed values (the update path).
# In the same run it measures its reference, `sqlite3 .import` of the same CSV (and, for the update pass, `.import` into a scratch table plus one upsert), and prints the ratio.
# Extra arguments go to bench/import_bench.py (e.g. --runs 3, --first-only, or --baseline OLDER_BINARY
# to measure an earlier build in the same run, alternating).
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS="${1:-700000}"
cargo build --release --quiet
exec python3 bench/import_bench.py --binary target/release/sluice --rows "$ROWS" "${@:2}"
