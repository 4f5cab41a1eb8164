# The two set-up commands (each creates .venv and installs what it needs):
#   make demo   train the quickstart model on scikit-learn's breast cancer data
#   make test   install everything (Horovod built from source once) and run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test test-fast lint bench

demo:
	scripts/bootstrap.sh demo
	$(PY) -m candle train --trainer examples/quickstart.py:BreastCancer experiment=quickstart

test:
	scripts/bootstrap.sh test
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast:
	scripts/bootstrap.sh test
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench:
	scripts/bootstrap.sh test
	$(PY) benchmarks/run_all.py
