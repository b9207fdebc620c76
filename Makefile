# One command to set up and run the demo, one to set up and run the tests.
#   make demo    # creates .venv, installs CoWorker and the Node SDK, runs `coworker demo`
#   make test    # same set-up, then the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@

node/node_modules/.package-lock.json: node/package-lock.json
	cd node && npm ci --no-audit --no-fund --loglevel=error

setup: $(VENV)/.installed $(if $(wildcard node/package-lock.json),node/node_modules/.package-lock.json)

demo: setup
	$(BIN)/coworker demo

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

bench: setup
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) node/node_modules
