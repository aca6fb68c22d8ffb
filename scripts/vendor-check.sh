#!/usr/bin/env bash
# Proves each patched crate under vendor/ is its crates.io release plus vendor/patches/<crate>.diff, and
# nothing else: src/ and Cargo.toml equal release + diff, LICENSE and README.md equal the release.
# Cargo never downloads the release of a crate the workspace patches, so this fetches it through cargo into
# the normal CARGO_HOME (a throwaway project that depends on `<crate> = "=<version>"`, no patch) and checks
# the downloaded .crate against the registry index's checksum. Once cached it runs offline in about a second.
#
#   scripts/vendor-check.sh           check (exit 1 naming the files that differ)
#   scripts/vendor-check.sh --update  rewrite vendor/patches/*.diff from vendor/ (after changing a patch)
set -euo pipefail
cd "$(dirname "$0")/.."

crates=(h2 tonic)
mode=check
case "${1:-}" in
  "") ;;
  --update) mode=update ;;
  *)
    echo "usage: scripts/vendor-check.sh [--update]" >&2
    exit 2
    ;;
esac

root=$PWD
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# The version a vendored copy holds: the first `version = ` of its [package] table.
vendored_version() {
  awk '/^\[/ { pkg = ($0 == "[package]") } pkg && /^version = / { gsub(/"/, "", $3); print $3; exit }' \
    "vendor/$1/Cargo.toml"
}

# The version the workspace's Cargo.lock resolved for a crate (the patched one has no `source`).
locked_version() {
  awk -v name="$1" '$0 == "name = \"" name "\"" { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock
}

# A project that depends on the releases only, outside the workspace so no [patch] applies.
mkdir -p "$tmp/fetch/src"
: >"$tmp/fetch/src/lib.rs"
{
  printf '[package]\nname = "vendor-check"\nversion = "0.0.0"\nedition = "2021"\n\n[dependencies]\n'
  for crate in "${crates[@]}"; do
    version="$(vendored_version "$crate")"
    locked="$(locked_version "$crate")"
    if [ -z "$version" ] || [ "$version" != "$locked" ]; then
      echo "vendor-check: vendor/$crate is version '$version' but Cargo.lock has '$locked'; run cargo update -p $crate" >&2
      exit 1
    fi
    # No default features: fewer crates to fetch, and the package's files are the same.
    printf '%s = { version = "=%s", default-features = false }\n' "$crate" "$version"
  done
} >"$tmp/fetch/Cargo.toml"

# Offline first, so a cached run needs no network; the registry only when something is missing.
if ! (cd "$tmp/fetch" && cargo fetch --offline --quiet 2>/dev/null); then
  if ! (cd "$tmp/fetch" && cargo fetch --quiet); then
    echo "vendor-check: could not fetch the releases of ${crates[*]} from crates.io (offline and not cached?)" >&2
    exit 1
  fi
fi

# Unpacks a release from its .crate file in CARGO_HOME, after checking it against the index's checksum
# (recorded in the throwaway project's Cargo.lock), and prints the directory.
unpack_release() {
  local crate=$1 version=$2 sum file
  sum="$(awk -v name="$crate" -v version="$version" '
    $0 == "name = \"" name "\"" { getline; found = ($0 == "version = \"" version "\"") }
    found && /^checksum = / { gsub(/"/, "", $3); print $3; exit }' "$tmp/fetch/Cargo.lock")"
  for file in "$cargo_home"/registry/cache/*/"$crate-$version.crate"; do
    if [ -f "$file" ] && [ "$(sha256sum "$file" | cut -d' ' -f1)" = "$sum" ]; then
      mkdir -p "$tmp/release"
      tar -xzf "$file" -C "$tmp/release"
      echo "$tmp/release/$crate-$version"
      return
    fi
  done
  echo "vendor-check: no $crate-$version.crate with checksum '$sum' under $cargo_home/registry/cache" >&2
  exit 1
}

# A diff with paths a/... and b/... (patch -p1, git apply) and no timestamps, after a short header.
write_diff() {
  local crate=$1 version=$2 release=$3 out="vendor/patches/$1.diff"
  mkdir -p "$tmp/pair/$crate" vendor/patches
  ln -s "$release" "$tmp/pair/$crate/a"
  ln -s "$root/vendor/$crate" "$tmp/pair/$crate/b"
  {
    echo "drover's changes to $crate $version from crates.io (vendor/$crate/DROVER.md says why)."
    echo "a/ is the release as published (its Cargo.toml is the normalized one, not Cargo.toml.orig),"
    echo "b/ is vendor/$crate. Checked by scripts/vendor-check.sh; rewrite with --update."
    echo
    (cd "$tmp/pair/$crate" && {
      diff -uN a/Cargo.toml b/Cargo.toml || true
      diff -ruN a/src b/src || true
    }) | sed -E 's#^((---|\+\+\+) [ab]/[^[:space:]]*)[[:space:]].*#\1#'
  } >"$out"
  echo "vendor-check: wrote $out"
}

failed=0
for crate in "${crates[@]}"; do
  version="$(vendored_version "$crate")"
  release="$(unpack_release "$crate" "$version")"
  if [ "$mode" = update ]; then
    write_diff "$crate" "$version" "$release"
    continue
  fi

  patched="$tmp/patched/$crate"
  mkdir -p "$patched"
  cp -r "$release/src" "$release/Cargo.toml" "$patched/"
  if ! patch -s -p1 --fuzz=0 --no-backup-if-mismatch -d "$patched" <"vendor/patches/$crate.diff" >"$tmp/patch.log" 2>&1; then
    echo "vendor-check: vendor/patches/$crate.diff does not apply to $crate $version from crates.io:" >&2
    cat "$tmp/patch.log" >&2
    failed=1
    continue
  fi
  # Everything vendor/<crate> holds must be accounted for: src/ and Cargo.toml by the diff, LICENSE and
  # README.md as released, DROVER.md as drover's own note.
  cp "$release/LICENSE" "$release/README.md" "$patched/"
  cp "vendor/$crate/DROVER.md" "$patched/"
  if ! diff -rq "$patched" "vendor/$crate" >"$tmp/differ.log" 2>&1; then
    echo "vendor-check: vendor/$crate is not $crate $version from crates.io plus vendor/patches/$crate.diff:" >&2
    sed "s#$patched#(release + diff)#g" "$tmp/differ.log" >&2
    echo "  if the change is meant, run scripts/vendor-check.sh --update and review the diff" >&2
    failed=1
    continue
  fi

  # For information: what the release has that the vendored copy leaves out.
  left_out="$(comm -23 <(ls -A "$release" | sort) <(ls -A "vendor/$crate" | sort) | tr '\n' ' ')"
  echo "vendor-check: vendor/$crate = $crate $version + vendor/patches/$crate.diff (left out of the copy: ${left_out% })"
done
exit "$failed"
