"""Durable tasks over XMTP through a devnet: a callee or a caller killed mid-task, and a network that loses,
repeats and reorders messages.

The callee runs as ``coworker serve APP.py`` in its own process. Its skill ``slow`` notes each start and end in a
file (the count of record) and, as they happen, in a FIFO the test reads; between the two it waits on a second
FIFO until the test releases it, so the test decides exactly when a skill ends, without sleeping. Callers run in
the test process, or as a script in their own process when they are the ones killed.

A killed caller script has talked to the callee before (a ping) when it makes its request. XMTP creates a DM on
the first send to a peer; a caller killed during that creation (its sidecar exits as soon as its stdin closes)
can be left with a local DM that lacks the peer, and every later message to that peer goes nowhere. That is a
fault below the task runtime, not what these tests are about.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from coworker import AsyncAgent, CallContext, RetryPolicy, TrustTier
from coworker.devnet import DevnetServer
from coworker.transports.xmtp.transport import XmtpNetwork

from .faults import FaultyNetwork
from .test_xmtp_processes import ServedAgent

pytestmark = pytest.mark.integration

FAST = RetryPolicy(first=0.5, maximum=2.0)  # a caller re-sends often enough to notice a restart within seconds

APP = '''
import os
import select
from pathlib import Path

from coworker import Agent, CallContext

RUNS = Path({runs!r})
EVENTS = {events!r}
RELEASE = {release!r}
RELEASE_WITHIN = 20.0  # seconds the skill waits for the test before it ends anyway (and says so)
agent = Agent("alice")


def note(line: str) -> None:
    with RUNS.open("a") as runs:
        runs.write(line + "\\n")
    fd = os.open(EVENTS, os.O_WRONLY | os.O_NONBLOCK)  # the test holds the FIFO open for reading
    try:
        os.write(fd, (line + "\\n").encode())
    finally:
        os.close(fd)


@agent.skill("slow", description="Notes its start, waits for the test to release it, notes its end")
def slow(text: str, ctx: CallContext) -> dict:
    release = os.open(RELEASE, os.O_RDONLY | os.O_NONBLOCK)  # open before 'started': the test may release at once
    try:
        note(f"started {{ctx.attempt}}")
        released, _, _ = select.select([release], [], [], RELEASE_WITHIN)  # readable once the test writes
    finally:
        os.close(release)
    note("done" if released else "done without release")
    return {{"text": text.upper(), "attempt": ctx.attempt}}
'''

CALLER = '''
import json
import logging
import sys

from coworker import Agent, RetryPolicy

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s: %(message)s")  # to caller.log
mode, data_dir, arg = sys.argv[1:4]
agent = Agent("bob", network="local", data_dir=data_dir, retry=RetryPolicy(first=0.5, maximum=2.0))
if mode == "request":
    # First contact before the task: XMTP creates the DM with the first send, and a process killed while the
    # SDK creates it can keep a DM without the peer in it for good (see the module docstring).
    agent.ping(arg)
    task_id = agent.request(arg, "slow", {"text": "survive me"})
    print(task_id, flush=True)
    print(json.dumps(agent.wait(task_id, timeout=60)), flush=True)  # not reached: the test kills us first
else:
    print(json.dumps(agent.get_result(arg)), flush=True)  # as stored, before the agent starts
    output = agent.wait(arg, timeout=30)
    print(json.dumps({"output": output, "task": agent.get_result(arg)}), flush=True)
agent.close()
'''


class Lines:
    """Lines from a pipe or FIFO, each read with a bound (select wakes the reader; nothing polls)."""

    def __init__(self, fd: int, close: Callable[[], None]) -> None:
        self._fd, self.close = fd, close
        self._buffer = b""

    @classmethod
    def fifo(cls, path: Path) -> Lines:
        os.mkfifo(path)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        keep = os.open(path, os.O_WRONLY)  # a writer of our own: the FIFO never reads as ended between two writers

        def close() -> None:
            os.close(fd)
            os.close(keep)

        return cls(fd, close)

    @classmethod
    def stdout(cls, process: subprocess.Popen[bytes]) -> Lines:
        assert process.stdout is not None
        return cls(process.stdout.fileno(), process.stdout.close)

    def next(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            readable, _, _ = select.select([self._fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(self._fd, 4096) if readable else b""
            if not chunk:
                raise AssertionError(f"no line within {timeout:g} s, or the writer ended (got {self._buffer!r})")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    async def line(self, timeout: float = 30) -> str:
        return await asyncio.to_thread(self.next, timeout)


@dataclass
class Callee:
    """Alice, served in her own process, with the skill's lines and its release."""

    served: ServedAgent
    events: Lines
    release_fifo: Path

    def release(self) -> None:
        """Let the waiting skill end (it holds the FIFO open for reading, or this raises ENXIO)."""
        fd = os.open(self.release_fifo, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, b"go")
        finally:
            os.close(fd)

    def runs(self) -> list[str]:
        return self.served.runs.read_text().splitlines() if self.served.runs.exists() else []

    def served_task(self, task_id: str) -> dict[str, Any]:
        """The task as the (stopped) callee stored it."""
        stopped = AsyncAgent("alice", passphrase="")
        try:
            return stopped.get_result(task_id)
        finally:
            stopped.close()


@pytest.fixture
def alice(xmtp_node: DevnetServer, home: Path, tmp_path: Path) -> Iterator[Callee]:
    runs, release = tmp_path / "runs.txt", tmp_path / "release"
    events = Lines.fifo(tmp_path / "events")
    os.mkfifo(release)
    app = tmp_path / "alice_app.py"
    app.write_text(APP.format(runs=str(runs), events=str(tmp_path / "events"), release=str(release)))
    served = ServedAgent(app, home / "agents" / "alice", runs)
    served.start()
    yield Callee(served, events, release)
    served.end()
    events.close()


async def test_a_callee_killed_mid_task_and_restarted_runs_it_again_and_the_caller_gets_one_result(
        alice: Callee, tmp_path: Path) -> None:
    wallet = (await alice.served.ask("status"))["wallet"]
    bob = AsyncAgent("bob", network=XmtpNetwork("local"), data_dir=tmp_path / "bob", retry=FAST)
    await alice.served.ask("set_trust", wallet=bob.wallet, tier=1)
    async with bob:
        task_id = await bob.request(wallet, "slow", {"text": "crash me"})
        assert await alice.events.line() == "started 1"
        alice.served.kill()  # SIGKILL mid-task: the task stays stored as working
        await asyncio.to_thread(alice.served.start)
        assert await alice.events.line() == "started 2"  # run again on start, without a new request
        alice.release()
        assert await alice.events.line() == "done"
        assert await bob.wait(task_id, timeout=20) == {"text": "CRASH ME", "attempt": 2}
        mine = bob.get_result(task_id)
    await alice.served.stop()
    bob.close()

    assert alice.runs() == ["started 1", "started 2", "done"]
    assert (mine["state"], mine["receipt_valid"]) == ("completed", True)
    served = alice.served_task(task_id)
    assert (served["direction"], served["state"], served["attempts"]) == ("in", "completed", 2)
    assert served["result"] == {"text": "CRASH ME", "attempt": 2}


def start_caller(script: Path, log: Path, *args: str) -> tuple[subprocess.Popen[bytes], Lines]:
    """The caller script in its own process; its stdout, line by line."""
    with log.open("ab") as err:
        process = subprocess.Popen([sys.executable, str(script), *args], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=err)
    return process, Lines.stdout(process)


@pytest.mark.parametrize("kill_when", ["right_after_request", "while_the_skill_runs"])
async def test_a_caller_killed_after_request_and_restarted_gets_the_result_of_a_skill_that_ran_once(
        alice: Callee, tmp_path: Path, kill_when: str) -> None:
    wallet = (await alice.served.ask("status"))["wallet"]
    bob_dir, script, log = tmp_path / "bob", tmp_path / "caller.py", tmp_path / "caller.log"
    script.write_text(CALLER)
    made = AsyncAgent("bob", data_dir=bob_dir)  # the caller's wallet, so that alice trusts it before it calls
    bob_wallet = made.wallet
    made.close()
    await alice.served.ask("set_trust", wallet=bob_wallet, tier=1)

    first, out = start_caller(script, log, "request", str(bob_dir), wallet)
    try:
        task_id = await out.line(60)
        assert len(task_id) == 32, log.read_text()[-3000:]
        if kill_when == "while_the_skill_runs":
            assert await alice.events.line() == "started 1"
        first.kill()  # SIGKILL before any result can arrive: the skill waits for the release
        assert first.wait(10) == -9
    finally:
        out.close()
        if first.poll() is None:
            first.kill()
            first.wait(10)

    if kill_when == "while_the_skill_runs":
        alice.release()
        assert await alice.events.line() == "done"  # the result went out while the caller was dead

    second, out = start_caller(script, log, "wait", str(bob_dir), task_id)
    try:
        stored = json.loads(await out.line(60))
        assert (stored["task_id"], stored["result"]) == (task_id, None)
        assert stored["state"] in ("submitted", "working")
        if kill_when == "right_after_request":
            assert await alice.events.line() == "started 1"
            alice.release()
        final = json.loads(await out.line(40))
        assert await asyncio.to_thread(second.wait, 15) == 0, log.read_text()[-3000:]
    finally:
        out.close()
        if second.poll() is None:
            second.kill()
            second.wait(10)
    await alice.served.stop()

    assert final["output"] == {"text": "SURVIVE ME", "attempt": 1}
    task = final["task"]
    assert (task["direction"], task["state"], task["result"]) == ("out", "completed", final["output"])
    assert task["receipt_valid"] is True
    assert alice.runs() == ["started 1", "done"]
    served = alice.served_task(task_id)
    assert (served["state"], served["attempts"]) == ("completed", 1)


SHORT_GAPS = RetryPolicy(first=0.2, maximum=1.0)  # shorter than one XMTP send under load (often 1-2 s)


async def burst(network: FaultyNetwork, tmp_path: Path, calls: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """``calls`` calls at once from bob to alice over ``network``: their outputs and the network's counts when the
    last one ended. Checks that each skill ran once and that alice stored each task as completed on its first
    attempt."""
    alice = AsyncAgent("alice", network=network, data_dir=tmp_path / "alice", retry=SHORT_GAPS)
    bob = AsyncAgent("bob", network=network, data_dir=tmp_path / "bob", retry=SHORT_GAPS)
    runs: collections.Counter[str] = collections.Counter()

    @alice.skill()
    async def double(n: int, ctx: CallContext) -> dict[str, int]:
        runs[ctx.call_id] += 1
        return {"n": 2 * n}

    alice.set_trust(bob.wallet, TrustTier.KNOWN)
    try:
        async with alice, bob, asyncio.timeout(60):
            outputs = await asyncio.gather(*(bob.call(alice.wallet, "double", {"n": i}, timeout=20)
                                             for i in range(calls)))
            stats = dict(network.stats)
        served = alice.list_tasks(limit=calls + 1, direction="in")
    finally:
        alice.close()
        bob.close()
    assert len(runs) == calls and set(runs.values()) == {1}
    assert len(served) == calls and {(t["state"], t["attempts"]) for t in served} == {("completed", 1)}
    return outputs, stats


async def test_calls_over_xmtp_that_lose_repeat_and_reorder_messages_all_complete_and_each_skill_runs_once(
        xmtp_node: DevnetServer, tmp_path: Path) -> None:
    # Batching off: the faults hit each protocol message, as they did before batching (batched, 60 calls are a
    # dozen frames, too few for the faults the test checks to have happened every time).
    faulty = FaultyNetwork(XmtpNetwork("local", batch=False), drop=0.2, duplicate=0.1, reorder=0.2,
                           drop_incoming=0.1, seed=5)
    outputs, stats = await burst(faulty, tmp_path, 60)
    assert outputs == [{"n": 2 * i} for i in range(60)]
    assert stats["dropped"] > 0 and stats["duplicated"] > 0 and stats["overtaken"] > 0
    assert stats["dropped_incoming"] > 0


async def test_a_burst_of_calls_whose_retry_gap_is_shorter_than_an_xmtp_send_does_not_snowball(
        xmtp_node: DevnetServer, tmp_path: Path) -> None:
    counted = FaultyNetwork(XmtpNetwork("local"))  # no faults: it counts the messages
    outputs, stats = await burst(counted, tmp_path, 100)
    assert outputs == [{"n": 2 * i} for i in range(100)]
    # A copy goes again only once the previous send has returned, no sooner than that send took, and a call ends
    # with its answer, not once a copy under way has gone. A driver that stopped waiting for a send after each
    # retry gap left it queued in the sidecar all the same: sends piled up, and calls timed out. One that re-sent
    # 0.2 s after sends of 10 s queued a copy nobody needed (and an answer to it) for most calls, then held the
    # caller until that copy had gone, or cut it short at the call's timeout.
    assert stats["abandoned"] == 0
