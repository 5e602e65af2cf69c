#!/usr/bin/env bash
# The checks that need a GPU, in one go (CI has none): bf16 MFU of a BERT-base-size SuperPLM under
# DeepSpeed, subnet_scaling in bf16, and the test files whose single-rank jobs then run on the GPU
# (NCCL, bf16/fp16 engines, CUDA latency). Each step has its own time limit, so one hang costs one step.
#
#   bench/gpu_checks.sh [LOG]        # LOG defaults to runs/gpu_checks.log; PYTHON=... picks the interpreter
#
# PEAK_TFLOPS is the GPU's dense bf16 peak for MFU (default 989: H100 SXM); STEPS selects steps by name.
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${1:-runs/gpu_checks.log}
mkdir -p "$(dirname "$LOG")"
PY=${PYTHON:-python3}
PEAK=${PEAK_TFLOPS:-989}
STEPS=${STEPS:-env mfu subnet tests}
export WANDB_MODE=disabled HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
unset DS_ACCELERATOR

step() {  # step NAME LIMIT_S CMD...
  local name=$1 limit=$2
  shift 2
  [[ " $STEPS " == *" $name "* ]] || return 0
  echo "=== $name ($(date +%T)): $*" | tee -a "$LOG"
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG" | grep -E "BENCH|MFU|tokens/s|ratio|passed|failed|error|Error|^L[0-9]" | tail -40
  echo "=== $name rc=${PIPESTATUS[0]}" | tee -a "$LOG"
}

step env 60 "$PY" -c "import torch, deepspeed, transformers, datasets, atb; print('torch', torch.__version__, \
torch.version.cuda, torch.cuda.get_device_name(0), '| deepspeed', deepspeed.__version__, '| transformers', \
transformers.__version__, '| datasets', datasets.__version__)"
for batch in 64 128; do
  step mfu 240 "$PY" bench/superplm_overhead.py --deepspeed --ds_config zero2_bf16 \
    --space bench/spaces/bert_base.yaml --batch "$batch" --seq 128 --steps_per_round 10 --repeats 6 \
    --peak_tflops "$PEAK"
done
step subnet 240 "$PY" bench/subnet_scaling.py --device cuda --dtype bf16 --batch 32 --repeats 10
# the tests whose jobs run on one rank, so on the GPU here (the two-rank ones stay on CPU/gloo with one GPU)
GPU_TESTS="untouched or resume_is_exact or fp16 or bad_inputs or one_student or develop_rejects or cuda_event"
step tests 420 "$PY" -m pytest -q -p no:cacheprovider tests/test_pretrain.py tests/test_latency.py \
  tests/test_develop.py -k "$GPU_TESTS"
