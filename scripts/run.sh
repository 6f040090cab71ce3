#!/usr/bin/env bash
# Builds tsad (release) and runs it; installs libtorch when missing (scripts/libtorch.sh).
# Without arguments it runs `tsad serve` on its embedded defaults: SQLite in ./tsad.db,
# the shipped model in models/default, http://127.0.0.1:8080. Arguments go to `tsad`
# instead (`scripts/run.sh train --help`).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
scripts/libtorch.sh
if [[ $# -eq 0 ]]; then
  set -- serve
fi
exec cargo run --release --quiet -- "$@"
