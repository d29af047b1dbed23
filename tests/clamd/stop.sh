#!/usr/bin/env bash
# Stops the clamd tests/clamd/start.sh started (named by TESSERA_CLAMD_DIR) and removes its
# directory.
set -euo pipefail
dir=${TESSERA_CLAMD_DIR:-}
if [[ -z $dir || $dir != /tmp/tessera-clamd.* || ! -d $dir ]]; then
    exit 0
fi
if [[ -f $dir/clamd.pid ]]; then
    pid=$(cat "$dir/clamd.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
fi
rm -rf "$dir"
