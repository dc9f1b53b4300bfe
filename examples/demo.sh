#!/usr/bin/env bash
# The demo: builds the engine and its plugins, lays out a Plugins folder the way an
# admin would (one subfolder per plugin), shows what loaded, then runs the engine
# until Ctrl-C. State goes to ./demo-data (the embedded default store).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p host -p plugin-dynamics -p file-sink-plugin
so="$(python3 -c 'import sys; print({"darwin": "dylib", "win32": "dll"}.get(sys.platform, "so"))' 2>/dev/null || echo so)"
mkdir -p demo-data/Plugins/dynamics365 demo-data/Plugins/file-sink
cp "target/release/libplugin_dynamics.$so" demo-data/Plugins/dynamics365/
cp "target/release/libfile_sink_plugin.$so" demo-data/Plugins/file-sink/

engine=target/release/middleware-engine
export MWE_PLUGINS_DIR=demo-data/Plugins MWE_DATA_DIR=demo-data/data
"$engine" plugins
echo
echo "Starting the engine (Ctrl-C to stop)..."
exec "$engine" serve
