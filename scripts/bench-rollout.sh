#!/usr/bin/env bash
# Rollout benchmark (not a test; issue 25): a release `drover server` (pinned to cores 0,1 where the machine
# has more) against simulated agents (`drover-sim`, which report a mix of archs: about 3 % aarch64, 2 %
# armv7, the rest x86_64), one fresh server and fleet per size. At each size, in this order:
#   1. a baseline revision of manifest `bench-rollout` (one File, no rollout) that every node converges to;
#   2. (c) a good revision in four waves, [{count: 1}, {percent: 0.5}, {percent: 10}, {percent: 100}] with
#      `spread_by: [arch]`, bake BAKE, no max_in_flight: the time from `drover apply` to Complete, against
#      4 x BAKE + 15 s;
#   3. (a) a bad revision, same waves, `on_failure: revert_all`, whose File every aarch64 node fails (a
#      change failure, "exit code 1: broken"): the nodes that received it before the rollout stopped
#      (counted by the simulator, and from the status's waves), against 0.5 % of the fleet, and the time
#      until every one of them has taken and reported the previous revision again, against 2 x BAKE;
#   4. (a') the same with an infrastructure failure ("dial tcp …: connection refused") on aarch64: the
#      rollout must pause, not revert, and count infra_failed, not change_failed;
#   5. (b) the simulator restarted with OFFLINE_SHARE of its nodes offline (they never attach again), and a
#      good revision (bake OFFLINE_BAKE, wave_deadline OFFLINE_DEADLINE): it must complete with every
#      offline node counted unreachable and no failure at all, from the status JSON.
#
#   SIZES="1000 5000" BAKE=30s scripts/bench-rollout.sh
#   BAKE=5s scripts/bench-rollout.sh                        # a quick run (default size 1000)
#
# It needs only release binaries (`drover`, `drover-sim`) in BIN_DIR and `jq`: cargo build --release --locked
# -p drover -p drover-sim, then carry both.
#
# Environment (defaults in brackets):
#   SIZES            fleet sizes, one full run each (the 0.5 % budget needs at least 600 nodes: the first
#                    wave holds one canary per arch, 3 nodes)                                    [1000]
#   BIN_DIR          where drover and drover-sim are     [$CARGO_TARGET_DIR/release or target/release]
#   RESULTS          file the results are written to                       [${OUT:-.}/bench-rollout.txt]
#   BAKE             bake of the good and the bad rollouts (the issue's figure: 30s)             [30s]
#   OFFLINE_SHARE    share of the nodes offline in (b)                                           [0.02]
#   OFFLINE_BAKE     bake in (b)                                                                 [5s]
#   OFFLINE_DEADLINE wave_deadline in (b): how long a wave waits for its unreachable nodes       [15s]
#   POLL             seconds between two reads of the rollout's status                           [0.5]
#   RAMP             new simulated agents per second                                             [1000]
#   HEARTBEAT        simulated heartbeat interval                                               [10s]
#   SIM_ARGS         extra drover-sim flags (e.g. "--sessions 0")                                 []
#   WAIT_SECS        longest wait for a fleet to be connected                                    [900]
#   NOTE             a remark for the results' header (e.g. "machine shared with builds")        []
#   KEEP_WORK=1      keep the temp dir (logs, state) at the end
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES=$(tr ' ' '\n' <<<"${SIZES:-1000}" | grep . | sort -n | tr '\n' ' ')
BIN_DIR=${BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}
RESULTS=${RESULTS:-${OUT:-.}/bench-rollout.txt}
BAKE=${BAKE:-30s}
OFFLINE_SHARE=${OFFLINE_SHARE:-0.02}
OFFLINE_BAKE=${OFFLINE_BAKE:-5s}
OFFLINE_DEADLINE=${OFFLINE_DEADLINE:-15s}
POLL=${POLL:-0.5}
RAMP=${RAMP:-1000}
HEARTBEAT=${HEARTBEAT:-10s}
WAIT_SECS=${WAIT_SECS:-900}
read -r -a sizes <<<"$SIZES"

drover="$BIN_DIR/drover"
sim="$BIN_DIR/drover-sim"
for b in "$drover" "$sim"; do
  [[ -x "$b" ]] || { echo "missing $b: cargo build --release --locked -p drover -p drover-sim (or set BIN_DIR)" >&2; exit 2; }
done
command -v jq >/dev/null || { echo "this benchmark reads the rollout's status with jq: install it" >&2; exit 2; }

# A duration like 30s, 500ms, 2m or 1h, in seconds (with decimals).
secs_of() {
  awk -v d="$1" 'BEGIN {
    n = d + 0; u = d; sub(/^[0-9.]+/, "", u)
    if (u == "ms") n /= 1000; else if (u == "m") n *= 60; else if (u == "h") n *= 3600
    else if (u != "s" && u != "") { print "bad duration " d > "/dev/stderr"; exit 1 }
    print n }'
}
bake_s=$(secs_of "$BAKE")
secs_of "$OFFLINE_BAKE" >/dev/null
secs_of "$OFFLINE_DEADLINE" >/dev/null

ulimit -n "$(ulimit -Hn)"
cores=$(nproc)
server_pin=()
sim_pin=()
if ((cores > 2)) && command -v taskset >/dev/null; then
  server_pin=(taskset -c 0,1)
  sim_pin=(taskset -c "2-$((cores - 1))")
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/bench-rollout.XXXXXX")
server_pid=""
sim_pids=()
stop_all() {
  for p in "${sim_pids[@]}" $server_pid; do kill "$p" 2>/dev/null || true; done
  for p in "${sim_pids[@]}" $server_pid; do wait "$p" 2>/dev/null || true; done
  sim_pids=()
  server_pid=""
}
cleanup() {
  stop_all
  if [[ "${KEEP_WORK:-}" == 1 ]]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh

mkdir -p "$(dirname "$RESULTS")"
{
  echo "bench-rollout $(date -u +%FT%TZ) on $(uname -m), $cores cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo); server ${server_pin[*]:-unpinned}${NOTE:+; $NOTE}"
  echo "sizes: $SIZES; bake $BAKE; offline share $OFFLINE_SHARE (bake $OFFLINE_BAKE, wave_deadline $OFFLINE_DEADLINE); heartbeat $HEARTBEAT; ramp $RAMP/s; sim args: ${SIM_ARGS:-none}"
} >"$RESULTS"
record() { echo "$1" >>"$RESULTS"; log "$1"; }
verdict() { if awk "BEGIN { exit !($1) }"; then echo "ok"; else echo "NOT MET"; fi; }

WAVES='[{count: 1}, {percent: 0.5}, {percent: 10}, {percent: 100}]'
CHANGE_RULE='arch=aarch64,content=BAD-CHANGE'
INFRA_RULE='arch=aarch64,content=BAD-INFRA,as=infra'

# Writes manifest $work/m.yaml: one File with CONTENT, and a rollout policy (none when POLICY is empty).
manifest() {
  local content=$1 policy=$2
  {
    echo "name: bench-rollout"
    if [[ -n "$policy" ]]; then
      echo "rollout:"
      echo "  waves: $WAVES"
      echo "  spread_by: [arch]"
      sed 's/^/  /' <<<"$policy"
    fi
    echo "resources:"
    echo "  - id: conf"
    echo "    file: {path: /tmp/drover-bench-rollout/conf, content: \"$content\"}"
  } >"$work/m.yaml"
}

status_json() { "${cli[@]}" rollout status bench-rollout -o json 2>>"$work/cli.log"; }

# Applies $work/m.yaml and follows the rollout until it ends (Complete, Paused, Reverted or Aborted) or
# LIMIT seconds pass. Sets: t_apply (ns), t_end (ns, when the end was seen), final (the status JSON),
# trace (each wave's Baking and the end, in seconds after the apply).
follow_rollout() {
  local limit=$1 s state wave key seen=" " elapsed
  t_apply=$(now_ns)
  "${cli[@]}" apply -f "$work/m.yaml" >"$work/apply-out.txt" 2>&1 || { cat "$work/apply-out.txt" >&2; exit 1; }
  plan=$(grep -o 'rollout: .*' "$work/apply-out.txt" || true)
  trace=""
  final=""
  while :; do
    elapsed=$(secs_since "$t_apply")
    if s=$(status_json) && [[ -n "$s" ]]; then
      state=$(jq -r .state <<<"$s")
      wave=$(jq -r .wave <<<"$s")
      key="$wave/$state"
      if [[ "$seen" != *" $key "* ]]; then
        seen+="$key "
        [[ "$state" == Baking ]] && trace+="w$wave baking +${elapsed}s, "
      fi
      case "$state" in
        Complete | Paused | Reverted | Aborted)
          t_end=$(now_ns)
          final=$s
          trace+="$state +${elapsed}s"
          return
          ;;
      esac
    fi
    awk -v e="$elapsed" -v l="$limit" 'BEGIN { exit !(e > l) }' && {
      t_end=$(now_ns)
      final=${s:-"{}"}
      trace+="still ${state:-unknown} after ${limit}s"
      return
    }
    sleep "$POLL"
  done
}

# The server's time of the status's last transition, in ns.
updated_ns() { date -d "$(jq -r .updated_at <<<"$final")" +%s%N; }

# Waits until the simulators' counter NAME is at most N; prints the ns it happened at (or fails at LIMIT s).
wait_at_most() {
  local name=$1 n=$2 limit=$3 t0
  t0=$(now_ns)
  while (($(counter "$name") > n)); do
    awk -v e="$(secs_since "$t0")" -v l="$limit" 'BEGIN { exit !(e > l) }' && { echo "never"; return; }
    sleep 0.05
  done
  now_ns
}

start_server() {
  "${server_pin[@]}" "$drover" --data-dir "$work/data" server --config "$work/empty.toml" \
    --listen "127.0.0.1:$api" --agent-listen "127.0.0.1:$grpc" 2>>"$work/server.log" &
  server_pid=$!
  (wait_ports "$server_pid" "the server" "$api" "$grpc") || { tail -20 "$work/server.log" >&2; exit 1; }
}

# Starts one simulator over the whole fleet, with both fail rules and the given extra flags.
start_sim() {
  local n=$1 i=$2
  shift 2
  # shellcheck disable=SC2086 # SIM_ARGS is a list of flags
  "${sim_pin[@]}" "$sim" --server "https://127.0.0.1:$grpc" --token "$token" --agents "$n" \
    --state-dir "$work/sim" --ramp "$RAMP" --heartbeat-interval "$HEARTBEAT" --stats-interval 10s \
    --status-file "$work/sim-$i.json" --fail-when "$CHANGE_RULE" --fail-when "$INFRA_RULE" "$@" \
    ${SIM_ARGS:-} 2>>"$work/sim-$i.log" &
  sim_pids=($!)
}

# Sums of the status JSON's wave counts.
sum_of() { jq "[.waves[] | $1] | add // 0" <<<"$final"; }

for size in "${sizes[@]}"; do
  stop_all
  rm -rf "$work/data" "$work/sim" "$work"/sim-*.json
  api=$(free_port)
  grpc=$(free_port "$api")
  : >"$work/empty.toml"
  cli=("$drover" --server "http://127.0.0.1:$api" --data-dir "$work/data")
  log "size $size: server on 127.0.0.1:$api (API) and :$grpc (agents) ${server_pin[*]:+pinned with ${server_pin[*]}}; work dir $work"
  start_server
  token=$("${cli[@]}" token create --ttl 24h 2>/dev/null)
  t0=$(now_ns)
  start_sim "$size" 0
  wait_counter connected "$size"
  strata=$(grep -m1 '^strata: ' "$work/sim-0.log" | sed 's/^strata: //')
  aarch64=$(grep -o 'arch=aarch64,content=BAD-CHANGE,as=change: [0-9]*' <<<"$strata" | awk '{print $NF}')
  record "$size agents: all connected after $(secs_since "$t0")s; $(sed 's/; fail-when.*//' <<<"$strata"); aarch64 (the failing stratum) $aarch64 = $(awk -v a="$aarch64" -v n="$size" 'BEGIN { printf "%.2f", 100 * a / n }') %"

  # 1. Baseline: every node on revision 1.
  manifest "v1 baseline" ""
  t=$(now_ns)
  "${cli[@]}" apply -f "$work/m.yaml" --wait --timeout 10m >"$work/apply-out.txt" 2>&1 || { cat "$work/apply-out.txt" >&2; exit 1; }
  record "$size agents: baseline (no rollout) applied and converged in $(secs_since "$t")s"

  # 2. (c) A good revision in four waves.
  manifest "v2 good" "bake: $BAKE"
  follow_rollout $((4 * ${bake_s%.*} + 300))
  took=$(awk -v a="$t_apply" -v b="$t_end" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')
  limit=$(awk -v b="$bake_s" 'BEGIN { print 4 * b + 15 }')
  record "$size agents: (c) good revision, 4 waves, bake $BAKE, $plan: $(jq -r .state <<<"$final") in ${took}s (limit 4 x bake + 15 s = ${limit}s: $(verdict "$took <= $limit" ) ); converged $(sum_of .converged) of $size, failed $(sum_of '.change_failed + .infra_failed'); trace: $trace"

  # 3. (a) A bad revision failing on every aarch64 node, reverted.
  m0=$(counter marked_total)
  manifest "v3 BAD-CHANGE" "bake: $BAKE
on_failure: revert_all"
  follow_rollout $((4 * ${bake_s%.*} + 300))
  state=$(jq -r .state <<<"$final")
  released=$(jq '[.waves[:.wave][] | .nodes] | add // 0' <<<"$final")
  reason=$(jq -r '.reason // ""' <<<"$final")
  t_trip=$(updated_ns)
  t_back=$(wait_at_most marked 0 $((2 * ${bake_s%.*} + 60)))
  received=$(($(counter marked_total) - m0))
  budget=$(awk -v n="$size" 'BEGIN { print n * 0.005 }')
  if [[ "$t_back" == never ]]; then
    back="NOT all back: $(counter marked) still on the bad revision after $((2 * ${bake_s%.*} + 60))s"
  else
    back_s=$(awk -v a="$t_trip" -v b="$t_back" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')
    back="all $received back on the previous revision ${back_s}s after the trip (limit 2 x bake = $(awk -v b="$bake_s" 'BEGIN { print 2 * b }')s: $(verdict "$back_s <= 2 * $bake_s"))"
  fi
  # The status of a reverted rollout counts the reverted waves' nodes as pending (they are no longer on the
  # revision): the failure that tripped it is in the reason.
  record "$size agents: (a) bad revision (change failure on aarch64), revert_all: $state after $(awk -v a="$t_apply" -v b="$t_end" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')s ($reason); $plan; received by $received nodes (simulator) / $released released (status) = $(awk -v r="$received" -v n="$size" 'BEGIN { printf "%.3f", 100 * r / n }') % (limit 0.5 % = $budget nodes: $(verdict "$received <= $budget && $released <= $budget")); $back"

  # 4. (a') The same, as an infrastructure failure: pause, no revert.
  m0=$(counter marked_total)
  manifest "v4 BAD-INFRA" "bake: $BAKE
on_failure: revert_all"
  follow_rollout $((4 * ${bake_s%.*} + 300))
  state=$(jq -r .state <<<"$final")
  released=$(jq '[.waves[:.wave][] | .nodes] | add // 0' <<<"$final")
  sleep 2 # anything still in flight lands
  received=$(($(counter marked_total) - m0))
  failed=$(sum_of .change_failed)
  infra=$(sum_of .infra_failed)
  # "received" counts every node whose desired state took a marked revision, this one's or an earlier bad one.
  record "$size agents: (a') bad revision (infrastructure failure on aarch64), revert_all: $state after $(awk -v a="$t_apply" -v b="$t_end" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')s ($(jq -r '.reason // ""' <<<"$final")); $released released (status); a bad revision received by $received nodes (simulator), $(counter marked) still on one, $(counter failing) reporting a failure; change_failed $failed, infra_failed $infra: $(verdict "\"$state\" == \"Paused\" && $failed == 0 && $infra >= 1 && $received <= $budget")"

  # 5. (b) Offline nodes: the simulator again, a share of it gone for good.
  kill "${sim_pids[0]}"
  wait "${sim_pids[0]}" 2>/dev/null || true
  t0=$(now_ns)
  start_sim "$size" 1 --offline-share "$OFFLINE_SHARE"
  # The simulator names its offline agents in its first line.
  for _ in $(seq 100); do grep -q '^strata: ' "$work/sim-1.log" 2>/dev/null && break; sleep 0.1; done
  offline=$(grep -m1 '^strata: ' "$work/sim-1.log" | grep -o 'offline=[0-9]*' | cut -d= -f2)
  rm -f "$work/sim-0.json"
  wait_counter connected $((size - offline))
  record "$size agents: simulator restarted with $offline offline ($OFFLINE_SHARE); the other $((size - offline)) back after $(secs_since "$t0")s"
  manifest "v5 good again" "bake: $OFFLINE_BAKE
wave_deadline: $OFFLINE_DEADLINE"
  follow_rollout $((4 * ($(secs_of "$OFFLINE_BAKE" | cut -d. -f1) + $(secs_of "$OFFLINE_DEADLINE" | cut -d. -f1)) + 300))
  state=$(jq -r .state <<<"$final")
  unreachable=$(sum_of .unreachable)
  failed=$(sum_of '.change_failed + .infra_failed')
  record "$size agents: (b) good revision with $offline nodes offline, bake $OFFLINE_BAKE, wave_deadline $OFFLINE_DEADLINE: $state after $(awk -v a="$t_apply" -v b="$t_end" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')s$(jq -r 'if .reason then " (" + .reason + ")" else "" end' <<<"$final"); unreachable $unreachable, failed $failed, converged $(sum_of .converged) (offline never failures: $(verdict "\"$state\" == \"Complete\" && $failed == 0 && $unreachable == $offline")); per wave unreachable: $(jq -c '[.waves[] | .unreachable]' <<<"$final"); trace: $trace"
  record "$size agents: server CPU over the run $(awk -v d="$(ticks "$server_pid")" -v hz="$hz" 'BEGIN { printf "%.1f", d / hz }') s, RSS $(awk -v r="$(rss_kib "$server_pid")" 'BEGIN { printf "%.0f", r / 1024 }') MiB"
  grep -E 'rollout (tripped|Complete|Paused|Reverted)|cannot drive' "$work/server.log" | sed 's/\x1b\[[0-9;]*m//g' | tail -20 >>"$work/rollout-log.txt" || true
done

cat "$RESULTS"
log "results written to $RESULTS"
