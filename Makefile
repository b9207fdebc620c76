# One command to set up and run the demo, one to set up and run the tests.
#   make demo    # creates .venv, installs CoWorker and its Node side (`coworker setup`), runs `coworker demo`
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

# The Node side (the XMTP SDK the sidecar runs on) goes into $COWORKER_HOME/node/, once per version.
setup: $(VENV)/.installed
	$(BIN)/coworker setup

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
	rm -rf $(VENV)
