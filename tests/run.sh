#!/usr/bin/env bash
# Runs every test: unit, simulators, plugin loading, end to end, fuzzing (briefly;
# PROPTEST_CASES=100000 for a longer run) and the admin page in a real browser.
# The browser tests need Debian's chromium and chromium-driver; they are installed
# here when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "tests/run.sh: the browser tests need chromium and chromium-driver: sudo apt-get install chromium chromium-driver" >&2
    exit 1
  fi
fi

cargo test --workspace --locked "$@"
