#!/usr/bin/env bash
# Starts a private clamd for the tests: loopback TCP on a free port plus a Unix socket, a
# database directory holding only our custom signatures (no freshclam, no internet), limits
# above the largest upload the tests scan. Prints the environment the tests read, as shell
# assignments for `eval`:
#
#   TESSERA_CLAMD=tcp://127.0.0.1:PORT
#   TESSERA_CLAMD_UNIX=unix:/tmp/tessera-clamd.XXXXXX/clamd.sock
#   TESSERA_CLAMD_DIR=/tmp/tessera-clamd.XXXXXX     (tests/clamd/stop.sh removes it)
#
# TESSERA_CLAMD_STREAM_MAX overrides clamd's StreamMaxLength (16M; tests rely on it, the
# throughput measurement in docs/design.md used 100M).
#
# Fails, saying why, when clamd is not installed or does not come up: the scan tests never
# skip. Usage (the Makefile's `unit` does this):
#
#   env=$(tests/clamd/start.sh); eval "$env"; trap tests/clamd/stop.sh EXIT; cargo test
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
clamd=$(command -v clamd || echo /usr/sbin/clamd)
if [[ ! -x $clamd ]]; then
    echo "clamd is not installed: run 'apt-get install -y clamav-daemon' (.ci/run does)" >&2
    exit 1
fi

dir=$(mktemp -d /tmp/tessera-clamd.XXXXXX)
mkdir -p "$dir/db" "$dir/tmp"
cp "$here/signatures/tessera.hdb" "$here/signatures/tessera.ndb" "$dir/db/"

# A NUL-terminated z-command over bash's /dev/tcp; prints the answer.
ask() {
    local port=$1 cmd=$2 answer=""
    exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
    printf 'z%s\0' "$cmd" >&3
    IFS= read -r -d '' -t 5 answer <&3 || true
    exec 3>&- 3<&-
    printf '%s' "$answer"
}

fail() {
    echo "tests/clamd/start.sh: $1" >&2
    if [[ -f $dir/clamd.log ]]; then
        echo "--- $dir/clamd.log (tail)" >&2
        tail -n 30 "$dir/clamd.log" >&2
    fi
    if [[ -f $dir/clamd.pid ]]; then
        kill "$(cat "$dir/clamd.pid")" 2>/dev/null || true
    fi
    rm -rf "$dir"
    exit 1
}

started=""
for attempt in 1 2 3 4 5; do
    port=$((20000 + RANDOM % 40000))
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        continue # taken
    fi
    rm -f "$dir/clamd.pid" "$dir/clamd.sock"
    cat >"$dir/clamd.conf" <<CONF
DatabaseDirectory $dir/db
TemporaryDirectory $dir/tmp
TCPAddr 127.0.0.1
TCPSocket $port
LocalSocket $dir/clamd.sock
LogFile $dir/clamd.log
LogTime yes
# In the foreground, started in the background by this script. Daemonizing is racy here: the
# clamd parent waits for its child's SIGINT to say "ready", and a clamd started from a
# background job inherits SIGINT ignored (POSIX shells ignore it for asynchronous commands), so
# a child that signals before the parent installs its handler leaves the parent waiting forever.
Foreground yes
# The largest stream the tests send to clamd is 20 MiB (the stream-limit test); uploads that
# must be scanned whole stay under 16 MiB.
StreamMaxLength ${TESSERA_CLAMD_STREAM_MAX:-16M}
MaxFileSize 128M
MaxScanSize 256M
# Without this, content past MaxFileSize/MaxScanSize would pass unscanned as "OK".
AlertExceedsMax yes
MaxThreads 4
ReadTimeout 30
SelfCheck 3600
CONF
    # Output to a file, so `$(start.sh)` returns while it runs.
    "$clamd" -c "$dir/clamd.conf" </dev/null >>"$dir/clamd.out" 2>&1 &
    pid=$!
    echo "$pid" >"$dir/clamd.pid"
    for _ in $(seq 1 300); do
        if [[ $(ask "$port" PING 2>/dev/null || true) == PONG ]]; then
            started=$port
            break
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            cat "$dir/clamd.out" >&2 || true # exited: the port was taken, say
            break
        fi
        sleep 0.1
    done
    [[ -n $started ]] && break
    kill "$pid" 2>/dev/null || true
done
[[ -n $started ]] || fail "clamd did not answer PING on 127.0.0.1 (5 ports tried)"
version=$(ask "$started" VERSION)
[[ $version == ClamAV* ]] || fail "clamd answered VERSION with '$version'"
grep -q "Loaded 2 signatures" "$dir/clamd.log" \
    || fail "clamd did not load exactly our 2 test signatures"
echo "clamd up: $version on 127.0.0.1:$started and $dir/clamd.sock" >&2
echo "TESSERA_CLAMD=tcp://127.0.0.1:$started"
echo "TESSERA_CLAMD_UNIX=unix:$dir/clamd.sock"
echo "TESSERA_CLAMD_DIR=$dir"
echo "export TESSERA_CLAMD TESSERA_CLAMD_UNIX TESSERA_CLAMD_DIR"
