#!/usr/bin/env bash
# The benchmarks (not part of the test run): builds in release mode, measures, prints
# the table and writes it to docs/benchmarks.md. HTTP load comes from Debian's `wrk`,
# installed here when missing. The PostgreSQL measurements use MWE_BENCH_POSTGRES (a
# URL whose role may create databases), else the tests' server and role.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
  else
    echo "examples/bench.sh: the benchmarks need wrk: sudo apt-get install wrk" >&2
    exit 1
  fi
fi
# Starts PostgreSQL and makes the tests' role unless a server is named already (the
# script also drops the tests' leftover databases, which would include those of a
# test run going on now).
if [ -z "${MWE_BENCH_POSTGRES:-}${MWE_TEST_POSTGRES:-}" ]; then
  # shellcheck source=tests/postgres.sh
  source tests/postgres.sh
fi
export MWE_BENCH_POSTGRES="${MWE_BENCH_POSTGRES:-$MWE_TEST_POSTGRES}"
# Databases of an earlier run that stopped before it could drop them (its process is
# gone; the name carries its pid).
psql "$MWE_BENCH_POSTGRES" -Atqc "SELECT datname FROM pg_database WHERE datname LIKE 'mwe\_bench\_%'" |
  while read -r db; do
    pid=${db#mwe_bench_}
    pid=${pid%%_*}
    if ! kill -0 "$pid" 2>/dev/null; then
      psql "$MWE_BENCH_POSTGRES" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null || true
    fi
  done
cargo build --release -p host -p plugin-dynamics -p fixture-scripted -p bench
exec target/release/bench
