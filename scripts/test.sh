#!/usr/bin/env bash
# The whole test suite: installs what the tests need, then format, lint and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/testbed.sh
cargo fmt --all -- --check
scripts/vendor-check.sh  # vendor/<crate> = its crates.io release + vendor/patches/<crate>.diff
cargo clippy --workspace --all-targets --locked --features drover-agent/test-plugins,drover-server/tamper -- -D warnings
# The integration tests drive the real binaries: build them first (cargo test alone does not), with the
# agent's test-only plugins and the server's tampering routes (tests/signing.rs) compiled in. Release
# builds (`cargo build --release`) have neither.
cargo build --workspace --locked --features drover-agent/test-plugins,drover-server/tamper
# The previous release's binaries, for the version-skew tests (built once, kept in the target dir).
scripts/previous-release.sh
cargo test --workspace --locked
