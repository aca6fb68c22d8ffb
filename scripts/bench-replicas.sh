#!/usr/bin/env bash
# Replica benchmark (not a test): REPLICAS `drover server` replicas on one PostgreSQL and one nats-server
# (JetStream), each with PER_REPLICA simulated agents (`drover-sim`) attached to it. Measures each replica's
# idle CPU and RSS (the cost a replica adds per agent), PostgreSQL's and NATS's, `drover exec --all -- true`
# through one replica to the whole fleet (p50/p99), and apply -> converged of one file on every node.
#
#   REPLICAS=3 PER_REPLICA=5000 scripts/bench-replicas.sh
#
# It needs built binaries (`drover`, `drover-sim`) in BIN_DIR, PostgreSQL (`initdb`, `pg_ctl` under
# /usr/lib/postgresql/*/bin or PG_BIN) and `nats-server` (scripts/testbed.sh installs both). Run as root,
# PostgreSQL runs as the `postgres` user.
#
# Environment (defaults in brackets):
#   REPLICAS     server replicas                                                        [3]
#   PER_REPLICA  simulated agents attached to each replica                              [1000]
#   BIN_DIR      where drover and drover-sim are      [$CARGO_TARGET_DIR/profiling or target/profiling]
#   RESULTS      file the results are written to                     [${OUT:-.}/bench-replicas.txt]
#   IDLE_SECS    idle window                                                            [60]
#   EXEC_TRIES   exec --all runs                                                        [10]
#   APPLY_TRIES  apply -> converged runs                                                [3]
#   RAMP         new simulated agents per second, per simulator                         [500]
#   HEARTBEAT    simulated heartbeat interval                                           [10s]
#   SIM_ARGS     extra drover-sim flags (e.g. "--sessions 0")                            []
#   WAIT_SECS    longest wait for the fleet to be connected                             [900]
#   APPLY_TIMEOUT  longest apply --wait                                                 [30m]
#   PG_SYNC      PostgreSQL's synchronous_commit: off returns a commit before its WAL reaches the disk
#                (a crash of PostgreSQL may lose the last ~0.6 s of commits, never corrupts); on waits
#                for the disk, which on a shared VM measures the disk more than drover           [off]
#   KEEP_WORK=1  keep the temp dir (logs, state) at the end
set -euo pipefail
cd "$(dirname "$0")/.."

REPLICAS=${REPLICAS:-3}
PER_REPLICA=${PER_REPLICA:-1000}
BIN_DIR=${BIN_DIR:-${CARGO_TARGET_DIR:-target}/profiling}
RESULTS=${RESULTS:-${OUT:-.}/bench-replicas.txt}
IDLE_SECS=${IDLE_SECS:-60}
EXEC_TRIES=${EXEC_TRIES:-10}
APPLY_TRIES=${APPLY_TRIES:-3}
RAMP=${RAMP:-500}
HEARTBEAT=${HEARTBEAT:-10s}
WAIT_SECS=${WAIT_SECS:-900}
total=$((REPLICAS * PER_REPLICA))

drover="$BIN_DIR/drover"
sim="$BIN_DIR/drover-sim"
for b in "$drover" "$sim"; do
  [[ -x "$b" ]] || { echo "missing $b: cargo build --profile profiling -p drover -p drover-sim (or set BIN_DIR)" >&2; exit 2; }
done
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
[[ -x "$PG_BIN/initdb" ]] || { echo "PostgreSQL is not installed (no initdb): run scripts/testbed.sh or set PG_BIN" >&2; exit 2; }
command -v nats-server >/dev/null || { echo "nats-server is not installed: run scripts/testbed.sh" >&2; exit 2; }
id -u postgres >/dev/null 2>&1 || { echo "there is no postgres user to run PostgreSQL as: run scripts/testbed.sh" >&2; exit 2; }

ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d "${TMPDIR:-/tmp}/bench-replicas.XXXXXX")
chmod 755 "$work"
server_pids=()
sim_pids=()
nats_pid=""
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
pg() { su postgres -c "$*"; }
cleanup() {
  for p in "${sim_pids[@]}" "${server_pids[@]}" $nats_pid; do kill "$p" 2>/dev/null || true; done
  for p in "${sim_pids[@]}" "${server_pids[@]}" $nats_pid; do wait "$p" 2>/dev/null || true; done
  [[ -d "$work/pg/data" ]] && pg "$PG_BIN/pg_ctl -D $work/pg/data -m immediate -w stop" >/dev/null 2>&1 || true
  if [[ "${KEEP_WORK:-}" == 1 ]]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# PostgreSQL with fsync on and synchronous_commit as PG_SYNC says, on a free port, socket in the work dir.
pg_port=$(free_port)
mkdir -p "$work/pg" && chown postgres "$work/pg"
pg "$PG_BIN/initdb -D $work/pg/data -A trust -U postgres -E UTF8" >"$work/pg-init.log"
pg "$PG_BIN/pg_ctl -D $work/pg/data -o '-p $pg_port -k $work/pg -c listen_addresses=127.0.0.1 -c max_connections=200 -c synchronous_commit=${PG_SYNC:-off}' -l $work/pg/log -w start" >/dev/null
pg_pid=$(head -1 "$work/pg/data/postmaster.pid")
pg "psql -h 127.0.0.1 -p $pg_port -U postgres -qc 'CREATE DATABASE drover'"
database="postgres://postgres@127.0.0.1:$pg_port/drover"

nats_port=$(free_port "$pg_port")
nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$work/nats" 2>"$work/nats.log" &
nats_pid=$!
wait_ports "$nats_pid" nats-server "$nats_port"

head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/cluster.secret"
: >"$work/empty.toml"
used="$pg_port $nats_port"
apis=()
grpcs=()
for r in $(seq 0 $((REPLICAS - 1))); do
  api=$(free_port $used); used="$used $api"
  grpc=$(free_port $used); used="$used $grpc"
  "$drover" --data-dir "$work/data-$r" server --config "$work/empty.toml" \
    --listen "127.0.0.1:$api" --agent-listen "127.0.0.1:$grpc" \
    --database "$database" --cluster-secret-file "$work/cluster.secret" --nats "nats://127.0.0.1:$nats_port" \
    2>>"$work/server-$r.log" &
  server_pids+=($!)
  apis+=("$api")
  grpcs+=("$grpc")
  # One at a time: the first seals the cluster's CA, the others load it.
  wait_ports "${server_pids[$r]}" "replica $r" "$api" "$grpc"
done
cli=("$drover" --server "http://127.0.0.1:${apis[0]}" --data-dir "$work/data-0")
token=$("${cli[@]}" token create --ttl 24h 2>/dev/null)

mkdir -p "$(dirname "$RESULTS")"
{
  echo "bench-replicas $(date -u +%FT%TZ) on $(uname -m), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo); $(basename "$BIN_DIR") build"
  echo "$REPLICAS replicas x $PER_REPLICA simulated agents = $total; PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'), $(nats-server --version); synchronous_commit ${PG_SYNC:-off}; heartbeat $HEARTBEAT; ramp $RAMP/s per replica; sim args: ${SIM_ARGS:-none}"
} >"$RESULTS"
record() { echo "$1" >>"$RESULTS"; log "$1"; }

log "$REPLICAS replicas up (API ports ${apis[*]}); $PER_REPLICA simulated agents on each; work dir $work"
t0=$(now_ns)
for r in $(seq 0 $((REPLICAS - 1))); do
  # shellcheck disable=SC2086 # SIM_ARGS is a list of flags
  "$sim" --server "https://127.0.0.1:${grpcs[$r]}" --token "$token" --agents "$PER_REPLICA" \
    --start-index "$((r * PER_REPLICA))" --state-dir "$work/sim" --ramp "$RAMP" --heartbeat-interval "$HEARTBEAT" \
    --stats-interval 0s --status-file "$work/sim-$r.json" ${SIM_ARGS:-} 2>>"$work/sim-$r.log" &
  sim_pids+=($!)
done
wait_counter connected "$total"
record "$total agents: all enrolled and connected after $(secs_since "$t0")s"

sleep 5 # let the start-up burst settle
procs=("${server_pids[@]}" "$pg_pid" "$nats_pid")
names=()
for r in $(seq 0 $((REPLICAS - 1))); do names+=("replica $r"); done
names+=("PostgreSQL (postmaster)" "nats-server")
declare -a c0
for i in "${!procs[@]}"; do c0[$i]=$(ticks "${procs[$i]}"); done
# PostgreSQL's work happens in its backends: count every process of the postgres user.
pg_ticks() { local t=0 p; for p in $(pgrep -u postgres); do t=$((t + $(ticks "$p" 2>/dev/null || echo 0))); done; echo "$t"; }
# Proportional set size: shared buffers split among the processes that map them, not counted in each.
pg_pss() { local t=0 p k; for p in $(pgrep -u postgres); do k=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null); t=$((t + ${k:-0})); done; echo "$t"; }
pg0=$(pg_ticks)
sleep "$IDLE_SECS"
for i in "${!procs[@]}"; do
  [[ "${names[$i]}" == PostgreSQL* ]] && continue
  d=$(($(ticks "${procs[$i]}") - c0[i]))
  per=$([[ "${names[$i]}" == replica* ]] && echo "$PER_REPLICA" || echo "$total")
  record "$(awk -v name="${names[$i]}" -v d="$d" -v hz="$hz" -v secs="$IDLE_SECS" -v rss="$(rss_kib "${procs[$i]}")" -v n="$per" 'BEGIN {
    printf "idle, %s: CPU %.1f %% of one core; RSS %.1f MiB (%.1f KiB per agent it serves, %d)", name, 100 * d / hz / secs, rss / 1024, rss / n, n }')"
done
record "$(awk -v d="$(($(pg_ticks) - pg0))" -v hz="$hz" -v secs="$IDLE_SECS" -v rss="$(pg_pss)" 'BEGIN {
  printf "idle, PostgreSQL (every postgres process): CPU %.1f %% of one core; PSS %.1f MiB", 100 * d / hz / secs, rss / 1024 }')"

record "$total agents: exec --all -- true through replica 0 ($((total - PER_REPLICA)) of them on other replicas): $(timed_exec_all "$EXEC_TRIES")"

# 64 bytes: the nodes on replica 0 get the content inside their desired state; those on the other replicas
# fetch it from theirs, whose blob cache the upload to replica 0 did not fill.
record "$total agents: apply -> converged through replica 0 (one File by sha256: sent along by replica 0, fetched from the others): $(timed_apply bench-replicas "$APPLY_TRIES" 64)"
for r in $(seq 0 $((REPLICAS - 1))); do
  record "replica $r after the runs: RSS $(awk -v k="$(rss_kib "${server_pids[$r]}")" 'BEGIN { printf "%.1f MiB", k / 1024 }'), CPU since start $(awk -v t="$(ticks "${server_pids[$r]}")" -v hz="$hz" 'BEGIN { printf "%.1f s", t / hz }')"
done

cat "$RESULTS"
log "results written to $RESULTS"
