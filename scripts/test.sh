#!/usr/bin/env bash
# Runs the whole test suite: unit, data-driven, process and differential tests.
# Needs Debian's etcd-server and etcd-client (the oracle); .ci/run installs them.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUST_BACKTRACE=1
cargo build -j2 --workspace --all-targets
cargo test -j2 --workspace -- --test-threads=2
