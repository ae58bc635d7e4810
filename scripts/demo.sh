#!/usr/bin/env bash
# Demo on built-in defaults: builds in release mode, starts the libnet echo
# server, runs a short load against it with echo-load (which prints round
# trips per second), then stops the server.
#
# Defaults can be overridden from the environment:
#   ADDR=127.0.0.1:7000 THREADS=2 CONNS=100 SECS=5 ./scripts/demo.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

ADDR=${ADDR:-127.0.0.1:7000}
THREADS=${THREADS:-2}
CONNS=${CONNS:-100}
SECS=${SECS:-5}

SERVER=target/release/examples/echo_server
LOAD=target/release/echo-load

die() {
    echo "demo: $*" >&2
    exit 1
}

echo "== building (release)"
cargo build --release -p libnet --example echo_server
cargo build --release -p benches --bin echo-load

# Refuse to start if something already answers on the port: the load would
# measure that instead (or the bind would fail below).
host=${ADDR%:*}
port=${ADDR##*:}
if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
    die "port $port on $host is already in use; stop whatever listens there or set ADDR=IP:PORT"
fi

workdir=$(mktemp -d)
server_log=$workdir/echo_server.log
server_pid=

cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        echo "== echo server stopped"
    fi
    rm -rf "$workdir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "== starting echo server on $ADDR ($THREADS loops)"
"$SERVER" --addr "$ADDR" --threads "$THREADS" >"$server_log" 2>&1 &
server_pid=$!

# Wait (up to 10 s) for the server to say it is listening.
for _ in $(seq 100); do
    if grep -q "listening on" "$server_log"; then
        break
    fi
    if ! kill -0 "$server_pid" 2>/dev/null; then
        cat "$server_log" >&2
        if grep -qi "address already in use" "$server_log"; then
            die "port $port on $host is already in use; set ADDR=IP:PORT to use another"
        fi
        die "echo server exited before listening"
    fi
    sleep 0.1
done
grep -q "listening on" "$server_log" || {
    cat "$server_log" >&2
    die "echo server did not start listening within 10 s"
}
cat "$server_log"

echo "== load: $CONNS connections for $SECS s"
"$LOAD" --addr "$ADDR" --conns "$CONNS" --secs "$SECS"

# The server must have survived the load.
kill -0 "$server_pid" 2>/dev/null || {
    cat "$server_log" >&2
    die "echo server died during the load"
}
