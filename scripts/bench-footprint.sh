#!/usr/bin/env bash
# Footprint benchmark (not a test): the release drover-agent's stripped size, idle RSS and CPU time while it
# heartbeats every 10 s to a real server. Usage: scripts/bench-footprint.sh [SECONDS]   (default 60)
# AGENT_BIN=path (a static or cross-arch build, say) measures that agent instead of building one; DROVER_BIN
# likewise for the server.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
target="${CARGO_TARGET_DIR:-target}"

# Build the agent alone: a workspace build would unify the server's features into it.
[[ -n "${AGENT_BIN:-}" ]] || cargo build --release --locked -p drover-agent >&2
[[ -n "${DROVER_BIN:-}" ]] || cargo build --release --locked -p drover >&2
agent_bin="${AGENT_BIN:-$target/release/drover-agent}"
drover_bin="${DROVER_BIN:-$target/release/drover}"

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
api=$(port); grpc=$(port)
: > "$work/empty.toml"
"$drover_bin" --data-dir "$work/data" server --config "$work/empty.toml" \
  --listen "127.0.0.1:$api" --agent-listen "127.0.0.1:$grpc" 2>"$work/server.log" &
pids+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$api/health" >/dev/null && break; sleep 0.1; done
token=$("$drover_bin" --server "http://127.0.0.1:$api" --data-dir "$work/data" token create 2>/dev/null)
"$agent_bin" --server "https://127.0.0.1:$grpc" --token "$token" --state-dir "$work/agent" \
  --config "$work/empty.toml" --heartbeat-interval 10s 2>"$work/agent.log" &
agent=$!
pids+=($agent)
for _ in $(seq 100); do grep -q connected "$work/agent.log" && break; sleep 0.1; done
sleep 5 # let start-up work settle

ticks() { awk '{print $14 + $15}' "/proc/$agent/stat"; }
hz=$(getconf CLK_TCK)
t0=$(ticks)
sleep "$secs"
t1=$(ticks)
rss_kib=$(awk '/^VmRSS/ {print $2}' "/proc/$agent/status")
anon_kib=$(awk '/^RssAnon/ {print $2}' "/proc/$agent/status")
size=$(stat -c %s "$agent_bin")

awk -v size="$size" -v rss="$rss_kib" -v anon="$anon_kib" -v d="$((t1 - t0))" -v hz="$hz" -v secs="$secs" 'BEGIN {
  printf "drover-agent release binary: %.2f MB (%d bytes, stripped)\n", size / 1e6, size
  printf "idle RSS after %ds: %.2f MiB (anonymous %.2f MiB)\n", secs + 5, rss / 1024, anon / 1024
  printf "CPU time over %ds at a 10 s heartbeat: %.3f s = %.3f %% of one core\n", secs, d / hz, 100 * d / hz / secs
}'
