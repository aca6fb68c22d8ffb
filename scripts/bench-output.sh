#!/usr/bin/env bash
# One task's output, end to end: `drover exec n0 -- cat FILE` of about 64 MiB of base64 text (the most an
# agent keeps per task), the CLI's start included, its output to /dev/null. Prints the wall time and MB/s of
# every run and the CPU each process spent per run (utime+stime from /proc, so it is steadier than the wall
# time on a shared machine).
# Usage: scripts/bench-output.sh [BIN_DIR]   (default: builds release binaries and uses them)
# Knobs: RUNS (default 10), MIB (default 64).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
BIN=${1:-}
if [ -z "$BIN" ]; then
    cargo build --release --locked -p drover-agent -p drover >&2
    BIN=$TARGET/release
fi
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
API=$(free_port); GRPC=$(free_port)
: > "$WORK/empty.toml"
env -u DROVER_SERVER -u DROVER_TOKEN "$BIN/drover" --data-dir "$WORK/data" server --config "$WORK/empty.toml" \
    --listen "127.0.0.1:$API" --agent-listen "127.0.0.1:$GRPC" 2> "$WORK/server.log" &
SERVER=$!
PIDS+=("$SERVER")
for _ in $(seq 100); do curl -fs "127.0.0.1:$API/health" >/dev/null && break; sleep 0.1; done
CLI="$BIN/drover --server http://127.0.0.1:$API --data-dir $WORK/data"
TOKEN=$($CLI token create 2>/dev/null)
"$BIN/drover-agent" --server "https://127.0.0.1:$GRPC" --token "$TOKEN" --name n0 --state-dir "$WORK/agent" \
    --config "$WORK/empty.toml" --allow-exec /usr/bin/cat --heartbeat-interval 10s 2> "$WORK/agent.log" &
AGENT=$!
PIDS+=("$AGENT")
for _ in $(seq 100); do $CLI nodes -o json | grep -q '"connected": true' && break; sleep 0.1; done
# 3 bytes of input make 4 of base64, plus a newline every 76: just under MIB MiB of text.
head -c $(( ${MIB:-64} * 1024 * 1024 * 57 / 77 )) /dev/urandom | base64 > "$WORK/out.txt"
BYTES=$(stat -c %s "$WORK/out.txt")
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
$CLI exec n0 -- cat "$WORK/out.txt" > /dev/null # warm up
for i in $(seq "${RUNS:-10}"); do
    s0=$(cpu "$SERVER"); a0=$(cpu "$AGENT")
    t0=$(date +%s%N)
    /usr/bin/time -f '%U %S' -o "$WORK/cli.time" $CLI exec n0 -- cat "$WORK/out.txt" > "$WORK/got.txt"
    t1=$(date +%s%N)
    s1=$(cpu "$SERVER"); a1=$(cpu "$AGENT")
    got=$(stat -c %s "$WORK/got.txt")
    [ "$got" = "$BYTES" ] || { echo "run $i: got $got bytes of $BYTES" >&2; exit 1; }
    python3 - "$i" "$BYTES" "$t0" "$t1" "$s0" "$s1" "$a0" "$a1" "$TICK" "$(cat "$WORK/cli.time")" <<'PY'
import sys
i, size, t0, t1, s0, s1, a0, a1, tick = (int(x) for x in sys.argv[1:10])
u, s = (float(x) for x in sys.argv[10].split())
wall = (t1 - t0) / 1e9
print(f"run {i}: {size / 1e6:.1f} MB in {wall:.3f} s = {size / 1e6 / wall:.0f} MB/s; "
      f"CPU server {(s1 - s0) / tick:.2f} s, agent {(a1 - a0) / tick:.2f} s, CLI {u + s:.2f} s")
PY
done
