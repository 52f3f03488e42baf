#!/usr/bin/env bash
# Benchmark: the same two imports as bench/import-sqlite.sh, on PostgreSQL (a fresh database on
# the local server, dropped afterwards).
#   bench/import-postgres.sh [ROWS] [SERVER_URL]   (defaults: 700000, postgres://postgres@127.0.0.1:5432)
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS="${1:-700000}"
SERVER="${2:-postgres://postgres@127.0.0.1:5432}"
cargo build --release --quiet
exec python3 bench/import_bench.py --binary target/release/sluice --rows "$ROWS" --postgres "$SERVER"
