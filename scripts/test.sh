#!/usr/bin/env bash
# Builds tsad and runs the whole test suite on a fresh machine: installs libtorch when
# missing (scripts/libtorch.sh), makes sure PostgreSQL runs (scripts/postgres.sh), then
# `cargo test`. Extra arguments go to `cargo test`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# The docker-compose stack and its Grafana dashboard, checked statically (no Docker engine
# runs here): every file referenced, every dashboard metric registered by the service.
python3 scripts/check-deploy.py
scripts/libtorch.sh
# Dependency audit: licences, banned crates, sources (the advisory database is on GitHub,
# out of reach here: docs/RELIABILITY.md).
command -v cargo-deny >/dev/null || cargo install --locked cargo-deny@0.20.2
cargo deny --log-level error check licenses bans sources
# The PyTorch cross-check and the PostgreSQL tests must run here, not skip.
export TSAD_REQUIRE_PYTHON=1 TSAD_REQUIRE_POSTGRES=1
TSAD_TEST_DATABASE_URL=$(scripts/postgres.sh)
export TSAD_TEST_DATABASE_URL
cargo test --all-targets "$@"
# Against the built binary: the dashboard in headless Chromium, then a schema-driven fuzz
# run of the whole API from /openapi.json (any 5xx fails it), bounded in time.
if [[ $# -eq 0 ]]; then
  cargo build --bin tsad
  TSAD_SCREENSHOT=${TMPDIR:-/tmp}/tsad-dashboard.png scripts/browser-test.sh
  TSAD_FUZZ_SECONDS=${TSAD_FUZZ_SECONDS:-90} scripts/api-fuzz.sh --seed 1
fi
