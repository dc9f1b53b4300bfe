#!/usr/bin/env bash
# Builds the Dynamics 365 plugin and packs it for admins:
#   bash packaging/plugin-zip.sh [--profile release|dev] [--out-dir DIR] [--no-build]
# writes DIR/dynamics365-<version>-linux-<arch>.zip (default DIR: target/packages)
# holding exactly dynamics365/libplugin_dynamics.so and dynamics365/README.md, the
# layout `middleware-engine plugins install` and the Plugins folder expect. The last
# line of stdout is the archive's absolute path. The archive is reproducible: fixed
# timestamps and modes, no extra attributes.
set -euo pipefail

profile=release
out_dir=
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile=${2:?--profile needs release or dev}; shift 2 ;;
    --profile=*) profile=${1#*=}; shift ;;
    --out-dir) out_dir=${2:?--out-dir needs a folder}; shift 2 ;;
    --out-dir=*) out_dir=${1#*=}; shift ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "plugin-zip.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
case "$profile" in
  release) profile_dir=release; build_flags=(--release) ;;
  dev) profile_dir=debug; build_flags=() ;;
  *) echo "plugin-zip.sh: --profile is release or dev, not '$profile'" >&2; exit 2 ;;
esac
# A relative --out-dir is the caller's; the default is the workspace's.
case "$out_dir" in
  /*) ;;
  '') out_dir="$(cd "$(dirname "$0")/.." && pwd)/target/packages" ;;
  *) out_dir="$PWD/$out_dir" ;;
esac
cd "$(dirname "$0")/.."

if ! command -v zip >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zip >/dev/null
  else
    echo "plugin-zip.sh: the zip command is missing: sudo apt-get install zip" >&2
    exit 1
  fi
fi

cargo=${CARGO:-cargo}
if [ "$build" = 1 ]; then
  # Build output goes to stderr: stdout ends with the archive's path.
  "$cargo" build --locked -p plugin-dynamics "${build_flags[@]}" >&2
fi

# The version and the target folder (CARGO_TARGET_DIR and Cargo config included).
pkgid=$("$cargo" pkgid -p plugin-dynamics)
version=${pkgid##*[#@]}
metadata=$("$cargo" metadata --no-deps --format-version 1)
target_dir=$(printf '%s' "$metadata" | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
if [ -z "$version" ] || [ -z "$target_dir" ]; then
  echo "plugin-zip.sh: could not read the plugin's version or the target folder from cargo" >&2
  exit 1
fi
library="$target_dir/$profile_dir/libplugin_dynamics.so"
if [ ! -f "$library" ]; then
  echo "plugin-zip.sh: $library is missing; build it (drop --no-build)" >&2
  exit 1
fi

mkdir -p "$out_dir"
out_dir=$(cd "$out_dir" && pwd)
archive="$out_dir/dynamics365-$version-linux-$(uname -m).zip"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir "$stage/dynamics365"
cp "$library" "$stage/dynamics365/libplugin_dynamics.so"
cp packaging/plugin/README.md "$stage/dynamics365/README.md"
chmod 0755 "$stage/dynamics365/libplugin_dynamics.so"
chmod 0644 "$stage/dynamics365/README.md"
# ZIP stores local time: pin the zone too, so every machine writes the same bytes.
export TZ=UTC
touch -d '2000-01-01 00:00:00' "$stage/dynamics365"/*

rm -f "$archive" "$archive.tmp"
# -X: no uid/gid or extra timestamps; -D: no folder entries; files in a fixed order.
(cd "$stage" && zip -q -X -D "$archive.tmp" dynamics365/libplugin_dynamics.so dynamics365/README.md)
mv "$archive.tmp" "$archive"
echo "$archive"
