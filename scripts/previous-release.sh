#!/usr/bin/env bash
# Builds the previous release's `drover` and `drover-agent` (the last line of RELEASES) from this
# repository's own history, for the version-skew tests (crates/drover-testkit/tests/skew.rs): debug builds
# in $CARGO_TARGET_DIR/previous-release, a target dir of its own that CI keeps between runs, so only the
# first run after a release pays for it (about 5 minutes on 2 cores; a no-op after).
set -euo pipefail
cd "$(dirname "$0")/.."

target=${CARGO_TARGET_DIR:-target}
read -r version commit < <(grep -v '^#' RELEASES | grep . | tail -1)
mkdir -p "$target/previous-release"
out=$(realpath "$target/previous-release")
if [[ -x "$out/debug/drover" && -x "$out/debug/drover-agent" && "$(cat "$out/built-from" 2>/dev/null)" == "$version $commit" ]]; then
  echo "previous release $version ($commit): built in $out/debug"
  exit 0
fi
if ! git cat-file -e "$commit^{commit}" 2>/dev/null; then
  echo "RELEASES names commit $commit for $version, which this clone lacks: clone with its full history" >&2
  exit 2
fi
src=$(mktemp -d "${TMPDIR:-/tmp}/drover-release-$version.XXXXXX")
trap 'rm -rf "$src"' EXIT
git archive "$commit" | tar -x -C "$src"
echo "building the previous release $version ($commit) into $out"
(cd "$src" && CARGO_TARGET_DIR="$out" cargo build --locked -p drover -p drover-agent)
echo "$version $commit" >"$out/built-from"
