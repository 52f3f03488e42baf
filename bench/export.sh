#!/usr/bin/env bash
# Benchmark: export a products table (default 700k rows) to CSV and to XLSX through the HTTP
# API, each on a freshly started release server (peak RSS = the export's), with
# `sqlite3 .mode csv .once` as the reference in the same run.
#   bench/export.sh [ROWS] [--postgres postgres://postgres@127.0.0.1:5432]
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS="${1:-700000}"
cargo build --release --quiet
exec python3 bench/export_bench.py --binary "${CARGO_TARGET_DIR:-target}/release/sluice" --rows "$ROWS" "${@:2}"
