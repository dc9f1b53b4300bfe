#!/usr/bin/env bash
# Runs every test: unit, simulators, plugin loading, end to end, fuzzing (briefly;
# PROPTEST_CASES=100000 for a longer run), the admin page in a real browser, and the
# packages (the .deb, its systemd unit, the plugin ZIP). The store's tests run on
# SQLite and PostgreSQL, and the end-to-end suites once on each: PostgreSQL is
# started here when it is not running (tests/postgres.sh).
# The browser tests need Debian's chromium and chromium-driver, the package tests
# systemd (systemd-analyze), zip, unzip and cargo-deb; they are installed here when
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v zip >/dev/null 2>&1 || missing+=(zip)
command -v unzip >/dev/null 2>&1 || missing+=(unzip)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "tests/run.sh: the tests need ${missing[*]}: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi

if ! cargo deb --version 2>/dev/null | grep -q '^cargo-deb 3\.'; then
  cargo install cargo-deb --locked --version '^3' --quiet
fi

# shellcheck source=tests/postgres.sh
. tests/postgres.sh

cargo test --workspace --locked "$@"
# The end-to-end suites again, on PostgreSQL (the tests of several engines, in
# `cluster`, ran on it already).
MWE_TEST_STORE=postgres cargo test -p e2e --test e2e --locked "$@" -- --skip cluster::
