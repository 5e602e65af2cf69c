# atb on a CUDA PyTorch base image, with DeepSpeed. Build and run the demo:
#   docker build -t atb .
#   docker run --gpus all --rm -v $PWD/runs:/workspace/atb/runs atb make demo
# Multi-node: run the same image on every node with NODE_RANK and MASTER_ADDR set, e.g.
#   docker run --gpus all --network host -e NODE_RANK=0 -e MASTER_ADDR=10.0.0.1 -v /shared:/shared atb \
#     launch/multinode.sh --hostfile /shared/hosts.txt tools/pretrain.py --ds_config zero3_bf16 --out_dir /shared/run
FROM pytorch/pytorch:2.7.1-cuda12.6-cudnn9-devel

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    WANDB_MODE=offline HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
RUN apt-get update && apt-get install -y --no-install-recommends git make numactl pdsh openssh-client \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /workspace/atb
# dependencies first, so code edits do not re-install them
COPY pyproject.toml README.md ./
COPY atb/__init__.py atb/__init__.py
RUN pip install -e '.[dev,demo]'
COPY . .
# the image's own CUDA torch satisfies pyproject's range: make uses it instead of building a CPU venv
ENV PY=python INSTALL=
CMD ["make", "demo"]
