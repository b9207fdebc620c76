"""Agents in separate processes over XMTP through a devnet: first contact, restarts, a killed sidecar, forgery.

The callee runs as ``coworker serve APP.py`` in its own process (with its own Node sidecar); callers run in the
test process with their own sidecars, or are raw XMTP clients. Skill executions are counted in a file the callee
appends to, so a test can tell how often a skill ran in another process.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import coworker
from coworker import AsyncAgent, TrustTier
from coworker._process import read_line
from coworker.agent.control import ControlClient
from coworker.core.protocol import encode, request
from coworker.devnet import DevnetServer
from coworker.store.identity import Identity
from coworker.transports.xmtp.driver import NodeDriver
from coworker.transports.xmtp.transport import XmtpNetwork

from .conftest import RawClient

pytestmark = pytest.mark.integration

APP = '''
from pathlib import Path

from coworker import Agent, TrustTier

RUNS = Path({runs!r})
agent = Agent("alice")


@agent.skill("summarize", description="Summarize text")
def summarize(text: str, max_words: int = 50) -> dict:
    with RUNS.open("a") as runs:
        runs.write("summarize\\n")
    words = text.split()
    return {{"summary": " ".join(words[:max_words]), "word_count": len(words)}}


@agent.skill(min_trust_tier=TrustTier.INTERNAL)
def secret() -> str:
    return "the secret"
'''


class ServedAgent:
    """``coworker serve APP.py`` in a child process; driven through its control endpoint."""

    def __init__(self, app: Path, data_dir: Path, runs: Path) -> None:
        self.app, self.data_dir, self.runs = app, data_dir, runs
        self.process: subprocess.Popen[bytes] | None = None
        self.control: ControlClient | None = None

    def start(self) -> None:
        read_end, write_end = os.pipe()
        log = os.open(self.app.with_suffix(".log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "coworker", "serve", str(self.app), "--ready-fd", str(write_end)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(write_end,))
        finally:
            os.close(write_end)
            os.close(log)
        try:
            line = read_line(read_end, 60)
        finally:
            os.close(read_end)
        assert line.startswith("ready"), self.app.with_suffix(".log").read_text()[-3000:]
        self.control = ControlClient.find(self.data_dir)
        assert self.control is not None and self.control.pid == self.process.pid

    async def ask(self, cmd: str, **args: Any) -> Any:
        assert self.control is not None
        return await asyncio.to_thread(self.control.request, cmd, 40.0, **args)

    def end(self) -> None:
        """After the test: terminate the process if it still runs (a test that stopped or killed it has not)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(15)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    async def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        await self.ask("stop")
        assert await asyncio.to_thread(self.process.wait, 15) == 0

    def ran(self) -> int:
        return len(self.runs.read_text().splitlines()) if self.runs.exists() else 0


def served_app(source: str, name: str, home: Path, tmp_path: Path, **fields: str) -> Iterator[ServedAgent]:
    """``coworker serve`` of an app written from ``source`` (its ``{runs}`` and ``fields`` filled in), as agent
    ``name``; stopped after the test."""
    runs = tmp_path / "runs.txt"
    app = tmp_path / f"{name}_app.py"
    app.write_text(source.format(runs=str(runs), **fields))
    served = ServedAgent(app, home / "agents" / name, runs)
    served.start()
    yield served
    served.end()


@pytest.fixture
def alice(xmtp_node: DevnetServer, home: Path, tmp_path: Path) -> Iterator[ServedAgent]:
    yield from served_app(APP, "alice", home, tmp_path)


@pytest.fixture
async def bob(xmtp_node: DevnetServer, tmp_path: Path) -> AsyncIterator[AsyncAgent]:
    agent = AsyncAgent("bob", network=XmtpNetwork("local"), data_dir=tmp_path / "bob")
    await agent.start()
    yield agent
    await agent.stop()
    agent.close()


@pytest.fixture
async def raw(xmtp_node: DevnetServer, tmp_path: Path) -> AsyncIterator[RawClient]:
    client = RawClient(Identity.generate())
    client.transport = await XmtpNetwork("local").open(client.identity, tmp_path / "raw", client.deliver)
    yield client
    await client.transport.close()


def proc_text(pid: int, part: str) -> str:
    """A process's ``/proc/<pid>/cmdline`` or ``environ``, as text."""
    return Path(f"/proc/{pid}/{part}").read_bytes().decode(errors="replace")


def call_envelope(sender: str, to: str, skill: str, data: dict[str, Any]) -> bytes:
    env = request("call.request", {"skill": skill, "input": data}, sender=sender, recipient=to,
                  now_ms=int(time.time() * 1000))
    return encode(env)


async def test_first_contact_trust_and_calls_across_processes_and_a_restart_keeps_one_installation(
        alice: ServedAgent, bob: AsyncAgent, xmtp_node: DevnetServer) -> None:
    status = await alice.ask("status")
    wallet, installation = status["wallet"], status["xmtp"]["installationId"]
    assert status["network"] == "local" and status["xmtp"]["streaming"]
    assert status["xmtp"]["installations"] == 1  # of the 10 an inbox may have (the dashboard shows it)

    first = await bob.connect(wallet)
    assert first.name == "alice" and first.skills == []
    assert await bob.request_trust(wallet, TrustTier.KNOWN, "integration test") == "pending"
    assert [r["wallet"] for r in await alice.ask("trust_requests")] == [bob.wallet]
    assert await alice.ask("approve", wallet=bob.wallet) == "known"
    assert (await bob.connect(wallet)).skills == ["summarize"]
    assert await bob.call(wallet, "summarize", {"text": "a b c", "max_words": 2}) == {"summary": "a b",
                                                                                      "word_count": 3}
    with pytest.raises(coworker.SkillNotFound):
        await bob.call(wallet, "secret")
    assert alice.ran() == 1

    installations = xmtp_node.status().counts.installations
    await alice.stop()
    alice.start()  # the same directory: same wallet, same XMTP database
    again = await alice.ask("status")
    assert again["wallet"] == wallet
    assert again["xmtp"]["installationId"] == installation and again["xmtp"]["installations"] == 1
    assert xmtp_node.status().counts.installations == installations  # no new installation on the network
    assert (await bob.connect(wallet)).skills == ["summarize"]  # bob is still trusted
    assert (await bob.call(wallet, "summarize", {"text": "x y"}))["word_count"] == 2
    assert alice.ran() == 2
    await alice.stop()

    state = alice.data_dir / "xmtp"
    modes = {f.name: f.stat().st_mode & 0o777 for f in state.iterdir()}
    assert "local.db3" in modes and "db.key" in modes and "local.cursor" in modes
    assert all(mode & 0o077 == 0 for mode in modes.values()), modes  # database, key, cursor: the agent's alone
    assert (state.stat().st_mode & 0o777) == 0o700
    stopped = AsyncAgent("alice", passphrase="")
    try:
        assert stopped.trust_tier(bob.wallet) == TrustTier.KNOWN
        assert sorted(c.status for c in stopped.calls()) == ["completed", "completed", "rejected"]
    finally:
        stopped.close()


async def test_a_request_sent_while_the_callee_is_down_is_handled_once_after_it_restarts(
        alice: ServedAgent, raw: RawClient) -> None:
    wallet = (await alice.ask("status"))["wallet"]
    await alice.ask("set_trust", wallet=raw.wallet, tier=1)
    alice.kill()  # SIGKILL: no goodbye; its sidecar exits with it

    sent = call_envelope(raw.wallet, wallet, "summarize", {"text": "sent while down"})
    await raw.send(wallet, sent)  # returns once the node holds it
    assert alice.ran() == 0

    alice.start()  # syncs on start and finds the request
    reply = await raw.receive(timeout=30)
    assert reply["type"] == "call.result" and reply["corr"] == json.loads(sent)["id"]
    assert reply["body"]["output"]["word_count"] == 3
    assert alice.ran() == 1

    await alice.stop()
    alice.start()  # the request is read again on start, and dropped as already handled
    ping = request("ping", {}, sender=raw.wallet, recipient=wallet, now_ms=int(time.time() * 1000))
    await raw.send(wallet, encode(ping))
    pong = await raw.receive(timeout=30)
    assert (pong["type"], pong["corr"]) == ("pong", ping.id)
    assert raw.inbox.empty()
    assert alice.ran() == 1


async def test_a_call_to_a_callee_that_stays_down_times_out_clearly(alice: ServedAgent, bob: AsyncAgent) -> None:
    wallet = (await alice.ask("status"))["wallet"]
    await alice.ask("set_trust", wallet=bob.wallet, tier=1)
    alice.kill()
    with pytest.raises(coworker.CallTimeout, match=r"did not answer call\.request within 2 s"):
        await bob.call(wallet, "summarize", {"text": "anyone?"}, timeout=2)
    assert alice.ran() == 0


async def test_killed_sidecars_are_restarted_and_nothing_is_lost(alice: ServedAgent, bob: AsyncAgent) -> None:
    status = await alice.ask("status")
    wallet, sidecar, installation = status["wallet"], status["xmtp"]["pid"], status["xmtp"]["installationId"]
    await alice.ask("set_trust", wallet=bob.wallet, tier=1)

    os.kill(sidecar, signal.SIGKILL)  # the callee's sidecar dies; the agent process lives on
    assert (await bob.call(wallet, "summarize", {"text": "one two"}, timeout=30))["word_count"] == 2
    after = await alice.ask("status")
    assert after["xmtp"]["pid"] != sidecar and after["xmtp"]["installationId"] == installation

    transport = bob.transport
    assert transport is not None and transport.pid is not None
    key = bob._identity.private_key_hex()[2:] if bob._identity else ""
    for part in ("cmdline", "environ"):  # the key went over the sidecar's stdin, nowhere a process list shows
        assert key and key not in proc_text(transport.pid, part)
    os.kill(transport.pid, signal.SIGKILL)  # now the caller's own sidecar: the send waits for its restart
    assert (await bob.call(wallet, "summarize", {"text": "three four five"}, timeout=30))["word_count"] == 3
    assert alice.ran() == 2
    assert bob.transport is transport and transport.restarts == 1


async def test_a_raw_xmtp_client_claiming_the_owners_wallet_is_refused(alice: ServedAgent, tmp_path: Path) -> None:
    wallet = (await alice.ask("status"))["wallet"]
    owner = Identity.generate()
    await alice.ask("set_trust", wallet=owner.address, tier=3)  # the owner: privileged

    driver = await NodeDriver.start("raw")
    try:
        me = await driver.request("create", env="local", dbPath=str(tmp_path / "raw.db3"))
        await driver.request("stream")
        dm = await driver.request("newDm", address=wallet)
        forged = request("call.request", {"skill": "secret", "input": {}}, sender=owner.address, recipient=wallet,
                         now_ms=int(time.time() * 1000))
        await driver.request("send", conversationId=dm["conversationId"], text=encode(forged).decode())
        event = await driver.wait_event(lambda e: e.get("event") == "message" and not e["isSelf"], timeout=30)
    finally:
        await driver.close()
    reply = json.loads(event["text"])
    assert (reply["type"], reply["body"]["code"]) == ("call.error", "SENDER_MISMATCH")
    assert reply["to"].lower() == me["address"].lower()  # answered to who really sent it, never to the owner
    assert "secret" not in json.dumps(reply["body"])
    assert alice.ran() == 0
