#!/usr/bin/env bash
# Starts a private single-node Garage (S3-compatible object store) for the tests: loopback
# only, on free non-default ports, metadata and data under a new temporary directory, a fresh
# rpc_secret; then assigns the node its layout role, applies layout version 1, creates a key
# and a bucket and gives the key read/write/owner on it. Prints the environment the tests
# read, as shell assignments for `eval`:
#
#   TESSERA_TEST_S3_ENDPOINT=http://127.0.0.1:PORT
#   TESSERA_TEST_S3_REGION=garage
#   TESSERA_TEST_S3_BUCKET=tessera-test
#   TESSERA_TEST_S3_ACCESS_KEY_ID=GK...
#   TESSERA_TEST_S3_SECRET_ACCESS_KEY=...
#   TESSERA_GARAGE_DIR=/tmp/tessera-garage.XXXXXX   (tests/garage/stop.sh removes it)
#
# `start.sh --resume DIR` starts the server of an existing DIR again (same config, data and
# key; the tests that stop Garage mid-read use it) and prints the same lines.
#
# Garage comes from `cargo install garage --version 2.5.0 --locked` (.ci/run installs it);
# found on PATH or in ~/.cargo/bin. Fails, saying why, when it is missing or does not come
# up: the S3 tests never skip. Usage (the Makefile's `unit` does this):
#
#   env=$(tests/garage/start.sh); eval "$env"; trap tests/garage/stop.sh EXIT; cargo test
set -euo pipefail

garage=$(command -v garage || echo "${CARGO_HOME:-$HOME/.cargo}/bin/garage")
if [[ ! -x $garage ]]; then
    echo "garage is not installed: run 'cargo install garage --version 2.5.0 --locked' (.ci/run does)" >&2
    exit 1
fi

resume=""
if [[ ${1:-} == --resume ]]; then
    resume=${2:?usage: start.sh --resume DIR}
    dir=$resume
    [[ -f $dir/garage.toml && -f $dir/env ]] || { echo "start.sh: $dir is not a test Garage" >&2; exit 1; }
else
    dir=$(mktemp -d /tmp/tessera-garage.XXXXXX)
fi

fail() {
    echo "tests/garage/start.sh: $1" >&2
    if [[ -f $dir/garage.log ]]; then
        echo "--- $dir/garage.log (tail)" >&2
        tail -n 30 "$dir/garage.log" >&2
    fi
    if [[ -f $dir/garage.pid ]]; then
        kill "$(cat "$dir/garage.pid")" 2>/dev/null || true
    fi
    [[ -n $resume ]] || rm -rf "$dir"
    exit 1
}

g() { "$garage" -c "$dir/garage.toml" "$@"; }

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The HTTP status the S3 port answers an anonymous request with (000: no answer).
s3_status() {
    local answer=""
    exec 3<>"/dev/tcp/127.0.0.1/$1" || { echo 000; return; }
    printf 'GET /tessera-probe HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
    IFS= read -r -t 5 answer <&3 || true
    exec 3>&- 3<&-
    answer=${answer#HTTP/* }
    echo "${answer:0:3}"
}

# Starts the server in the foreground of a background job (no daemonizing: the pid recorded
# is the server's) and waits until the RPC side answers `garage status`. Returns 1 if it died
# (a port taken under us) or never answered.
launch() {
    rm -f "$dir/garage.pid"
    # Output to a file, so `$(start.sh)` returns while it runs.
    RUST_LOG=${RUST_LOG:-garage=warn} "$garage" -c "$dir/garage.toml" server \
        </dev/null >>"$dir/garage.log" 2>&1 &
    local pid=$!
    echo "$pid" >"$dir/garage.pid"
    for _ in $(seq 1 300); do
        if g status >/dev/null 2>&1; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            return 1
        fi
        sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
    return 1
}

# Waits until the S3 API answers something other than a 5xx (layout not ready yet, etc.).
wait_s3() {
    local port=$1 status=""
    for _ in $(seq 1 300); do
        status=$(s3_status "$port")
        if [[ $status =~ ^[1-4][0-9][0-9]$ ]]; then
            return 0
        fi
        sleep 0.1
    done
    fail "the S3 API on 127.0.0.1:$port did not come up (last status: $status)"
}

if [[ -n $resume ]]; then
    # shellcheck disable=SC1091
    source "$dir/env"
    s3_port=${TESSERA_TEST_S3_ENDPOINT##*:}
    launch || fail "garage did not start again on $dir"
    wait_s3 "$s3_port"
    echo "garage up again on 127.0.0.1:$s3_port ($dir)" >&2
    cat "$dir/env"
    exit 0
fi

mkdir -p "$dir/meta" "$dir/data"
secret=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
started=""
for attempt in 1 2 3 4 5; do
    # Two ports well away from Garage's defaults (3900-3903).
    s3_port=$((20000 + RANDOM % 40000))
    rpc_port=$((s3_port + 1))
    if port_taken "$s3_port" || port_taken "$rpc_port"; then
        continue
    fi
    umask 077
    cat >"$dir/garage.toml" <<CONF
# A private single-node test cluster (tests/garage/start.sh). No admin API, no web endpoint.
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$secret"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3_port"
root_domain = ".s3.garage.localhost"
CONF
    umask 022
    if launch; then
        started=$s3_port
        break
    fi
done
[[ -n $started ]] || fail "garage did not answer 'garage status' (5 port pairs tried)"

node=$(g node id -q 2>/dev/null | cut -d@ -f1)
[[ $node =~ ^[0-9a-f]{64}$ ]] || fail "'garage node id' gave '$node', not a node id"
g layout assign -z dc1 -c 1G "$node" >>"$dir/setup.log" 2>&1 || fail "garage layout assign failed (see $dir/setup.log)"
g layout apply --version 1 >>"$dir/setup.log" 2>&1 || fail "garage layout apply failed"
keyinfo=$(g key create tessera-test 2>>"$dir/setup.log") || fail "garage key create failed"
key_id=$(awk '/^Key ID:/ {print $3}' <<<"$keyinfo")
key_secret=$(awk '/^Secret key:/ {print $3}' <<<"$keyinfo")
[[ $key_id == GK* && -n $key_secret ]] || fail "could not read the key from 'garage key create': $keyinfo"
g bucket create tessera-test >>"$dir/setup.log" 2>&1 || fail "garage bucket create failed"
g bucket allow --read --write --owner tessera-test --key tessera-test >>"$dir/setup.log" 2>&1 \
    || fail "garage bucket allow failed"
wait_s3 "$started"

cat >"$dir/env" <<ENV
TESSERA_TEST_S3_ENDPOINT=http://127.0.0.1:$started
TESSERA_TEST_S3_REGION=garage
TESSERA_TEST_S3_BUCKET=tessera-test
TESSERA_TEST_S3_ACCESS_KEY_ID=$key_id
TESSERA_TEST_S3_SECRET_ACCESS_KEY=$key_secret
TESSERA_GARAGE_DIR=$dir
export TESSERA_TEST_S3_ENDPOINT TESSERA_TEST_S3_REGION TESSERA_TEST_S3_BUCKET TESSERA_TEST_S3_ACCESS_KEY_ID TESSERA_TEST_S3_SECRET_ACCESS_KEY TESSERA_GARAGE_DIR
ENV
echo "garage up: $("$garage" --version 2>/dev/null | head -n1) on 127.0.0.1:$started, bucket tessera-test ($dir)" >&2
cat "$dir/env"
