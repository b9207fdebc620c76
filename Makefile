# One command to set up and run the demo, one to set up and run the tests.
#   make demo    # creates .venv, installs CoWorker and its Node side (`coworker setup`), runs `coworker demo`
#   make test    # the same plus the test tools, then the whole test suite
#   make interop-v1  # the interop tests against CoWorker 1.0 (agent-coworker 0.6.1, set up outside the repo)
# The Node side (the XMTP SDK the sidecar runs on) goes into $COWORKER_HOME/node/ (default ~/.coworker), once per
# version; `coworker setup` is quick when it is there already.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup setup-dev demo test interop-v1 lint bench wheel clean

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

# Against the published CoWorker 1.0: scripts/v1_interop_env.sh sets up agent-coworker 0.6.1 and Node 22 in
# $$COWORKER_V1_ENV (default ~/.coworker/v1-interop; needs the registries the first time), then the tests run
# with the variables it prints. Like the other XMTP tests they need port 5556 free.
interop-v1: setup-dev
	vars="$$(scripts/v1_interop_env.sh)" && env $$vars $(BIN)/python -m pytest -q -m v1_interop tests/test_v1_interop.py

lint: setup-dev
	$(BIN)/ruff check src tests scripts benchmarks
	$(BIN)/mypy

bench: setup-dev
	$(BIN)/python benchmarks/run.py

# The wheel and sdist people install (dist/), built in an isolated environment.
wheel: setup-dev
	rm -rf dist
	$(BIN)/python -m build --outdir dist .

clean:
	rm -rf $(VENV) dist build
