"""A collaboration across three agents in separate processes over XMTP through a devnet, one of them killed
(SIGKILL) mid-plan and started again from its data directory.

A (this process) writes the report; B (``coworker serve``) researches; C (``coworker serve``) analyses B's
findings, and A's report is fed with C's analysis. C's analysis holds on a FIFO the test controls: it tells the
test it started by opening ``started`` for writing (which blocks until the test reads it) and then waits forever
on ``gate``; the test kills C there. Every skill notes each run, and each start, in one file (O_APPEND), so the
test counts them across processes.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from coworker import AsyncAgent, CallContext, TrustTier
from coworker.devnet import DevnetServer
from coworker.transports.xmtp.transport import XmtpNetwork

from .apps import APPEND_LINE
from .test_xmtp_processes import ServedAgent, served_app

pytestmark = pytest.mark.integration

BOUND = 90  # seconds the whole collaboration may take, a restart of C included

NOTE = '''
import os
from pathlib import Path

from coworker import Agent, CallContext

RUNS, STARTED, GATE = Path({runs!r}), {started!r}, {gate!r}
''' + APPEND_LINE

RESEARCH_APP = NOTE + '''
agent = Agent("b")


@agent.skill("research", description="Research a topic and return findings", output_schema={{"summary": "str"}})
def research(topic: str) -> dict:
    append(RUNS, "research")
    return {{"summary": f"findings on {{topic}}"}}
'''

ANALYSIS_APP = NOTE + '''
agent = Agent("c")


@agent.skill("analysis", description="Analyse findings", output_schema={{"insight": "str"}})
def analysis(summary: str, ctx: CallContext) -> dict:
    append(RUNS, f"analysis-start {{ctx.attempt}}")
    if ctx.attempt == 1:  # the first run tells the test it started, then holds until the process is killed
        with open(STARTED, "w") as started:
            started.write("started\\n")
        with open(GATE) as gate:
            gate.read()
    append(RUNS, "analysis")
    return {{"insight": f"analysed({{summary}})"}}
'''


def runs(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def served(source: str, name: str, home: Path, tmp_path: Path) -> Iterator[ServedAgent]:
    yield from served_app(source, name, home, tmp_path, started=str(tmp_path / "started"), gate=str(tmp_path / "gate"))


@pytest.fixture
def fifos(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    started, gate = tmp_path / "started", tmp_path / "gate"
    os.mkfifo(started)
    os.mkfifo(gate)
    yield started, gate
    for fifo in (started, gate):  # release a reader or writer still blocked on one (a test that failed early)
        fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
        os.close(fd)


@pytest.fixture
def b(xmtp_node: DevnetServer, home: Path, tmp_path: Path, fifos: Any) -> Iterator[ServedAgent]:
    yield from served(RESEARCH_APP, "b", home, tmp_path)


@pytest.fixture
def c(xmtp_node: DevnetServer, home: Path, tmp_path: Path, fifos: Any) -> Iterator[ServedAgent]:
    yield from served(ANALYSIS_APP, "c", home, tmp_path)


@pytest.fixture
async def a(xmtp_node: DevnetServer, tmp_path: Path) -> AsyncIterator[AsyncAgent]:
    agent = AsyncAgent("a", network=XmtpNetwork("local"), data_dir=tmp_path / "a")

    @agent.skill("report", description="Write a report from an insight")
    def report(topic: str, insight: str, ctx: CallContext) -> dict[str, str]:
        with (tmp_path / "runs.txt").open("a") as noted:
            noted.write("report\n")
        return {"report": f"REPORT on {topic}: {insight}"}

    await agent.start()
    yield agent
    await agent.stop()
    agent.close()


async def test_three_processes_collaborate_and_a_member_killed_mid_step_finishes_it_after_its_restart(
        a: AsyncAgent, b: ServedAgent, c: ServedAgent, fifos: tuple[Path, Path], tmp_path: Path) -> None:
    started, _ = fifos
    b_wallet, c_wallet = (await b.ask("status"))["wallet"], (await c.ask("status"))["wallet"]
    for member in (b, c):
        await member.ask("set_trust", wallet=a.wallet, tier=int(TrustTier.KNOWN))
    plan = [{"id": "dig", "skill": "research", "agent": b_wallet, "input": {"topic": "MLS"}},
            {"id": "think", "skill": "analysis", "agent": c_wallet, "input": {"summary": "{{dig.output.summary}}"}},
            {"id": "write", "skill": "report", "agent": "self",
             "input": {"topic": "MLS", "insight": "{{think.output.insight}}"}}]
    running = asyncio.create_task(a._collaborations.collaborate_many(
        [b_wallet, c_wallet], "Research MLS, analyse it, report", plan=plan, timeout=60))

    def wait_for_the_analysis() -> str:
        with started.open() as signal:  # blocks until C's analysis opens it
            return signal.read()

    assert await asyncio.wait_for(asyncio.to_thread(wait_for_the_analysis), BOUND) == "started\n"
    (stored,) = a.collaborations()
    assert (stored["state"], stored["progress"]) == ("running", "1/3")
    sent = stored["steps"][1]["task_id"]
    assert stored["steps"][1]["status"] == "running" and sent is not None
    c.kill()  # SIGKILL while its analysis runs
    assert not running.done()
    c.start()  # the same data directory: C finds the task it was running and runs it again

    result = await asyncio.wait_for(running, BOUND)
    assert (result["state"], result["progress"], result["error"]) == ("completed", "3/3", None)
    assert result["members"] == [b_wallet, c_wallet]
    dig, think, write = result["steps"]
    assert think["input"] == {"summary": "findings on MLS"} == {"summary": dig["output"]["summary"]}
    assert write["input"]["insight"] == think["output"]["insight"] == "analysed(findings on MLS)"
    assert write["output"] == {"report": "REPORT on MLS: analysed(findings on MLS)"}
    assert think["task_id"] == sent and think["attempts"] == 1  # A sent C one task, and waited for it
    noted = runs(tmp_path / "runs.txt")
    assert {s: noted.count(s) for s in ("research", "analysis", "report")} == {"research": 1, "analysis": 1,
                                                                              "report": 1}
    assert [n for n in noted if n.startswith("analysis-start")] == ["analysis-start 1", "analysis-start 2"]
    assert await a.resume_collaboration(result["collaboration_id"]) == result
    await c.stop()
    stopped = AsyncAgent("c", passphrase="")  # C's store: the one task it served, completed
    try:
        assert [(t["task_id"], t["state"]) for t in stopped.list_tasks(direction="in")] == [(sent, "completed")]
    finally:
        stopped.close()
