#!/usr/bin/env bash
# The benchmarks (not part of the test run): builds in release mode, measures, prints
# the table and writes it to docs/benchmarks.md. HTTP load comes from Debian's `wrk`,
# installed here when missing.
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
cargo build --release -p host -p plugin-dynamics -p bench
exec target/release/bench
