#!/usr/bin/env bash
# Installs libtorch (the PyPI wheel torch==2.13.0, the version tch 0.26 expects) into a
# virtualenv outside the repository and links it into `.tsad/`, where `.cargo/config.toml`
# points every cargo command. Idempotent: a second run only checks a stamp file.
#
# Environment:
#   TSAD_CACHE   where the virtualenv lives (default: ~/.cache/tsad)
#   TSAD_PYTHON_BOOTSTRAP  the python that creates the venv (default: python3)
set -euo pipefail

TORCH_VERSION=2.13.0
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${TSAD_CACHE:-$HOME/.cache/tsad}
venv=$cache/torch-$TORCH_VERSION
stamp=$venv/.tsad-installed

if [[ ! -f $stamp ]]; then
  echo "libtorch: installing torch==$TORCH_VERSION into $venv (one time, ~5 GB with CUDA libraries)" >&2
  mkdir -p "$cache"
  rm -rf "$venv"
  "${TSAD_PYTHON_BOOTSTRAP:-python3}" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "torch==$TORCH_VERSION" safetensors numpy
  "$venv/bin/python" -c "import torch; assert torch.__version__.split('+')[0] == '$TORCH_VERSION'"
  date -u +%FT%TZ > "$stamp"
fi

torch_dir=$("$venv/bin/python" - <<'PY'
import importlib.util, pathlib
print(pathlib.Path(importlib.util.find_spec("torch").origin).parent)
PY
)
mkdir -p "$root/.tsad"
ln -sfn "$venv" "$root/.tsad/venv"
ln -sfn "$torch_dir" "$root/.tsad/libtorch"
