#!/usr/bin/env bash
# The whole test suite: installs what the tests need, then format, lint and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/testbed.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked --features drover-agent/test-plugins -- -D warnings
# The integration tests drive the real binaries: build them first (cargo test alone does not), with the
# agent's test-only plugins compiled in.
cargo build --workspace --locked --features drover-agent/test-plugins
cargo test --workspace --locked
