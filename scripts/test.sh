#!/usr/bin/env bash
# Builds tsad and runs the whole test suite on a fresh machine: installs libtorch when
# missing (scripts/libtorch.sh), makes sure PostgreSQL runs (scripts/postgres.sh), then
# `cargo test`. Extra arguments go to `cargo test`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
scripts/libtorch.sh
# The PyTorch cross-check and the PostgreSQL tests must run here, not skip.
export TSAD_REQUIRE_PYTHON=1 TSAD_REQUIRE_POSTGRES=1
TSAD_TEST_DATABASE_URL=$(scripts/postgres.sh)
export TSAD_TEST_DATABASE_URL
cargo test --all-targets "$@"
