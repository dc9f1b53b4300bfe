#!/usr/bin/env bash
# The demo: builds the engine, the Dynamics 365 plugin and the simulators, lays out a
# Plugins folder the way an admin would (one subfolder per plugin), then runs the
# engine against the simulated appliance and Dynamics until Ctrl-C. The engine's state
# goes to ./demo-data (the embedded SQLite store).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build -p host -p plugin-dynamics -p demo
so="so"
case "$(uname -s)" in Darwin) so="dylib" ;; MINGW*|MSYS*|CYGWIN*) so="dll" ;; esac
mkdir -p demo-data/Plugins/dynamics365
cp "target/debug/libplugin_dynamics.$so" demo-data/Plugins/dynamics365/

target/debug/middleware-engine --plugins-dir demo-data/Plugins plugins
echo
exec target/debug/demo demo-data target/debug/middleware-engine
