#!/usr/bin/env bash
# N processes on this node through the DeepSpeed launcher (one per GPU; on a CPU-only machine N ranks
# with the gloo backend).
#
#   launch/local.sh 2 tools/pretrain.py --ds_config zero2_bf16 --space demo --steps 1000
#
# Env: MASTER_PORT (default 29500), PYTHON (default .venv/bin/python if present, else python3).
set -euo pipefail
NPROC=${1:?usage: launch/local.sh NPROC SCRIPT [ARGS...]}
shift
HERE=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$([ -x "$HERE/.venv/bin/python" ] && echo "$HERE/.venv/bin/python" || echo python3)}
if ! "$PYTHON" -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  export DS_ACCELERATOR=cpu
  # the launcher leaves several threads per rank, which oversubscribes the cores
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / NPROC > 0 ? $(nproc) / NPROC : 1 ))}
fi
exec "$PYTHON" -m deepspeed.launcher.runner --num_accelerators "$NPROC" \
  --master_port "${MASTER_PORT:-29500}" "$@"
