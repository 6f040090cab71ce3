#!/usr/bin/env bash
# Short CUDA check for a machine with a GPU: trains the same small forecaster (synthetic
# corpus, fixed seeds) for a few epochs on the CPU and on CUDA with the release build,
# then prints both loss curves and the time per epoch side by side. Expect the curves to
# agree closely (not bit-for-bit: cuDNN and the CPU kernels round differently) and CUDA to
# be faster per epoch. Exits 1 when libtorch sees no CUDA device.
#
#   scripts/cuda-check.sh [EPOCHS]      (default 5)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
scripts/libtorch.sh
epochs=${1:-5}
if ! .tsad/venv/bin/python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "cuda-check: libtorch sees no CUDA device here" >&2
  exit 1
fi
.tsad/venv/bin/python -c 'import torch; print("device:", torch.cuda.get_device_name(0))'
cargo build --release --quiet
out=$(mktemp -d)
for device in cpu cuda; do
  target/release/tsad train --synthetic --series 64 --rows 2000 --data-seed 0 --architecture lstm \
    --hidden 64 --layers 1 --window 64 --epochs "$epochs" --patience 1000 --batch-size 64 \
    --seed 0 --device "$device" --out "$out/$device" | tee "$out/$device.log"
done
# Epoch lines: "epoch   3/5  train   …  val   …  grad-norm   …   12.3s"
python3 - "$out/cpu.log" "$out/cuda.log" <<'PY'
import re, sys
def curve(path):
    rows = []
    for line in open(path):
        m = re.match(r"epoch\s+(\d+)/\d+\s+train\s+(\S+)\s+val\s+(\S+)\s+grad-norm\s+(\S+)\s+(\S+)s", line)
        if m:
            rows.append((int(m[1]), float(m[2]), float(m[3]), float(m[5])))
    return rows
cpu, cuda = curve(sys.argv[1]), curve(sys.argv[2])
print(f"{'epoch':>5} {'cpu train':>10} {'cuda train':>10} {'cpu val':>10} {'cuda val':>10} {'cpu s/ep':>9} {'cuda s/ep':>9}")
prev = (0.0, 0.0)
for (e, ct, cv, cs), (_, gt, gv, gs) in zip(cpu, cuda):
    print(f"{e:>5} {ct:>10.5f} {gt:>10.5f} {cv:>10.5f} {gv:>10.5f} {cs - prev[0]:>9.2f} {gs - prev[1]:>9.2f}")
    prev = (cs, gs)
if cpu and cuda:
    print(f"final validation loss: cpu {cpu[-1][2]:.5f}, cuda {cuda[-1][2]:.5f}; "
          f"time per epoch: cpu {cpu[-1][3] / len(cpu):.2f} s, cuda {cuda[-1][3] / len(cuda):.2f} s")
PY
