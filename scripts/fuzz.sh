#!/usr/bin/env bash
# A long run of the property tests (the fuzz_* test files): FUZZ_CASES cases per property (default 100000;
# the REST one, which talks to a real server, gets FUZZ_REST_CASES, default FUZZ_CASES/20).
# Arguments name test files to run (e.g. `scripts/fuzz.sh fuzz_pki`); none runs them all.
set -euo pipefail
cd "$(dirname "$0")/.."

cases="${FUZZ_CASES:-100000}"
rest_cases="${FUZZ_REST_CASES:-$((cases / 20 > 0 ? cases / 20 : 1))}"
declare -A package=(
  [fuzz_parse]=drover-types
  [fuzz_decode]=drover-proto
  [fuzz_pki]=drover-server
  [fuzz_rest]=drover-testkit
)
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(fuzz_parse fuzz_decode fuzz_pki fuzz_rest)
fi

for t in "${targets[@]}"; do
  [ -n "${package[$t]:-}" ] || { echo "unknown fuzz target $t (one of ${!package[*]})" >&2; exit 2; }
done
# fuzz_rest drives the real server binary, which cargo test does not build.
cargo build --workspace --features drover-agent/test-plugins
for t in "${targets[@]}"; do
  n="$cases"
  [ "$t" = fuzz_rest ] && n="$rest_cases"
  echo "== $t: $n cases per property"
  PROPTEST_CASES="$n" cargo test -p "${package[$t]}" --test "$t" -- --nocapture
done
