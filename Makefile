# The two set-up commands: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.selfsup-installed
# torch first, so nothing that depends on it pulls a different build. On a machine without an
# NVIDIA GPU this is the CPU build where one is available; override with `make venv TORCH=...`.
TORCH ?= torch==2.13.0
DEMO_DIR ?= demo

.PHONY: venv demo test test-fast clean-demo gpu-check

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: venv
	$(PY) -m selfsup.demo $(DEMO_DIR)

test: venv
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

clean-demo:
	rm -rf $(DEMO_DIR)

# Everything the README promises for GPUs, on a GPU node, in one go (benchmarks/gpu.py). No venv
# step: it installs nothing and uses the environment as it is.
gpu-check:
	$(PY) -m benchmarks.gpu
