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

# The main job on a machine without GPUs: a month of simulated traffic for two deployments, the
# rules, and the finance report (HTML, CSV, Markdown, JSON) in a scratch directory it prints.
run: venv
	$(VENV)/bin/auditor demo
	@echo
	@echo "auditor lives in $(VENV)/bin: type $(VENV)/bin/auditor --help, or first 'source $(VENV)/bin/activate', then auditor --help"

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
