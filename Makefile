# The README's two commands. Each creates the virtualenv (the tool always lives in its own:
# its package names are generic), installs, and runs.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: run test lint venv clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,postgres]'
	touch $@

venv: $(VENV)/.installed

# The main job. Until `auditor demo` exists: the what-if calculator on the design's example
# (Llama 3 70B on 2 GPUs at $2.50/GPU-hour against 100M prompt + 20M generated tokens a month).
run: venv
	$(VENV)/bin/auditor breakeven --prompt-tokens 100M --generation-tokens 20M \
		--gpus 2 --gpu-hourly-usd 2.50 --hours 720 --capacity-tokens-per-s 30000

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
