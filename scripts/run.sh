#!/usr/bin/env bash
# Builds tsad (release) and runs it with the given arguments; installs libtorch when
# missing (scripts/libtorch.sh). Without arguments `tsad` prints its help.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
scripts/libtorch.sh
exec cargo run --release --quiet -- "$@"
