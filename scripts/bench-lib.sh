# Shell helpers shared by the benchmarks (sourced, not run). Expects `$work` (the run's temp dir) and, for
# the simulator helpers, the array `sim_pids` (simulator processes) to be set by the caller.

log() { echo "[$(date +%T)] $*" >&2; }
now_ns() { date +%s%N; }
secs_since() { awk -v a="$1" -v b="$(now_ns)" 'BEGIN { printf "%.2f", (b - a) / 1e9 }'; }

# A free TCP port on loopback, none of those given as arguments. Taken below the kernel's ephemeral range,
# where the simulators' and PostgreSQL's outgoing connections never hold it by the time it is listened on.
ephemeral_low=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
free_port() {
  local p
  while :; do
    p=$((10000 + RANDOM % (ephemeral_low - 10000)))
    [[ " $* " == *" $p "* ]] && continue
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
}

# CPU ticks (user + system) and resident memory of a process.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hz=$(getconf CLK_TCK)

# Waits until something listens on each given loopback port, or fails once process $1 has exited.
wait_ports() {
  local pid=$1 what=$2 port ok
  shift 2
  for _ in $(seq 300); do
    ok=1
    for port in "$@"; do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || ok=""; done
    [[ -n "$ok" ]] && return
    kill -0 "$pid" 2>/dev/null || { echo "$what exited; see $work" >&2; exit 1; }
    sleep 0.1
  done
  echo "$what did not open its ports in 30 s; see $work" >&2
  exit 1
}

# The directory of the binaries to measure: $1 if given, else release binaries built here.
bench_bin() {
  if [[ -n "${1:-}" ]]; then echo "$1"; return; fi
  cargo build --release --locked -p drover-agent -p drover >&2
  echo "${CARGO_TARGET_DIR:-$PWD/target}/release"
}

# Stops what `start_one_node` started and removes $work (an EXIT trap).
stop_one_node() {
  for p in ${agent_pid:-} ${server_pid:-}; do kill "$p" 2>/dev/null || true; done
  for p in ${agent_pid:-} ${server_pid:-}; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}

# A server on fresh loopback ports with its data in $work/data, and one agent `n0` (label bench=yes)
# attached to it, from the binaries in directory $1, the agent started with the flags that follow. Sets
# `server_pid`, `agent_pid` and the `cli` array; the caller stops both processes.
start_one_node() {
  local bin=$1 api grpc token
  shift
  api=$(free_port)
  grpc=$(free_port "$api")
  : >"$work/empty.toml"
  env -u DROVER_SERVER -u DROVER_TOKEN "$bin/drover" --data-dir "$work/data" server --config "$work/empty.toml" \
    --listen "127.0.0.1:$api" --agent-listen "127.0.0.1:$grpc" 2>"$work/server.log" &
  server_pid=$!
  wait_ports "$server_pid" "the server" "$api" "$grpc"
  cli=("$bin/drover" --server "http://127.0.0.1:$api" --data-dir "$work/data")
  token=$("${cli[@]}" token create --label bench=yes 2>/dev/null)
  "$bin/drover-agent" --server "https://127.0.0.1:$grpc" --token "$token" --name n0 --state-dir "$work/agent" \
    --config "$work/empty.toml" --heartbeat-interval 10s "$@" 2>"$work/agent.log" &
  agent_pid=$!
  for _ in $(seq 100); do
    "${cli[@]}" nodes -o json | grep -q '"connected": true' && return
    sleep 0.1
  done
  echo "the agent did not connect in 10 s; see $work" >&2
  exit 1
}

# Sum of one counter over every simulator's status file ($work/sim-*.json).
counter() {
  local total=0 v f
  for f in "$work"/sim-*.json; do
    [[ -s "$f" ]] || continue
    v=$(grep -o "\"$1\":[0-9]*" "$f" | cut -d: -f2)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}

# Waits until `counter NAME` reaches N; fails after WAIT_SECS or when a simulator exits.
wait_counter() {
  local name=$1 n=$2 deadline=$((SECONDS + ${WAIT_SECS:-900}))
  while (($(counter "$name") < n)); do
    ((SECONDS < deadline)) || { echo "only $(counter "$name") of $n $name after ${WAIT_SECS:-900}s; see $work" >&2; exit 1; }
    for p in "${sim_pids[@]}"; do kill -0 "$p" 2>/dev/null || { tail -5 "$work"/sim-*.log >&2; echo "a simulator exited" >&2; exit 1; }; done
    sleep 0.2
  done
}

# Runs `"${cli[@]}" exec --all -- true` TRIES times and prints p50/p99 of the wall times, or "FAILED after
# …" at the first failure (a failure is a result too: the benchmark goes on). Uses the caller's `cli` array.
timed_exec_all() {
  local tries=$1 t times="$work/exec-times.txt"
  : >"$times"
  for _ in $(seq "$tries"); do
    t=$(now_ns)
    if ! "${cli[@]}" exec --all -- true >"$work/exec-out.txt" 2>&1; then
      cat "$work/exec-out.txt" >>"$work/exec.log"
      echo "FAILED after $(secs_since "$t")s: $(grep -iE 'error|unreachable|lost' "$work/exec-out.txt" | head -1 || true), $(tail -1 "$work/exec-out.txt")"
      return
    fi
    secs_since "$t" >>"$times"
    echo >>"$times"
  done
  grep . "$times" | percentiles
}

# Runs `"${cli[@]}" apply -f M --wait` TRIES times, M a manifest NAME with one File resource whose content
# (BYTES long, different every try, so every try changes every node) the CLI uploads; prints p50/p99 of the
# wall times, or "FAILED after …" at the first failure. Uses the caller's `cli` array.
timed_apply() {
  local name=$1 tries=$2 bytes=$3 t try line times="$work/apply-times.txt"
  : >"$times"
  for try in $(seq "$tries"); do
    line="content $try $(now_ns)"
    { echo "$line"; head -c $((bytes > ${#line} + 1 ? bytes - ${#line} - 1 : 0)) /dev/zero | tr '\0' x; } >"$work/blob.txt"
    printf 'name: %s\nresources:\n  - id: file\n    file: {path: /tmp/drover-%s/file, source: %s}\n' \
      "$name" "$name" "$work/blob.txt" >"$work/m.yaml"
    t=$(now_ns)
    if ! "${cli[@]}" apply -f "$work/m.yaml" --wait --timeout "${APPLY_TIMEOUT:-30m}" >"$work/apply-out.txt" 2>&1; then
      cat "$work/apply-out.txt" >>"$work/apply.log"
      echo "FAILED after $(secs_since "$t")s: $(grep -i error "$work/apply-out.txt" | head -1 || true)"
      return
    fi
    secs_since "$t" >>"$times"
    echo >>"$times"
  done
  grep . "$times" | percentiles
}

# p50 and p99 (nearest rank) of the numbers on stdin.
percentiles() {
  sort -n | awk '{ v[NR] = $1 } END {
    i50 = int(0.5 * NR + 0.999999); i99 = int(0.99 * NR + 0.999999)
    printf "p50 %.3f s, p99 %.3f s (n=%d)", v[i50], v[i99], NR }'
}
