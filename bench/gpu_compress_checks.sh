#!/usr/bin/env bash
# GPU checks of the compression and plain-slicing code (CI has no GPU): exact gradients and importance on
# CUDA, and subnet_scaling in bf16. Run from the repository root; LOG defaults to runs/gpu_compress.log.
set -uo pipefail
LOG=${1:-runs/gpu_compress.log}
mkdir -p "$(dirname "$LOG")"
PY=${PYTHON:-python3}
export WANDB_MODE=disabled HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
unset DS_ACCELERATOR
{
  echo "=== env $(date +%T)"; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  "$PY" -c "import torch, transformers; print('torch', torch.__version__, '| transformers', transformers.__version__)"
  echo "=== tests $(date +%T)"
  timeout 300 "$PY" -m pytest -q -p no:cacheprovider tests/test_elastic_grads.py tests/test_permute.py \
    tests/test_compress.py -k "gradients or permuted or gpu or largest_subnet"
  echo "=== subnet_scaling $(date +%T)"
  timeout 240 "$PY" bench/subnet_scaling.py --device cuda --dtype bf16 --batch 32 --repeats 10 --seconds_per_arch 0
} 2>&1 | tee -a "$LOG"
