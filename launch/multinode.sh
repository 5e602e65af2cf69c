#!/usr/bin/env bash
# Multi-node training. Two ways:
#
# 1) From one head node over ssh (pdsh), with a DeepSpeed hostfile ("hostname slots=<gpus>" per line):
#      launch/multinode.sh --hostfile hosts.txt tools/pretrain.py --ds_config zero3_bf16 ...
#
# 2) Without ssh: run the same command on every node, each with its NODE_RANK
#    (what containers, Kubernetes and Slurm use):
#      NODE_RANK=0 MASTER_ADDR=10.0.0.1 launch/multinode.sh --hostfile hosts.txt tools/pretrain.py ...
#      NODE_RANK=1 MASTER_ADDR=10.0.0.1 launch/multinode.sh --hostfile hosts.txt tools/pretrain.py ...
#
# Env: MASTER_ADDR (default: first host of the hostfile), MASTER_PORT (default 29500),
#      NODE_RANK (set => no-ssh mode), PYTHON (default .venv/bin/python if present, else python3).
set -euo pipefail
[ "${1:-}" = "--hostfile" ] || { echo "usage: launch/multinode.sh --hostfile FILE SCRIPT [ARGS...]" >&2; exit 2; }
HOSTFILE=$2
shift 2
[ -f "$HOSTFILE" ] || { echo "multinode.sh: hostfile $HOSTFILE not found" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$([ -x "$HERE/.venv/bin/python" ] && echo "$HERE/.venv/bin/python" || echo python3)}
MASTER_ADDR=${MASTER_ADDR:-$(awk 'NF && $1 !~ /^#/ {print $1; exit}' "$HOSTFILE")}
ARGS=(--hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" --master_port "${MASTER_PORT:-29500}")
if [ -n "${NODE_RANK:-}" ]; then
  ARGS+=(--no_ssh --node_rank "$NODE_RANK")
fi
if ! "$PYTHON" -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  export DS_ACCELERATOR=cpu OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi
exec "$PYTHON" -m deepspeed.launcher.runner "${ARGS[@]}" "$@"
