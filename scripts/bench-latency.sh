#!/usr/bin/env bash
# Latency of one-node commands with the CLI's own start included, measured with hyperfine:
# `drover exec NODE -- true` and `drover apply -f one-file.yaml --wait` (a manifest whose file content
# changes every run, so each run waits for a real push, write and report).
# Usage: scripts/bench-latency.sh [BIN_DIR]   (default: builds release binaries and uses them)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v hyperfine >/dev/null || { echo "hyperfine is missing: apt-get install -y hyperfine" >&2; exit 1; }
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
BIN=$(bench_bin "${1:-}")
work=$(mktemp -d)
trap stop_one_node EXIT
mkdir -p "$work/files"
start_one_node "$BIN" --allow-shell --allow-path "$work/files"
hyperfine -N --warmup 10 --runs ${RUNS:-200} --export-json "$work/exec.json" "${cli[*]} exec n0 -- true"
cat > "$work/prepare.sh" <<SH
#!/bin/sh
printf 'name: one\nselector: {bench: "yes"}\nresources:\n  - id: f\n    file: {path: $work/files/f, content: "%s"}\n' "\$(date +%s%N)" > $work/one.yaml
SH
chmod +x "$work/prepare.sh"
hyperfine -N --warmup 5 --runs $(( ${RUNS:-200} / 2 )) --prepare "$work/prepare.sh" --export-json "$work/apply.json" \
    "${cli[*]} apply -f $work/one.yaml --wait"
python3 - "$work" <<'PY'
import json, statistics, sys
for name in ("exec", "apply"):
    t = sorted(x * 1000 for x in json.load(open(f"{sys.argv[1]}/{name}.json"))["results"][0]["times"])
    print(f"{name}: median {statistics.median(t):.1f} ms, p90 {t[int(len(t) * 0.9)]:.1f} ms, min {t[0]:.1f} ms")
PY
