#!/usr/bin/env bash
# Benchmark: import a generated products XLSX (shared strings, serial dates, as Excel writes
# them) through the HTTP API on the embedded SQLite store. Prints seconds, rows/s and the
# server's peak RSS (VmHWM).
#   bench/import-xlsx.sh [ROWS] [--first-only]     (default 700000)
# Then imports a second XLSX that overlaps half the keys with changed values (the update path).
# In the same run it measures its reference, the same rows as CSV through sluice on a fresh server, and prints the ratio.
# Extra arguments go to bench/import_bench.py (e.g. --runs 3, --first-only, or --baseline OLDER_BINARY
# to measure an earlier build in the same run, alternating).
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS="${1:-700000}"
cargo build --release --quiet
exec python3 bench/import_bench.py --binary target/release/sluice --format xlsx --rows "$ROWS" "${@:2}"
