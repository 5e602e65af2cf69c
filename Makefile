# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY ?= $(VENV)/bin/python
# Set INSTALL= (empty) where the environment is already provisioned (the Docker image does).
INSTALL ?= $(VENV)/.installed
# The CPU build of torch lies on local disk here; pinning it in the same pip command keeps
# pip from resolving a multi-GB CUDA build. GPU clusters override: make install TORCH_PIN=
TORCH_PIN ?= torch==2.13.0
TEST_ENV := DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 WANDB_MODE=disabled HF_DATASETS_OFFLINE=1 \
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: install test test-slow demo bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN) -e '.[dev,demo,onnx]'
	touch $@

install: $(INSTALL)

# Two workers, whole files each (module fixtures are built once): most tests start tools as subprocesses
# whose imports leave the second core idle.
TEST_WORKERS ?= 2

test: $(INSTALL)
	$(TEST_ENV) $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-slow: $(INSTALL)
	$(TEST_ENV) $(PY) -m pytest -q -m slow

demo: $(INSTALL)
	WANDB_MODE=$${WANDB_MODE:-offline} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) tools/demo.py

clean:
	rm -rf $(VENV) runs build *.egg-info
