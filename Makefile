# imc: every command creates .venv/ and installs what it needs on first use.
PY := .venv/bin/python
PIP := .venv/bin/pip
STAMP := .venv/.installed
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup weights demo test lint bench bench-metric kaggle clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[cpu,dev]"
	touch $(STAMP)

setup: $(STAMP)

# ALIKED-n16 and LightGlue-for-ALIKED, checked against weights/manifest.json.
weights: $(STAMP)
	$(PY) -m imc.weights fetch

# The main job on a synthetic scene that needs no download.
demo: weights
	.venv/bin/imc demo

test: weights
	$(PY) -m pytest -q tests

lint: $(STAMP)
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

bench-metric: $(STAMP)
	$(PY) bench/metric_speed.py

bench: weights
	$(PY) bench/run_bench.py

# dist/kaggle/: package source + weights, offline wheels, notebook and install_and_run.py.
kaggle: weights
	$(PY) -m imc.bundle build --out dist/kaggle

clean:
	rm -rf outputs dist .pytest_cache .ruff_cache
