#!/usr/bin/env bash
# The GPU throughput checks in one script, for a machine with one CUDA GPU (about 5 minutes on an H100):
#   bash benchmarks/gpu.sh [OUT_DIR]
# 1. the GPU tests (MFU logged from the device's peak, bf16-mixed);
# 2. the side-by-side benchmark at the distilgpt2 shape, bf16-mixed: tutorial recipe (on its first 5,000 rows:
#    batch 1 takes minutes), raw loop and litsft over 52,000 rows (the real rows repeated), plus litsft packed
#    and compiled. Targets: >= 10x the tutorial recipe's learned tokens/s, epoch < 30 s, MFU >= 40%.
set -euo pipefail
if ! command -v nvidia-smi >/dev/null || ! python -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "benchmarks/gpu.sh needs a CUDA GPU (nvidia-smi and a CUDA torch); none here. On a CPU machine:" >&2
  echo "  python benchmarks/throughput.py   (and python benchmarks/gpu_check.py --dry-run to check that script)" >&2
  exit 2
fi
out="${1:-${OUT:-/tmp/litsft-gpu}}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python -m pytest -q -m gpu tests/ 2>&1 | tail -5 | tee "$out/gpu_tests.txt"
python benchmarks/throughput.py --model distilgpt2 --rows 52000 --tutorial-rows 5000 --batch-size 32 --accumulate 2 \
  --workers 4 --variants packed,compiled --json "$out/throughput_gpu.json" 2>&1 | grep -v "^Tokenizing\|Saving\|Flattening" \
  | tee "$out/throughput_gpu.txt"
