"""Interop with CoWorker 1.0: the published agent-coworker 0.6.1, in its own environment, against ours, on the devnet.

Every agent is a process of its own: ours is ``coworker serve APP.py`` (driven through its control port, as in
test_xmtp_processes.py), each 1.0 agent is tests/interop/v1_agent.py run by the 0.6.1 environment's Python with its
own Node bridge (``XMTP_ENV=local``, so it dials the devnet on localhost:5556 like our sidecar). The 1.0 API polls:
its bridge inbox every 1.5 s, its waits in 0.5-1 s steps, and ``connect()`` waits 15 s for a trust answer it does
not get while ours is pending; those waits are theirs (the tests wait on the driver's output lines, with bounds).

Needs the 1.0 environment: ``make interop-v1`` makes it (scripts/v1_interop_env.sh) and runs these tests; they are
skipped unless COWORKER_V1_PYTHON is set. Port 5556 must be free (no ``coworker devnet`` running).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from coworker.devnet import DevnetServer

from .test_xmtp_processes import ServedAgent, served_app

SETUP = "make interop-v1 (or `export $(scripts/v1_interop_env.sh)` first)"
pytestmark = [
    pytest.mark.v1_interop,
    pytest.mark.integration,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not os.environ.get("COWORKER_V1_PYTHON"),
                       reason=f"needs CoWorker 1.0 (agent-coworker 0.6.1) in its own environment: {SETUP}"),
]

DRIVER = Path(__file__).parent / "interop" / "v1_agent.py"

APP = '''
from pathlib import Path

from coworker import Agent, TrustTier

RUNS = Path({runs!r})
agent = Agent("ours")


@agent.skill("reverse", description="Reverse text", input_schema={{"text": "str"}}, output_schema={{"text": "str"}})
def reverse(text: str) -> dict:
    with RUNS.open("a") as runs:
        runs.write("reverse\\n")
    return {{"text": text[::-1]}}


@agent.skill(min_trust_tier=TrustTier.INTERNAL)
def secret() -> str:
    return "the secret"
'''


class V1Agent:
    """A CoWorker 1.0 agent in its own process (tests/interop/v1_agent.py): commands in, JSON lines out."""

    def __init__(self, name: str, data_dir: Path, home: Path, *, manual_trust: bool = False) -> None:
        self.name, self.data_dir = name, data_dir
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []  # every event line read so far, for checks after the fact
        self._next_id = 0
        home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "HOME": str(home)}  # 0.6.1 keeps some state under ~/.coworker: a private one
        env.pop("COWORKER_HOME", None)
        command = [os.environ["COWORKER_V1_PYTHON"], str(DRIVER), "--name", name, "--data-dir", str(data_dir)]
        self.log = data_dir.parent / f"{name}.stderr"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command + (["--manual-trust"] if manual_trust else []), env=env,
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
        self._reader = threading.Thread(target=self._read, name=f"v1-{name}", daemon=True)
        self._reader.start()
        ready = self.wait_for(lambda line: line.get("event") in ("ready", "failed"), 90)
        assert ready["event"] == "ready", f"the 1.0 agent did not start: {ready}\n{self.tail()}"
        self.wallet: str = ready["wallet"]
        self.inbox_id: str = ready["inbox_id"]
        self.bridge_pid: int | None = ready.get("bridge_pid")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.lines.put(json.loads(raw))
        self.lines.put({"event": "exited"})

    def wait_for(self, match: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        """The next output line that matches (lines before it are kept in ``seen``)."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"{self.name}: no matching line within {timeout} s\n{self.tail()}") from None
            self.seen.append(line)
            if match(line):
                return line
            if line.get("event") == "exited":
                raise AssertionError(f"{self.name} exited\n{self.tail()}")

    def find(self, match: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        """The first line so far that matches, or the next one to come."""
        self.drain()
        return next((line for line in self.seen if match(line)), None) or self.wait_for(match, timeout)

    def drain(self) -> None:
        """Moves the lines read so far into ``seen``."""
        with contextlib.suppress(queue.Empty):
            while True:
                self.seen.append(self.lines.get_nowait())

    def command(self, cmd: str, bound: float, **args: Any) -> Any:
        """Runs one driver command and returns its result, waiting up to ``bound`` seconds for it."""
        self._next_id += 1
        ask = self._next_id
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"id": ask, "cmd": cmd, **args}) + "\n")
        self.process.stdin.flush()
        answer = self.wait_for(lambda line: line.get("id") == ask, bound)
        assert answer["ok"], f"{self.name} {cmd}: {answer['error']}\n{self.tail()}"
        return answer["result"]

    async def ask(self, cmd: str, **args: Any) -> Any:
        """A command, waited for up to its own ``timeout`` plus 0.6.1's waits (a connect can take 2 min)."""
        return await asyncio.to_thread(self.command, cmd, float(args.get("timeout", 30)) + 120, **args)

    async def expect(self, match: Callable[[dict[str, Any]], bool], timeout: float = 30) -> dict[str, Any]:
        return await asyncio.to_thread(self.find, match, timeout)

    def events(self, event: str) -> list[dict[str, Any]]:
        self.drain()
        return [line for line in self.seen if line.get("event") == event]

    def tail(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        bridge = self.data_dir / "bridge.log"
        return f"--- {self.name} stderr ---\n{text[-3000:]}\n--- {self.name} bridge.log ---\n" + (
            bridge.read_text(errors="replace")[-1500:] if bridge.exists() else "")

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                self.process.stdin.write('{"cmd": "stop"}\n')
                self.process.stdin.flush()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.bridge_pid is not None:  # started in a session of its own: it does not die with the driver
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.bridge_pid, signal.SIGKILL)


@pytest.fixture
def ours(xmtp_node: DevnetServer, home: Path, tmp_path: Path) -> Iterator[ServedAgent]:
    """Our agent, ``coworker serve APP.py``: skills reverse (KNOWN) and secret (INTERNAL)."""
    yield from served_app(APP, "ours", home, tmp_path)


@pytest.fixture
def make_v1(xmtp_node: DevnetServer, tmp_path: Path) -> Iterator[Callable[..., V1Agent]]:
    made: list[V1Agent] = []

    def make(name: str, *, manual_trust: bool = False) -> V1Agent:
        made.append(V1Agent(name, tmp_path / f"v1-{name}", tmp_path / f"v1-home-{name}", manual_trust=manual_trust))
        return made[-1]

    yield make
    for agent in made:
        agent.close()


def our_log(served: ServedAgent) -> str:
    log = served.app.with_suffix(".log")
    return "--- our agent's log ---\n" + (log.read_text(errors="replace")[-3000:] if log.exists() else "")


def skill_names(peer: dict[str, Any]) -> list[str]:
    return sorted(s["name"] if isinstance(s, dict) else s for s in peer.get("skills", []))


async def test_a_v1_agent_and_ours_start_on_the_devnet_and_their_messages_reach_each_other(
        ours: ServedAgent, make_v1: Callable[..., V1Agent]) -> None:
    # Holds with or without our 1.0 codec: it checks delivery, which needs none.
    beta = make_v1("beta")
    status = await ours.ask("status")
    assert status["network"] == "local" and status["xmtp"]["streaming"]

    # ours -> theirs: their bridge hands over our message (0.6.1 drops it unread unless it is 1.0)
    pinging = asyncio.create_task(ours.ask("ping", wallet=beta.wallet, timeout=5))
    await beta.expect(lambda line: line.get("event") == "raw" and line["sender_inbox_id"] == status["xmtp"]["inboxId"])
    with contextlib.suppress(Exception):  # a pong needs the codec
        await pinging

    # theirs -> ours: with the codec a 1.0 pong comes back; without it our log names the refused sender
    corr = await beta.ask("send", to=status["wallet"], type="ping", payload={})
    pong = await beta.ask("reply", correlation_id=corr, timeout=15)
    if pong is None:
        log = our_log(ours)
        assert f"refused a message from ['{beta.wallet}']: not a CoWorker v2 message" in log, log
    else:
        assert (pong["type"], pong["sender_wallet"]) == ("pong", status["wallet"].lower()), pong


async def test_a_v1_agent_discovers_ours_asks_for_trust_is_approved_and_calls_a_skill_once(
        ours: ServedAgent, make_v1: Callable[..., V1Agent]) -> None:
    beta = make_v1("beta")
    wallet = (await ours.ask("status"))["wallet"]

    first = await beta.ask("connect", wallet=wallet)  # discover, then trust_request: ours queues it
    assert "error" not in first, f"{first}\n{our_log(ours)}"
    assert skill_names(first) == []  # a stranger sees nothing
    requests = await ours.ask("trust_requests")
    assert [r["wallet"].lower() for r in requests] == [beta.wallet], our_log(ours)
    assert requests[0]["tier"] == "known"

    assert await ours.ask("approve", wallet=beta.wallet) == "known"
    second = await beta.ask("connect", wallet=wallet)
    assert skill_names(second) == ["reverse"], f"{second}\n{our_log(ours)}"  # "secret" needs INTERNAL

    result = await beta.ask("call", wallet=wallet, skill="reverse", input={"text": "abc"})
    assert result["success"] is True and result["result"] == {"text": "cba"}, f"{result}\n{our_log(ours)}"
    assert ours.ran() == 1


async def test_our_agent_calls_a_v1_agents_skill_and_gets_the_result(
        ours: ServedAgent, make_v1: Callable[..., V1Agent]) -> None:
    beta = make_v1("beta")  # 0.6.1's default: trust requests up to KNOWN are granted at once
    our_inbox = (await ours.ask("status"))["xmtp"]["inboxId"]

    connecting = asyncio.create_task(ours.ask("connect", wallet=beta.wallet))
    await beta.expect(lambda line: line.get("event") == "raw" and line["sender_inbox_id"] == our_inbox)
    peer = await connecting
    assert peer["name"] == "beta" and peer["skills"] == [], peer  # we are a stranger to them

    assert await ours.ask("request_trust", wallet=beta.wallet, tier=1, reason="interop") == "granted"
    peer = await ours.ask("connect", wallet=beta.wallet)
    assert peer["skills"] == ["echo"], peer

    assert await ours.ask("call", wallet=beta.wallet, skill="echo", input={"text": "hi from v2"}) == {
        "text": "hi from v2"}
    await beta.expect(lambda line: line.get("event") == "ran")  # printed before its answer left
    assert [line["input"] for line in beta.events("ran")] == [{"text": "hi from v2"}]  # ran once
    # 0.6.1 keys its trust by the exact string we claim: ours must be the lower-case address in every message
    our_wallet = (await ours.ask("status"))["wallet"].lower()
    assert {line["sender_wallet"] for line in beta.events("inbound")} == {our_wallet}
    assert await beta.ask("tier", wallet=our_wallet) == 1


async def test_a_v1_message_claiming_a_trusted_wallet_from_another_inbox_is_refused_and_changes_nothing(
        ours: ServedAgent, make_v1: Callable[..., V1Agent]) -> None:
    beta = make_v1("beta")
    mallory = make_v1("mallory")
    wallet = (await ours.ask("status"))["wallet"]
    await ours.ask("set_trust", wallet=beta.wallet, tier=2)  # beta: INTERNAL

    # mallory's own inbox, beta's wallet in the body: a call, then a trust request to raise "beta" further
    call = await mallory.ask("send", to=wallet, type="task_request", sender_wallet=beta.wallet,
                             payload={"skill": "secret", "input": {}})
    refusal = await mallory.ask("reply", correlation_id=call, timeout=30)
    assert refusal is not None, f"no answer to mallory\n{our_log(ours)}"
    assert refusal["type"] in ("error", "task_error") and "the secret" not in json.dumps(refusal), refusal
    trust = await mallory.ask("send", to=wallet, type="trust_request", sender_wallet=beta.wallet,
                              payload={"requested_tier": 3, "reason": "I am beta"})
    refusal = await mallory.ask("reply", correlation_id=trust, timeout=30)
    assert refusal is not None and refusal["type"] in ("error", "trust_deny"), refusal

    assert ours.ran() == 0
    assert await ours.ask("trust_requests") == []
    # beta still holds INTERNAL (it sees secret), and mallory is still a stranger (it sees nothing)
    assert skill_names(await beta.ask("connect", wallet=wallet)) == ["reverse", "secret"], our_log(ours)
    discover = await mallory.ask("send", to=wallet, type="discover", payload={"name": "mallory",
                                                                              "wallet": mallory.wallet})
    capabilities = await mallory.ask("reply", correlation_id=discover, timeout=30)
    assert capabilities is not None and capabilities["type"] == "capabilities", capabilities
    assert capabilities["payload"]["skills"] == []
    # nothing of it reached beta: every answer went to the inbox that really sent the message
    assert {line.get("correlation_id") for line in beta.events("inbound")}.isdisjoint({call, trust, discover})


async def test_a_v1_collaboration_with_our_agent_as_the_peer_completes(
        ours: ServedAgent, make_v1: Callable[..., V1Agent]) -> None:
    beta = make_v1("beta")
    wallet = (await ours.ask("status"))["wallet"]
    await ours.ask("set_trust", wallet=beta.wallet, tier=1)

    # 0.6.1 plans every skill of both sides, each input field given the goal: its echo here, our reverse there
    outcome = await beta.ask("collaborate", wallet=wallet, goal="reverse this text", timeout=120)
    assert outcome.get("success") is True, f"{outcome}\n{our_log(ours)}"
    ours_steps = [step for step in outcome["steps"] if step["agent_wallet"] == wallet]
    assert [step["skill"] for step in ours_steps] == ["reverse"], outcome
    assert ours_steps[0]["result"]["result"] == {"text": "txet siht esrever"}
    assert ours.ran() == 1


async def test_a_v1_agents_async_request_to_ours_runs_once_and_its_result_comes_back(
        ours: ServedAgent, make_v1: Callable[..., V1Agent]) -> None:
    beta = make_v1("beta")
    wallet = (await ours.ask("status"))["wallet"]
    await ours.ask("set_trust", wallet=beta.wallet, tier=1)
    task_id = await beta.ask("request", wallet=wallet, skill="reverse", input={"text": "later"})
    result = await beta.ask("result", task_id=task_id, timeout=60)
    assert (result["state"], result["result"]) == ("succeeded", {"text": "retal"}), f"{result}\n{our_log(ours)}"
    assert ours.ran() == 1


async def test_our_collaboration_with_a_v1_agent_as_the_peer_completes(
        ours: ServedAgent, make_v1: Callable[..., V1Agent]) -> None:
    beta = make_v1("beta")  # grants trust requests up to KNOWN at once
    assert await ours.ask("request_trust", wallet=beta.wallet, tier=1, reason="interop") == "granted"
    plan = {"steps": [{"id": "shout", "skill": "echo", "agent": beta.wallet, "input": {"text": "mls"}},
                      {"id": "back", "skill": "reverse", "input": {"text": "{{shout.output.text}}"}}]}
    result = await ours.ask("collaborate", wallet=beta.wallet, goal="echo and reverse", plan=plan, timeout=120)
    assert result["state"] == "completed", f"{result}\n{our_log(ours)}"
    assert [step["output"] for step in result["steps"]] == [{"text": "mls"}, {"text": "slm"}]
    assert [line["input"] for line in beta.events("ran")] == [{"text": "mls"}]  # their step ran once
