#!/usr/bin/env bash
# Sets up, idempotently, what the CoWorker 1.0 interop tests (tests/test_v1_interop.py) need, outside the repo:
#   <dir>/venv      a Python venv with the published agent-coworker==0.6.1
#   <dir>/node      Node 22 from npm (the `node` package; 0.6.1's bridge refuses Node < 22)
#   <dir>/bridge    0.6.1's bridge (xmtp_bridge.js, package.json) with its npm dependencies installed, so that the
#                   agents the tests start find them and never run npm themselves (offline after this script)
# <dir> is $COWORKER_V1_ENV, default $HOME/.coworker/v1-interop. Installing needs PyPI and the npm registry: run
# it on the host network (the tests themselves need none). Its standard output is only the variables a test run
# needs, NAME=VALUE a line: `export $(scripts/v1_interop_env.sh)` (what `make interop-v1` does, then the tests).
set -euo pipefail

DIR="${COWORKER_V1_ENV:-$HOME/.coworker/v1-interop}"
PYTHON="${PYTHON:-python3}"
V1_VERSION=0.6.1
NODE_VERSION=22
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
say() { echo "v1-interop: $*" >&2; }

# 1. The 0.6.1 agent, in its own venv (it must never see our coworker package, nor we its).
if [ ! -x "$DIR/venv/bin/python" ]; then
    say "creating $DIR/venv"
    "$PYTHON" -m venv "$DIR/venv" >&2
fi
INSTALLED="$("$DIR/venv/bin/python" -m pip show agent-coworker 2>/dev/null || true)"
if ! grep -qx "Version: $V1_VERSION" <<<"$INSTALLED"; then
    say "installing agent-coworker==$V1_VERSION"
    "$DIR/venv/bin/python" -m pip install --quiet "agent-coworker==$V1_VERSION" >&2
fi
V1_PACKAGE="$("$DIR/venv/bin/python" -c 'import agent_coworker, os; print(os.path.dirname(agent_coworker.__file__))')"

# 2. Node >= 22 (the machine's may be older): npm's `node` package carries the binary inside a registry package.
NODE_BIN="$DIR/node/node_modules/.bin/node"
node_major() { "$NODE_BIN" --version 2>/dev/null | sed -E 's/^v([0-9]+)\..*/\1/'; }
if [ "$(node_major)" != "$NODE_VERSION" ]; then
    say "installing node@$NODE_VERSION into $DIR/node"
    mkdir -p "$DIR/node"
    npm install --silent --no-audit --no-fund --prefix "$DIR/node" "node@$NODE_VERSION" >&2
fi
[ "$(node_major)" = "$NODE_VERSION" ] || { say "node $NODE_VERSION did not install: $NODE_BIN"; exit 1; }
NODE_DIR="$(dirname "$(readlink -f "$NODE_BIN")")"

# 3. The bridge's dependencies, installed as 0.6.1 itself would (`npm install --production` beside a copy of its
# package.json) with Node 22 first on PATH. The driver links each agent's <data dir>/bridge/node_modules here.
mkdir -p "$DIR/bridge"
if ! cmp -s "$V1_PACKAGE/_internal/bridge/package.json" "$DIR/bridge/package.json" \
        || [ ! -d "$DIR/bridge/node_modules/@xmtp/node-sdk" ]; then
    say "installing the bridge's npm dependencies into $DIR/bridge"
    cp "$V1_PACKAGE/_internal/bridge/package.json" "$V1_PACKAGE/_internal/bridge/xmtp_bridge.js" "$DIR/bridge/"
    (cd "$DIR/bridge" && PATH="$NODE_DIR:$PATH" npm install --silent --no-audit --no-fund --production >&2)
fi
# The bridge must load its native XMTP bindings on this machine (a newer node-sdk may need a newer glibc).
(cd "$DIR/bridge" && "$NODE_BIN" --input-type=module -e 'await import("@xmtp/node-sdk")') \
    || { say "the bridge's @xmtp/node-sdk does not load with $NODE_BIN"; exit 1; }
SDK_VERSION="$(cd "$DIR/bridge" && "$NODE_BIN" -p 'require("./node_modules/@xmtp/node-sdk/package.json").version')"
say "ready in $DIR: agent-coworker $V1_VERSION, node $("$NODE_BIN" --version), @xmtp/node-sdk $SDK_VERSION"

echo "COWORKER_V1_PYTHON=$DIR/venv/bin/python"
echo "COWORKER_V1_NODE_BIN=$NODE_BIN"
echo "COWORKER_V1_BRIDGE_DIR=$DIR/bridge"
