"""A CoWorker 1.0 agent (the published agent-coworker 0.6.1) driven over JSON lines, for the interop tests.

Run by the 0.6.1 environment's Python (``scripts/v1_interop_env.sh`` makes it), never by ours::

    $COWORKER_V1_PYTHON tests/interop/v1_agent.py --name beta --data-dir DIR [--manual-trust]

It makes a wallet in DIR as ``coworker init`` does, starts 0.6.1's own Node bridge on ``XMTP_ENV=local`` (the
devnet on localhost:5556) with Node >= 22 from ``COWORKER_V1_NODE_BIN`` and the npm dependencies installed in
``COWORKER_V1_BRIDGE_DIR`` (linked, so it never runs npm), then runs ``Agent.serve`` with one skill, ``echo``, in a
thread. Its stdout carries only JSON lines; everything 0.6.1 prints goes to stderr:

    {"event": "ready", "wallet": "0x..", "inbox_id": "..", "bridge_pid": 123}
    {"event": "raw", "sender_inbox_id": "..", "content": ".."}    (every text message their bridge received)
    {"event": "inbound", "type": "trust_grant", "correlation_id": "..", "payload": {..}, ...}  (every message)
    {"id": 1, "ok": true, "result": ...}   or   {"id": 1, "ok": false, "error": "..."}

Commands, one JSON object a line on stdin, each run in its own thread (``id`` is echoed):
    connect {wallet}                     Agent.connect (discover, trust_request, re-discover; their waits)
    call {wallet, skill, input, timeout} Agent.call
    request {wallet, skill, input}       Agent.request (async task_request); result {task_id, timeout} waits for it
    collaborate {wallet, goal, timeout}  Agent.collaborate
    set_trust {wallet, tier}, tier {wallet}   their trust store (keyed by the exact string)
    send {to, type, payload, sender_wallet?, correlation_id?}   a hand-made 1.0 envelope through their bridge
    reply {correlation_id, timeout}      waits for the answer to such a send
    stop                                 stops the agent and its bridge (so does end of input or SIGTERM)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

# The JSON-lines channel is our stdout; 0.6.1 prints freely, so its prints go to stderr.
_OUT = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)
sys.stdout = sys.stderr
_OUT_LOCK = threading.Lock()


def emit(line: dict[str, Any]) -> None:
    with _OUT_LOCK:
        _OUT.write(json.dumps(line, default=str) + "\n")
        _OUT.flush()


def prepare(data_dir: Path, name: str) -> None:
    """A wallet and config as ``coworker init`` makes them, and the bridge's npm dependencies linked in."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if not (data_dir / "wallet.json").exists():
        key = "0x" + os.urandom(32).hex()
        placeholder = "0x" + hashlib.sha256(key.encode()).hexdigest()[-40:]  # what 0.6.1 uses until synced
        (data_dir / "wallet.json").write_text(json.dumps({"private_key": key, "address": placeholder}))
        (data_dir / "config.json").write_text(json.dumps({"name": name, "wallet": placeholder}))
    modules = data_dir / "bridge" / "node_modules"
    if not modules.exists():
        modules.parent.mkdir(exist_ok=True)
        modules.symlink_to(Path(os.environ["COWORKER_V1_BRIDGE_DIR"]) / "node_modules")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--manual-trust", action="store_true", help="no auto-accept of trust requests")
    args = parser.parse_args()

    node_bin = os.environ["COWORKER_V1_NODE_BIN"]
    os.environ["PATH"] = f"{Path(node_bin).resolve().parent}{os.pathsep}{os.environ.get('PATH', '')}"

    from agent_coworker import Agent
    from agent_coworker._internal import bridge
    from agent_coworker._internal import client as v1_client
    from agent_coworker._internal.client import _bridge_post, build_message

    bridge_get = v1_client._bridge_get

    def observed_get(data_dir: str, endpoint: str, params: dict[str, Any] | None = None) -> Any:
        """Every text the bridge hands over, CoWorker 1.0 or not (their client drops the others unseen)."""
        answer = bridge_get(data_dir, endpoint, params)
        if endpoint == "/inbox":
            for raw in answer.get("messages", []):
                emit({"event": "raw", "sender_inbox_id": raw.get("senderInboxId"),
                      "content_type": raw.get("contentType"), "content": str(raw.get("content"))[:2000]})
        return answer

    v1_client._bridge_get = observed_get

    data_dir: Path = args.data_dir.resolve()
    prepare(data_dir, args.name)
    started = bridge.start(data_dir, env="local")  # serve() alone would start it on "production"
    if "error" in started:
        emit({"event": "failed", "error": started["error"], "log": started.get("log", "")})
        return 1
    config = json.loads((data_dir / "config.json").read_text())
    config["wallet"] = started["address"]  # what serve() syncs; done first so that no message has the placeholder
    (data_dir / "config.json").write_text(json.dumps(config))

    agent = Agent(args.name, data_dir=str(data_dir), auto_accept_trust=not args.manual_trust)

    @agent.skill("echo", description="Echo text back", input_schema={"text": "str"},
                 output_schema={"text": "str"})
    def echo(text: str) -> dict[str, Any]:
        emit({"event": "ran", "skill": "echo", "input": {"text": text}})
        return {"text": text}

    handle = agent._handle_message

    def observed(msg: dict[str, Any]) -> None:
        emit({"event": "inbound", **{k: msg.get(k) for k in (
            "type", "version", "correlation_id", "payload", "sender_wallet", "sender_id", "_xmtp_sender")}})
        handle(msg)

    agent._handle_message = observed  # type: ignore[method-assign]
    serving = threading.Thread(target=agent.serve, kwargs={"monitor_port": 0, "expose_skills": "all"}, daemon=True)
    serving.start()
    inbox_id = agent.client.get_inbox_id()
    done = threading.Event()

    def stop(*_: object) -> None:
        agent._running = False
        bridge.stop(data_dir)
        done.set()

    signal.signal(signal.SIGTERM, stop)
    emit({"event": "ready", "name": args.name, "wallet": agent.wallet, "inbox_id": inbox_id,
          "bridge_pid": started.get("pid")})

    def wait_result(task_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            result: dict[str, Any] = agent.get_result(task_id)
            if result.get("state") not in ("queued", "pending", "sent", "running") or time.monotonic() > deadline:
                return result
            time.sleep(0.2)

    def send(a: dict[str, Any]) -> str:
        corr = a.get("correlation_id") or uuid.uuid4().hex[:8]
        envelope = build_message(a["type"], a.get("payload") or {}, sender_id=args.name, correlation_id=corr)
        envelope["sender_wallet"] = a.get("sender_wallet", agent.wallet)
        _bridge_post(str(data_dir), "/send", {"to": a["to"], "content": json.dumps(envelope)})
        return corr

    def reply(a: dict[str, Any]) -> dict[str, Any] | None:
        deadline = time.monotonic() + float(a.get("timeout", 30))
        while time.monotonic() < deadline:
            if a["correlation_id"] in agent._response_box:
                answer: dict[str, Any] = agent._response_box.pop(a["correlation_id"])
                return answer
            time.sleep(0.1)
        return None

    commands: dict[str, Any] = {
        "connect": lambda a: agent.connect(a["wallet"]),
        "call": lambda a: agent.call(a["wallet"], a["skill"], a.get("input") or {},
                                     timeout=float(a.get("timeout", 30))),
        "request": lambda a: agent.request(a["wallet"], a["skill"], a.get("input") or {}),
        "result": lambda a: wait_result(a["task_id"], float(a.get("timeout", 30))),
        "collaborate": lambda a: agent.collaborate(a["wallet"], a["goal"], timeout=float(a.get("timeout", 120))),
        "set_trust": lambda a: agent.trust_manager.set_trust_override(a["wallet"], int(a["tier"])),
        "tier": lambda a: agent.trust_manager.get_trust_tier(a["wallet"]),
        "send": send,
        "reply": reply,
    }

    def run(line: dict[str, Any]) -> None:
        try:
            emit({"id": line.get("id"), "ok": True, "result": commands[line["cmd"]](line)})
        except Exception as exc:  # reported to the test, which decides
            emit({"id": line.get("id"), "ok": False, "error": f"{type(exc).__name__}: {exc}"})

    def read_commands() -> None:
        for raw in sys.stdin:
            if not raw.strip():
                continue
            line = json.loads(raw)
            if line.get("cmd") == "stop":
                break
            threading.Thread(target=run, args=(line,), daemon=True).start()
        stop()

    threading.Thread(target=read_commands, daemon=True).start()
    done.wait()
    emit({"event": "stopped"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
