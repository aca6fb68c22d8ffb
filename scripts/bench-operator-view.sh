#!/usr/bin/env bash
# Operator view at fleet size (benchmark, not a test): a `drover server` with SIZE simulated agents
# (`drover-sim`), a fan-out task (`drover exec --all -- true`) and a manifest applied to every node; then
# each dashboard page and REST list an operator reads is timed with curl (TRIES times each; min, median,
# max), with the server's RSS before and after the reads.
#
#   SIZE=19000 scripts/bench-operator-view.sh
#
# Environment (defaults in brackets):
#   SIZE       simulated agents                                                          [1000]
#   BIN_DIR    where drover and drover-sim are         [$CARGO_TARGET_DIR/profiling or target/profiling]
#   TRIES      timed reads per page                                                      [5]
#   RAMP       new simulated agents per second                                           [500]
#   SIMS       drover-sim processes the fleet is split over                              [2]
#   RESULTS    file the results are written to                  [${OUT:-.}/bench-operator-view.txt]
#   WAIT_SECS  longest wait for the fleet to be connected                                [900]
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE=${SIZE:-1000}
BIN_DIR=${BIN_DIR:-${CARGO_TARGET_DIR:-target}/profiling}
TRIES=${TRIES:-5}
RAMP=${RAMP:-500}
SIMS=${SIMS:-2}
RESULTS=${RESULTS:-${OUT:-.}/bench-operator-view.txt}
WAIT_SECS=${WAIT_SECS:-900}
drover="$BIN_DIR/drover"
sim="$BIN_DIR/drover-sim"
for b in "$drover" "$sim"; do
  [[ -x "$b" ]] || { echo "missing $b: cargo build --profile profiling -p drover -p drover-sim (or set BIN_DIR)" >&2; exit 2; }
done
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d "${TMPDIR:-/tmp}/bench-operator-view.XXXXXX")
server_pid=""
sim_pids=()
cleanup() {
  for p in "${sim_pids[@]}" $server_pid; do kill "$p" 2>/dev/null || true; done
  for p in "${sim_pids[@]}" $server_pid; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
rss_mib() { awk '/^VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
api=$(free_port)
grpc=$(free_port "$api")
: >"$work/empty.toml"
"$drover" --data-dir "$work/data" server --config "$work/empty.toml" \
  --listen "127.0.0.1:$api" --agent-listen "127.0.0.1:$grpc" 2>>"$work/server.log" &
server_pid=$!
for _ in $(seq 300); do
  (exec 3<>"/dev/tcp/127.0.0.1/$api") 2>/dev/null && break
  sleep 0.1
done
cli=("$drover" --server "http://127.0.0.1:$api" --data-dir "$work/data")
token=$("${cli[@]}" token create --ttl 24h 2>/dev/null)
admin=$(cat "$work/data/admin.token")

per=$(((SIZE + SIMS - 1) / SIMS))
for i in $(seq 0 $((SIMS - 1))); do
  start=$((i * per))
  n=$((SIZE - start < per ? SIZE - start : per))
  ((n > 0)) || continue
  "$sim" --server "https://127.0.0.1:$grpc" --token "$token" --agents "$n" --start-index "$start" \
    --state-dir "$work/sim" --ramp "$((RAMP / SIMS))" --stats-interval 0s \
    --status-file "$work/sim-$i.json" 2>>"$work/sim-$i.log" &
  sim_pids+=($!)
done
log "waiting for $SIZE agents (server :$api, work dir $work)"
deadline=$((SECONDS + WAIT_SECS))
while (($(counter connected) < SIZE)); do
  ((SECONDS < deadline)) || { echo "only $(counter connected) of $SIZE connected" >&2; exit 1; }
  sleep 1
done
log "all connected; a fan-out task and a manifest on every node"
"${cli[@]}" exec --all -- true >/dev/null 2>&1
mkdir -p /tmp/drover-bench-operator-view
cat >"$work/m.yaml" <<EOF
name: bench-view
resources:
  - id: motd
    file: {path: /tmp/drover-bench-operator-view/motd, content: "hello\n"}
EOF
"${cli[@]}" apply -f "$work/m.yaml" --wait --timeout 30m >/dev/null 2>&1
sleep 5
task=$(curl -sf -H "Authorization: Bearer $admin" "http://127.0.0.1:$api/api/v1/tasks?limit=1" |
  grep -o '"id":"[^"]*"' | head -1 | cut -d'"' -f4)

mkdir -p "$(dirname "$RESULTS")"
echo "operator view: $SIZE simulated agents, $(nproc) cores; $(basename "$BIN_DIR") build; $TRIES reads each (min / median / max, seconds)" >"$RESULTS"
record() { echo "$1" >>"$RESULTS"; log "$1"; }
record "server RSS before the reads: $(rss_mib "$server_pid") MiB"

time_page() {
  local name=$1 path=$2 times code bytes
  times=()
  for _ in $(seq "$TRIES"); do
    read -r code bytes t < <(curl -s -o /dev/null -w '%{http_code} %{size_download} %{time_total}\n' \
      -H "Authorization: Bearer $admin" "http://127.0.0.1:$api$path")
    times+=("$t")
  done
  record "$(printf '%s\n' "${times[@]}" | sort -n | awk -v name="$name" -v path="$path" -v code="$code" -v bytes="$bytes" '
    { v[NR] = $1 } END { printf "%-28s %-52s %s %9d B  %.3f / %.3f / %.3f", name, path, code, bytes, v[1], v[int((NR + 1) / 2)], v[NR] }')"
}

time_page "fleet page" "/ui/"
time_page "fleet page, Offline" "/ui/?status=Offline"
time_page "a node" "/ui/nodes/sim-00000"
time_page "tasks" "/ui/tasks"
time_page "a task" "/ui/tasks/$task"
time_page "a task, middle page" "/ui/tasks/$task?page=$((SIZE / 100))"
time_page "manifests" "/ui/manifests"
time_page "a manifest, middle page" "/ui/manifests/bench-view?page=$((SIZE / 100))"
time_page "REST node page" "/api/v1/nodes?limit=100"
time_page "REST node page, last" "/api/v1/nodes?limit=1000&offset=$((SIZE - 1000))"
time_page "REST every node" "/api/v1/nodes"
time_page "REST tasks" "/api/v1/tasks"
time_page "REST a task" "/api/v1/tasks/$task"
time_page "REST a task's runs, page" "/api/v1/tasks/$task/runs?limit=100&offset=$((SIZE / 2))"
time_page "REST status page" "/api/v1/status?manifest=bench-view&limit=100"
time_page "REST every status" "/api/v1/status"
time_page "metrics" "/metrics"
record "server RSS after the reads: $(rss_mib "$server_pid") MiB"
t0=$(date +%s%N)
"${cli[@]}" nodes -o json >/dev/null
record "drover nodes -o json (pages of 1000): $(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN { printf "%.2f", (b - a) / 1e9 }') s"
cat "$RESULTS"
