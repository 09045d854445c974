#!/usr/bin/env bash
# Runs the whole test suite: unit, data-driven, deterministic cluster, process and
# differential tests, then etcd 3.4's own e2e tests with oxcd as `etcd` (e2e/run.sh: the
# tests in e2e/expected-pass.txt must pass). Needs Debian's etcd-server and etcd-client (the
# oracle), and for the e2e suite golang-go and golang-etcd-server-dev; .ci/run installs them
# (e2e/run.sh installs what is missing when run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
export RUST_BACKTRACE=1
cargo build -j2 --workspace --all-targets
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test -j2 --workspace --no-fail-fast -- --test-threads=2 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run, summed over every test binary.
passed=$(grep -Eo '^test result: .* [0-9]+ passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '^test result: .* [0-9]+ failed' "$log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
echo
echo "cargo test: ${passed} passed, ${failed} failed"
# etcd's own e2e suite against the debug binary that `cargo build` just made.
e2e_status=0
bash e2e/run.sh --bin target/debug/oxcd || e2e_status=$?
if [ "$status" -eq 0 ] && [ "$e2e_status" -ne 0 ]; then
  status=$e2e_status
fi
exit "$status"
