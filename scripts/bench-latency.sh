#!/usr/bin/env bash
# Latency of one-node commands with the CLI's own start included, measured with hyperfine:
# `drover exec NODE -- true` and `drover apply -f one-file.yaml --wait` (a manifest whose file content
# changes every run, so each run waits for a real push, write and report).
# Usage: scripts/bench-latency.sh [BIN_DIR]   (default: builds release binaries and uses them)
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
BIN=${1:-}
if [ -z "$BIN" ]; then
    cargo build --release --locked -p drover-agent >&2
    cargo build --release --locked -p drover >&2
    BIN=$TARGET/release
fi
command -v hyperfine >/dev/null || { echo "hyperfine is missing: apt-get install -y hyperfine" >&2; exit 1; }
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
PIDS+=($!)
for _ in $(seq 100); do curl -fs "127.0.0.1:$API/health" >/dev/null && break; sleep 0.1; done
CLI="$BIN/drover --server http://127.0.0.1:$API --data-dir $WORK/data"
TOKEN=$($CLI token create --label bench=yes 2>/dev/null)
mkdir -p "$WORK/files"
"$BIN/drover-agent" --server "https://127.0.0.1:$GRPC" --token "$TOKEN" --name n0 --state-dir "$WORK/agent" \
    --config "$WORK/empty.toml" --allow-shell --allow-path "$WORK/files" --heartbeat-interval 10s 2> "$WORK/agent.log" &
PIDS+=($!)
for _ in $(seq 100); do $CLI nodes -o json | grep -q '"connected": true' && break; sleep 0.1; done
hyperfine -N --warmup 10 --runs ${RUNS:-200} --export-json "$WORK/exec.json" "$CLI exec n0 -- true"
cat > "$WORK/prepare.sh" <<SH
#!/bin/sh
printf 'name: one\nselector: {bench: "yes"}\nresources:\n  - id: f\n    file: {path: $WORK/files/f, content: "%s"}\n' "\$(date +%s%N)" > $WORK/one.yaml
SH
chmod +x "$WORK/prepare.sh"
hyperfine -N --warmup 5 --runs $(( ${RUNS:-200} / 2 )) --prepare "$WORK/prepare.sh" --export-json "$WORK/apply.json" \
    "$CLI apply -f $WORK/one.yaml --wait"
python3 - "$WORK" <<'PY'
import json, statistics, sys
for name in ("exec", "apply"):
    t = sorted(x * 1000 for x in json.load(open(f"{sys.argv[1]}/{name}.json"))["results"][0]["times"])
    print(f"{name}: median {statistics.median(t):.1f} ms, p90 {t[int(len(t) * 0.9)]:.1f} ms, min {t[0]:.1f} ms")
PY
