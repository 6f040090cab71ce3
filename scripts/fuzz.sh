#!/usr/bin/env bash
# Fuzzes the parsers and the scorer for a bounded time: runs the proptest suites (request
# bodies under every content type, the WFDB header/annotation/format-212 readers and the CSV
# column reader, the scorer under every baseline) again and again, each run from a fresh
# random seed, until the budget is spent or a run fails. proptest stands in for a
# coverage-guided fuzzer: `cargo fuzz` needs a nightly toolchain, which this machine cannot
# fetch. A failing case is shrunk and printed by proptest (and saved under
# `proptest-regressions/`, replayed first by every later run).
#
#   scripts/fuzz.sh          # 300 seconds
#   scripts/fuzz.sh 3600     # an hour
#
# Prints one JSON line: runs, seconds, suites; exits non-zero on the first failure.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
budget=${1:-300}
[[ $budget =~ ^[0-9]+$ && $budget -gt 0 ]] || { echo "usage: scripts/fuzz.sh [SECONDS]" >&2; exit 2; }
scripts/libtorch.sh
cargo test --lib --no-run --quiet
started=$(date +%s)
runs=0
while (( $(date +%s) - started < budget )); do
  if ! cargo test --lib --quiet properties >/tmp/tsad-fuzz.$$ 2>&1; then
    cat /tmp/tsad-fuzz.$$ >&2
    rm -f /tmp/tsad-fuzz.$$
    echo "{\"fuzz\":\"failed\",\"runs\":$runs,\"seconds\":$(( $(date +%s) - started ))}"
    exit 1
  fi
  runs=$((runs + 1))
done
rm -f /tmp/tsad-fuzz.$$
echo "{\"fuzz\":\"passed\",\"runs\":$runs,\"seconds\":$(( $(date +%s) - started )),\"suites\":[\"api::readings::properties\",\"eval::wfdb::properties\",\"scoring::properties\"]}"
