#!/usr/bin/env bash
# The benchmarks (not part of the test run): builds in release mode, measures, prints
# the table and writes it to docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p host -p plugin-dynamics -p bench
exec target/release/bench
