#!/usr/bin/env bash
# Stops the Garage tests/garage/start.sh started (named by TESSERA_GARAGE_DIR, or the first
# argument) and removes its directory. `stop.sh --keep DIR` stops the server but keeps its
# data, for `start.sh --resume DIR`.
set -euo pipefail
keep=""
if [[ ${1:-} == --keep ]]; then
    keep=1
    shift
fi
dir=${1:-${TESSERA_GARAGE_DIR:-}}
if [[ -z $dir || $dir != /tmp/tessera-garage.* || ! -d $dir ]]; then
    exit 0
fi
if [[ -f $dir/garage.pid ]]; then
    pid=$(cat "$dir/garage.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/garage.pid"
fi
[[ -n $keep ]] || rm -rf "$dir"
