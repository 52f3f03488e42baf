#!/usr/bin/env bash
# Load benchmark: SSE clients + status polling during an import, then slow readers of the
# rejected-rows CSV, then whole downloads of a 300k-row one (bench/load.py; see BENCHMARKS.md). Builds nothing: it runs $SLUICE_BIN
# (default target/release/sluice) on a fresh data directory and, for postgres, a fresh database
# `sluice_load_<random>` on the local server, both removed at the end.
#   bench/load.sh [sqlite|postgres] [load.py options]     e.g. bench/load.sh postgres --scenarios slow,download
# Exit status: 0 all checks passed, 1 a check failed, 2 the bench could not run.
# The last line on standard output is a one-line JSON summary.
#
# On PostgreSQL the server connects as a throw-away role `sluice_load_<random>` that owns the
# database and has CONNECTION LIMIT $SLUICE_LOAD_PG_CONN_LIMIT (default 60), so a server that opens
# connections without bound cannot take all of the shared server's max_connections from everybody
# else; its refused connections show in the report as server errors. SLUICE_LOAD_PG_CONN_LIMIT=-1
# connects as the admin user without a limit.
set -euo pipefail
cd "$(dirname "$0")/.."

BACKEND=sqlite
case "${1:-}" in
  sqlite|postgres) BACKEND="$1"; shift ;;
  -h|--help) sed -n '2,14p' "$0"; exec python3 bench/load.py --help ;;
  ""|-*) ;;
  *) echo "usage: bench/load.sh [sqlite|postgres] [load.py options]" >&2; exit 2 ;;
esac

BIN="${SLUICE_BIN:-target/release/sluice}"
if [[ ! -x "$BIN" ]]; then
  echo "no sluice binary at $BIN: build it first (cargo build --release), or set SLUICE_BIN" >&2
  exit 2
fi
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"

PG_HOST="${SLUICE_LOAD_PG_HOST:-127.0.0.1}"
PG_PORT="${SLUICE_LOAD_PG_PORT:-5432}"
PG_ADMIN="${SLUICE_LOAD_PG_ADMIN:-postgres}"
PG_CONN_LIMIT="${SLUICE_LOAD_PG_CONN_LIMIT:-60}"
export SLUICE_LOAD_PG_HOST="$PG_HOST" SLUICE_LOAD_PG_PORT="$PG_PORT" SLUICE_LOAD_PG_ADMIN="$PG_ADMIN"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/sluice-load-XXXXXX")"
DB=""
ROLE=""
psql_admin() { psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_ADMIN" -d postgres -v ON_ERROR_STOP=1 -qAtc "$1"; }
cleanup() {
  local rc=$?
  if [[ -n "$DB" ]]; then
    psql_admin "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || echo "could not drop database $DB" >&2
  fi
  if [[ -n "$ROLE" ]]; then
    psql_admin "DROP ROLE IF EXISTS $ROLE" || echo "could not drop role $ROLE" >&2
  fi
  if [[ -n "${SLUICE_LOAD_KEEP:-}" ]]; then
    echo "kept $WORK (server.log, generated files, data dir)" >&2
  else
    rm -rf "$WORK"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ARGS=(--binary "$BIN" --backend "$BACKEND" --data-dir "$WORK/data" --work "$WORK")
if [[ "$BACKEND" == postgres ]]; then
  SUFFIX="$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
  DB="sluice_load_$SUFFIX"
  if [[ "$PG_CONN_LIMIT" == -1 ]]; then
    psql_admin "CREATE DATABASE $DB"
    URL_USER="$PG_ADMIN"
  else
    ROLE="sluice_load_$SUFFIX"
    psql_admin "CREATE ROLE $ROLE LOGIN CONNECTION LIMIT $PG_CONN_LIMIT"
    psql_admin "CREATE DATABASE $DB OWNER $ROLE"
    URL_USER="$ROLE"
    ARGS+=(--pg-conn-limit "$PG_CONN_LIMIT")
  fi
  ARGS+=(--database-url "postgres://$URL_USER@$PG_HOST:$PG_PORT/$DB" --pg-db "$DB")
  echo "database $DB on $PG_HOST:$PG_PORT (dropped at the end)"
fi

python3 bench/load.py "${ARGS[@]}" "$@"
