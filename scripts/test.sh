#!/usr/bin/env bash
# Builds tsad and runs the whole test suite on a fresh machine: installs libtorch when
# missing (scripts/libtorch.sh), then `cargo test`. Extra arguments go to `cargo test`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
scripts/libtorch.sh
# The PyTorch cross-check must run here, not skip.
export TSAD_REQUIRE_PYTHON=1
cargo test --all-targets "$@"
