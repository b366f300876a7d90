# The one place that owns the install path: README, CI and the demo all go through here.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint format demo bench bench-full clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0   # CPU wheel; any other spec pulls a multi-GB CUDA build
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo: install
	$(VENV)/bin/metapolicy demo

bench: install          # initial training, both architectures, 3 seeds (~8 min on 2 cores)
	$(PY) -m benchmarks.training

bench-full: install     # the retention grid: every strategy, both architectures (~55 min)
	$(PY) -m benchmarks.retention

clean:
	rm -rf $(VENV) build *.egg-info
