#!/usr/bin/env bash
# Builds the Debian package of the engine:
#   bash packaging/deb.sh [--out-dir DIR] [cargo-deb options...]
# makes a release build (cargo deb -p host --locked) and writes
# DIR/middleware-engine_<version>-1_<arch>.deb (default DIR: target/debian).
# Other options go to cargo-deb as they are, e.g. `--no-build` (package what is
# already in target/release), `--fast` (quicker compression), `--profile NAME`.
# Installs cargo-deb 3 when missing. The last line of stdout is the package's
# absolute path. packaging/README.md describes what the package installs.
set -euo pipefail

out_dir=
passthrough=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out-dir|--output|-o) out_dir=${2:?$1 needs a folder}; shift 2 ;;
    --out-dir=*|--output=*) out_dir=${1#*=}; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) passthrough+=("$1"); shift ;;
  esac
done
# A relative --out-dir is the caller's; the default is the workspace's.
case "$out_dir" in
  /*) ;;
  '') out_dir="$(cd "$(dirname "$0")/.." && pwd)/target/debian" ;;
  *) out_dir="$PWD/$out_dir" ;;
esac
cd "$(dirname "$0")/.."

cargo=${CARGO:-cargo}
if ! "$cargo" deb --version 2>/dev/null | grep -q '^cargo-deb 3\.'; then
  echo "deb.sh: installing cargo-deb 3 (a few minutes, once)" >&2
  "$cargo" install cargo-deb --locked --version '^3' --quiet >&2
fi

if [ ! -f packaging/engine.toml ]; then
  echo "deb.sh: packaging/engine.toml is missing: it is generated from the settings table" >&2
  exit 1
fi

mkdir -p "$out_dir"
# cargo-deb prints the package's path on stdout; the build's progress goes to stderr.
deb=$("$cargo" deb -p host --locked --output "$out_dir" ${passthrough[@]+"${passthrough[@]}"} | tail -n 1)
if [ ! -f "$deb" ]; then
  echo "deb.sh: cargo deb did not report the package it wrote" >&2
  exit 1
fi
echo "$deb"
