#!/usr/bin/env bash
# Scale benchmark (not a test): a release `drover server` (pinned to cores 0,1 where the machine has more)
# against simulated agents (`drover-sim`), at growing fleet sizes. Measures the enrollment rate, the server's
# idle CPU and RSS at each size, `drover exec --all -- true` latency, apply -> converged, and how long the
# whole fleet takes to come back after a server restart (and the server's CPU meanwhile).
#
#   SIZES="1000 5000 19000" scripts/bench-scale.sh
#
# It needs only release binaries (`drover`, `drover-sim`) in BIN_DIR, so it runs on a machine without
# network or toolchain: cargo build --release --locked -p drover -p drover-sim, then carry both.
#
# Environment (defaults in brackets):
#   SIZES        fleet sizes, ascending; the fleet grows from one to the next          [200]
#   BIN_DIR      where drover and drover-sim are         [$CARGO_TARGET_DIR/release or target/release]
#   RESULTS      file the results table is written to                   [${OUT:-.}/bench-scale.txt]
#   IDLE_SECS    idle window per size                                                   [60]
#   EXEC_SIZES   sizes at which exec latency is measured              [the smallest and the largest]
#   EXEC_TRIES   exec --all runs per size                                               [10]
#   APPLY_TRIES  apply -> converged runs at the largest size, per content size          [3]
#   APPLY_SIZES  bytes of the applied file, one series each (up to 4 KiB it goes inline)  [64 5000]
#   RAMP         new simulated agents per second (caps the measured enrollment rate)    [1000]
#   HEARTBEAT    simulated heartbeat interval                                          [10s]
#   SIM_ARGS     extra drover-sim flags (e.g. "--sessions 0")                            []
#   WAIT_SECS    longest wait for a fleet to be connected                               [900]
#   KEEP_WORK=1  keep the temp dir (logs, state) at the end
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES=$(tr ' ' '\n' <<<"${SIZES:-200}" | grep . | sort -n | tr '\n' ' ')
BIN_DIR=${BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}
RESULTS=${RESULTS:-${OUT:-.}/bench-scale.txt}
IDLE_SECS=${IDLE_SECS:-60}
EXEC_TRIES=${EXEC_TRIES:-10}
APPLY_TRIES=${APPLY_TRIES:-3}
APPLY_SIZES=${APPLY_SIZES:-64 5000}
RAMP=${RAMP:-1000}
HEARTBEAT=${HEARTBEAT:-10s}
WAIT_SECS=${WAIT_SECS:-900}
read -r -a sizes <<<"$SIZES"
smallest=${sizes[0]}
largest=${sizes[${#sizes[@]} - 1]}
EXEC_SIZES=${EXEC_SIZES:-$smallest $largest}

drover="$BIN_DIR/drover"
sim="$BIN_DIR/drover-sim"
for b in "$drover" "$sim"; do
  [[ -x "$b" ]] || { echo "missing $b: cargo build --release --locked -p drover -p drover-sim (or set BIN_DIR)" >&2; exit 2; }
done

# Every connection is a file: let the server and the simulators use all the hard limit allows.
ulimit -n "$(ulimit -Hn)"
cores=$(nproc)
server_pin=()
sim_pin=()
if ((cores > 2)) && command -v taskset >/dev/null; then
  server_pin=(taskset -c 0,1)
  # The simulators keep off the server's cores, so they do not steal its time.
  sim_pin=(taskset -c "2-$((cores - 1))")
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/bench-scale.XXXXXX")
server_pid=""
sim_pids=()
cleanup() {
  for p in "${sim_pids[@]}" $server_pid; do kill "$p" 2>/dev/null || true; done
  for p in "${sim_pids[@]}" $server_pid; do wait "$p" 2>/dev/null || true; done
  if [[ "${KEEP_WORK:-}" == 1 ]]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh

api=$(free_port)
grpc=$(free_port "$api")
metrics=$(free_port "$api" "$grpc")
: >"$work/empty.toml"
cli=("$drover" --server "http://127.0.0.1:$api" --data-dir "$work/data")

start_server() {
  "${server_pin[@]}" "$drover" --data-dir "$work/data" server --config "$work/empty.toml" \
    --listen "127.0.0.1:$api" --agent-listen "127.0.0.1:$grpc" --metrics-listen "127.0.0.1:$metrics" \
    2>>"$work/server.log" &
  server_pid=$!
  # In a subshell, so that the server's last words are shown before the work dir goes.
  (wait_ports "$server_pid" "the server" "$api" "$grpc") || { tail -20 "$work/server.log" >&2; exit 1; }
}

sims_ticks() {
  local total=0 p
  for p in "${sim_pids[@]}"; do total=$((total + $(ticks "$p"))); done
  echo "$total"
}

sims_rss_kib() {
  local total=0 p
  for p in "${sim_pids[@]}"; do total=$((total + $(rss_kib "$p"))); done
  echo "$total"
}

# Results are appended as they come, so a run cut short still leaves what it measured.
mkdir -p "$(dirname "$RESULTS")"
{
  echo "bench-scale $(date -u +%FT%TZ) on $(uname -m), $cores cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo); server ${server_pin[*]:-unpinned}"
  echo "sizes: $SIZES; heartbeat $HEARTBEAT; ramp $RAMP/s; idle window ${IDLE_SECS}s; sim args: ${SIM_ARGS:-none}"
} >"$RESULTS"
record() { echo "$1" >>"$RESULTS"; log "$1"; }

log "server on 127.0.0.1:$api (API) and :$grpc (agents) ${server_pin[*]:+pinned with ${server_pin[*]}}; work dir $work"
start_server
token=$("${cli[@]}" token create --ttl 24h 2>/dev/null)

prev=0
i=0
for size in "${sizes[@]}"; do
  ((size > prev)) || continue
  count=$((size - prev))
  log "starting $count simulated agents ($prev..$((size - 1))) at $RAMP/s"
  t0=$(now_ns)
  # shellcheck disable=SC2086 # SIM_ARGS is a list of flags
  "${sim_pin[@]}" "$sim" --server "https://127.0.0.1:$grpc" --token "$token" --agents "$count" \
    --start-index "$prev" --state-dir "$work/sim" --ramp "$RAMP" --heartbeat-interval "$HEARTBEAT" \
    --stats-interval 10s --status-file "$work/sim-$i.json" ${SIM_ARGS:-} 2>>"$work/sim-$i.log" &
  sim_pids+=($!)
  i=$((i + 1))
  wait_counter enrolled "$size"
  enroll_secs=$(secs_since "$t0")
  wait_counter connected "$size"
  connect_secs=$(secs_since "$t0")
  record "$size agents: $count enrolled in ${enroll_secs}s = $(awk -v n="$count" -v s="$enroll_secs" 'BEGIN { printf "%.0f", n / s }')/s (ramp $RAMP/s); all connected after ${connect_secs}s"

  sleep 5 # let the start-up burst settle
  c0=$(ticks "$server_pid")
  s0=$(sims_ticks)
  sleep "$IDLE_SECS"
  c1=$(ticks "$server_pid")
  s1=$(sims_ticks)
  rss=$(rss_kib "$server_pid")
  sim_rss=$(sims_rss_kib)
  record "$(awk -v n="$size" -v d="$((c1 - c0))" -v sd="$((s1 - s0))" -v hz="$hz" -v secs="$IDLE_SECS" -v rss="$rss" -v srss="$sim_rss" 'BEGIN {
    printf "%d agents idle: server CPU %.2f s over %d s = %.1f %% of one core; server RSS %.1f MiB (%.1f KiB per agent); simulator CPU %.1f %% of one core, RSS %.1f KiB per agent",
      n, d / hz, secs, 100 * d / hz / secs, rss / 1024, rss / n, 100 * sd / hz / secs, srss / n }')"

  if [[ " $EXEC_SIZES " == *" $size "* ]]; then
    record "$size agents: exec --all -- true: $(timed_exec_all "$EXEC_TRIES")"
  fi
  prev=$size
done

total=$prev
for bytes in $APPLY_SIZES; do
  # Content up to 4 KiB goes inside each node's desired state update; larger content every node fetches.
  how="sent with the desired state"
  [[ $bytes -gt 4096 ]] && how="fetched by every node"
  record "$total agents: apply -> converged (one File resource by sha256, $bytes bytes, $how): $(timed_apply bench-scale "$APPLY_TRIES" "$bytes")"
done

log "restarting the server"
t0=$(now_ns)
kill -TERM "$server_pid"
wait "$server_pid" 2>/dev/null || true
stop_secs=$(secs_since "$t0")
deadline=$((SECONDS + 60))
while (($(counter connected) > 0 && SECONDS < deadline)); do sleep 0.1; done
t1=$(now_ns)
start_server
wait_counter connected "$total"
back_secs=$(secs_since "$t1")
cpu=$(ticks "$server_pid")
record "$(awk -v n="$total" -v stop="$stop_secs" -v back="$back_secs" -v d="$cpu" -v hz="$hz" 'BEGIN {
  printf "%d agents: server restart: stopped in %.2f s; all back %.2f s after the new server started; its CPU meanwhile %.2f s (%.2f cores)",
    n, stop, back, d / hz, d / hz / back }')"

# How the new server's agent connections ended, and how long agents waited (means), from its /metrics.
if command -v curl >/dev/null && curl -sf "http://127.0.0.1:$metrics/metrics" >"$work/metrics.txt"; then
  record "$total agents: after the restart: $(awk '
    /^drover_agent_connections_total/ { match($0, /outcome="[a-z_]+"/); o = substr($0, RSTART + 9, RLENGTH - 10); out = out sep o " " $2; sep = ", " }
    /^drover_agent_connect_duration_seconds_(sum|count)/ { match($0, /stage="[a-z]+"/); st = substr($0, RSTART + 7, RLENGTH - 8)
      if ($0 ~ /_sum/) sum[st] = $2; else cnt[st] = $2 }
    END { printf "%s; mean wait", out; for (st in cnt) if (cnt[st] > 0) printf " %s %.3f s", st, sum[st] / cnt[st] }' "$work/metrics.txt")"
fi

cat "$RESULTS"
log "results written to $RESULTS"
