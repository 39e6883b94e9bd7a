#!/usr/bin/env bash
# The GPU-speed table of the "GPU speed" issue in one run, in under 8 minutes on an H100/H200:
# the notebook recipe, the plain PyTorch loop of the same network (eager and as one CUDA graph, fp32 and
# bf16), vaezoo cifar-vae at fp32/bf16/auto with its CUDA-graph step on and off, the full 15-epoch recipe
# and one short epoch of every family's recipe, as a markdown table with ratios and PASS/MISS per target.
#
#   bash bench/gpu.sh --data-dir PATH [--out bench/results-gpu.md]          # on the GPU machine
#   bash bench/gpu.sh --device cpu --quick --data-dir PATH                  # dry run with tiny sizes
#
# Options: --device cuda|cuda:N|cpu, --quick, --rounds N, --budget-s S (default 420: no part starts after it; the table so far is in --out after each part),
# --out FILE, --keep-runs. The table goes to stdout, progress to stderr. Each part runs in its own process
# with a timeout (bench/gpu_parts.py has the sizes and the time of each part); runs go to a temporary folder.
# Python: $PYTHON if set, else the repository's .venv, else python3 (torch and vaezoo installed there).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x "$here/../.venv/bin/python" ]; then python="$here/../.venv/bin/python"; else python="$(command -v python3)"; fi
fi
exec "$python" "$here/gpu_parts.py" "$@"
