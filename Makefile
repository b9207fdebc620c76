# One command to set up and run the demo, one to set up and run the tests.
#   make demo    # creates .venv, installs CoWorker and its Node side (`coworker setup`), runs `coworker demo`
#   make test    # the same plus the test tools, then the whole test suite
# The Node side (the XMTP SDK the sidecar runs on) goes into $COWORKER_HOME/node/ (default ~/.coworker), once per
# version; `coworker setup` is quick when it is there already.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup setup-dev demo test lint bench wheel clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# What the demo needs: CoWorker itself.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# What the tests, the linters and the benchmarks need besides.
$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@

setup: $(VENV)/.installed
	$(BIN)/coworker setup

setup-dev: $(VENV)/.installed-dev
	$(BIN)/coworker setup

demo: setup
	$(BIN)/coworker demo

test: setup-dev
	$(BIN)/python -m pytest -q

lint: setup-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

bench: setup-dev
	$(BIN)/python benchmarks/run.py

# The wheel and sdist people install (dist/), built in an isolated environment.
wheel: setup-dev
	rm -rf dist
	$(BIN)/python -m build --outdir dist .

clean:
	rm -rf $(VENV) dist build
