#!/usr/bin/env bash
# Benchmark: the same two imports as bench/import-sqlite.sh, on PostgreSQL (a fresh database on
# the local server, dropped afterwards).
#   bench/import-postgres.sh [ROWS] [SERVER_URL]   (defaults: 700000, postgres://postgres@127.0.0.1:5432)
# In the same run it measures its reference, `psql \copy` into a typed table with a primary key (update pass: `\copy` into a scratch table plus one upsert), and prints the ratio.
# Extra arguments go to bench/import_bench.py (e.g. --runs 3, --first-only, or --baseline OLDER_BINARY
# to measure an earlier build in the same run, alternating).
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS="${1:-700000}"
SERVER="${2:-postgres://postgres@127.0.0.1:5432}"
cargo build --release --quiet
exec python3 bench/import_bench.py --binary target/release/sluice --rows "$ROWS" --postgres "$SERVER" "${@:3}"
