# The one place that owns the install path: README, CI and the demo all go through here.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test e2e lint format demo demo-offline bench bench-full clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0   # CPU wheel; any other spec pulls a multi-GB CUDA build
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: install            # everything, e2e scenarios included
	$(PY) -m pytest -q

e2e: install             # only the end-to-end scenarios (E2E_KUBECONFIG=... for a real cluster)
	$(PY) -m pytest -q -m e2e tests/e2e

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo: install            # embedded cluster + operator as processes, a scenario, the timeline
	$(PY) -m e2e.demo

demo-offline: install    # the same pipeline without Kubernetes
	$(VENV)/bin/metapolicy demo

BENCHMARKS := retention latency reaction storm decision workloads serving scale

bench: install          # every benchmark, quick versions (README's tables; about 35 min on 2 cores)
	$(PY) -m pip install --quiet -e '.[bench]'
	for b in $(BENCHMARKS); do $(PY) -m benchmarks.$$b --quick || exit 1; done

bench-full: install     # every benchmark in full: all strategies, more repeats (over an hour)
	$(PY) -m pip install --quiet -e '.[bench]'
	for b in $(BENCHMARKS); do $(PY) -m benchmarks.$$b --out benchmarks/results/full/$$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
