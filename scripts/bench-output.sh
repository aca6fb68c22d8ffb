#!/usr/bin/env bash
# One task's output, end to end: `drover exec n0 -- cat FILE` of about 64 MiB of base64 text (the most an
# agent keeps per task), the CLI's start included, its output checked byte for byte. Prints the wall time
# and MB/s of every run and the CPU each process spent on it (utime+stime from /proc, steadier than the wall
# time on a shared machine).
# Usage: scripts/bench-output.sh [BIN_DIR]   (default: builds release binaries and uses them)
# Knobs: RUNS (default 10), MIB (default 64).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
BIN=$(bench_bin "${1:-}")
work=$(mktemp -d)
trap stop_one_node EXIT
start_one_node "$BIN" --allow-exec /usr/bin/cat
# 3 bytes of input make 4 of base64, plus a newline every 76: just under MIB MiB of text.
head -c $(( ${MIB:-64} * 1024 * 1024 * 57 / 77 )) /dev/urandom | base64 > "$work/out.txt"
bytes=$(stat -c %s "$work/out.txt")
"${cli[@]}" exec n0 -- cat "$work/out.txt" > /dev/null # warm up
for i in $(seq "${RUNS:-10}"); do
    s0=$(ticks "$server_pid"); a0=$(ticks "$agent_pid")
    t0=$(now_ns)
    /usr/bin/time -f '%U %S' -o "$work/cli.time" "${cli[@]}" exec n0 -- cat "$work/out.txt" > "$work/got.txt"
    t1=$(now_ns)
    s1=$(ticks "$server_pid"); a1=$(ticks "$agent_pid")
    cmp -s "$work/out.txt" "$work/got.txt" || { echo "run $i: the output differs from what was printed" >&2; exit 1; }
    python3 - "$i" "$bytes" "$t0" "$t1" "$s0" "$s1" "$a0" "$a1" "$hz" "$(cat "$work/cli.time")" <<'PY'
import sys
i, size, t0, t1, s0, s1, a0, a1, tick = (int(x) for x in sys.argv[1:10])
u, s = (float(x) for x in sys.argv[10].split())
wall = (t1 - t0) / 1e9
print(f"run {i}: {size / 1e6:.1f} MB in {wall:.3f} s = {size / 1e6 / wall:.0f} MB/s; "
      f"CPU server {(s1 - s0) / tick:.2f} s, agent {(a1 - a0) / tick:.2f} s, CLI {u + s:.2f} s")
PY
done
