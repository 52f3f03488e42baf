#!/usr/bin/env bash
# Benchmark: analyse (dryRun=true) a 700k-row products CSV, then import the same stored file
# (POST /api/v1/import/{id}/run) over the same table, which holds half the file's keys with
# other values. Prints both times, their ratio (target: analysis <= 60 % of the import) and the
# server's peak RSS (VmHWM) after each.
#   bench/analyze.sh [ROWS] [--postgres postgres://postgres@127.0.0.1:5432] [--error-rate 0.05] [--format xlsx]
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS="${1:-700000}"
TARGET="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet
exec python3 bench/analyze_bench.py --binary "$TARGET/release/sluice" --rows "$ROWS" "${@:2}"
