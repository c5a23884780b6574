# `make demo` and `make test` do all the set-up on a fresh machine with Python >= 3.11.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint format docs bench clean

$(VENV)/.stamp-base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[demo]"
	touch $@

$(VENV)/.stamp-test: pyproject.toml $(VENV)/.stamp-base
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

$(VENV)/.stamp-bench: pyproject.toml $(VENV)/.stamp-test
	# The CPU build of torch first (for GPyTorch); an unpinned torch pulls a CUDA build.
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[benchmark]"
	touch $@

demo: $(VENV)/.stamp-base
	$(PY) -u examples/demo.py

lint: $(VENV)/.stamp-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

docs: $(VENV)/.stamp-test
	$(VENV)/bin/mkdocs build --strict --site-dir /tmp/matfree-site

test: $(VENV)/.stamp-test lint docs
	$(PY) -m pytest -n 2 -q --durations=30

format: $(VENV)/.stamp-test
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(VENV)/.stamp-bench
	$(PY) -u benchmarks/run_all.py

clean:
	rm -rf $(VENV) site
