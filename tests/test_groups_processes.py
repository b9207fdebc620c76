"""Groups across processes over XMTP through a devnet (issue 17's end to end): A in this process, B, C and D each
served by ``coworker serve`` in its own process, and R, a bare XMTP client (``NodeDriver``: the Node SDK and
nothing of CoWorker), that reads whatever a member of a group can read.

B researches, C analyses, D keeps a secret skill; B and C trust A (KNOWN), D does not. Skills note each run in one
file (O_APPEND) so that the test counts them across processes; a run whose text asks for it holds on a FIFO the
test controls (it opens ``<skill>.started`` for writing, which blocks until the test reads it, then reads
``<skill>.gate`` until the test writes it), so that the test kills C at a known point.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from coworker import AsyncAgent, CallContext, TrustTier
from coworker.core import groups as posts
from coworker.core.wallets import checksum
from coworker.devnet import DevnetServer
from coworker.transports.xmtp.driver import NodeDriver
from coworker.transports.xmtp.transport import XmtpNetwork

from .apps import APPEND_LINE
from .test_xmtp_processes import ServedAgent

pytestmark = pytest.mark.integration

BOUND = 60.0  # seconds any one wait here may take at most (a restart of C included)

APP = '''
import os
from pathlib import Path

from coworker import Agent, CallContext

RUNS, FIFOS = Path({runs!r}), Path({fifos!r})
''' + APPEND_LINE + '''

def hold(skill: str) -> None:
    with open(FIFOS / f"{{skill}}.started", "w") as started:
        started.write("started\\n")
    with open(FIFOS / f"{{skill}}.gate") as gate:
        gate.read()


def research(topic: str) -> dict:
    """Research a topic and return findings"""
    if "wait-research" in topic:
        hold("research")
    append(RUNS, f"research {{topic}}")
    return {{"summary": f"findings on {{topic}}"}}


def analysis(summary: str, ctx: CallContext) -> dict:
    """Analyse findings"""
    append(RUNS, f"analysis-start {{ctx.attempt}} {{summary}}")
    if "wait-analysis" in summary and ctx.attempt == 1:
        hold("analysis")
    append(RUNS, f"analysis {{summary}}")
    return {{"insight": f"analysed({{summary}})"}}


def secret(text: str) -> str:
    """Only for those D trusts"""
    return text


agent = Agent({name!r})
SKILLS = {{"b": (research, {{"summary": "str"}}), "c": (analysis, {{"insight": "str"}}), "d": (secret, None)}}
skill, output = SKILLS[{name!r}]
agent.add_skill(skill, output_schema=output)
'''


def runs(tmp_path: Path) -> list[str]:
    path = tmp_path / "runs.txt"
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def fifos(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "fifos"
    folder.mkdir()
    names = [f"{skill}.{end}" for skill in ("research", "analysis") for end in ("started", "gate")]
    for name in names:
        os.mkfifo(folder / name)
    yield folder
    for name in names:  # release a reader or writer still blocked on one (a test that failed early)
        os.close(os.open(folder / name, os.O_RDWR | os.O_NONBLOCK))


@pytest.fixture
async def served(xmtp_node: DevnetServer, home: Path, tmp_path: Path, fifos: Path
                 ) -> AsyncIterator[Callable[..., Any]]:
    """``await served("b", "c")``: those agents, each in its own ``coworker serve`` process, started together."""
    started: list[ServedAgent] = []

    async def serve(*names: str) -> list[ServedAgent]:
        agents = []
        for name in names:
            app = tmp_path / f"{name}_app.py"
            app.write_text(APP.format(runs=str(tmp_path / "runs.txt"), fifos=str(fifos), name=name))
            agents.append(ServedAgent(app, home / "agents" / name, tmp_path / "runs.txt"))
        started.extend(agents)
        await asyncio.gather(*(asyncio.to_thread(agent.start) for agent in agents))
        return agents

    yield serve
    for agent in started:
        agent.end()


@pytest.fixture
async def a(xmtp_node: DevnetServer, tmp_path: Path) -> AsyncIterator[AsyncAgent]:
    agent = AsyncAgent("a", network=XmtpNetwork("local"), data_dir=tmp_path / "a")

    @agent.skill("report", description="Write a report from an insight")
    def report(topic: str, insight: str, ctx: CallContext) -> dict[str, str]:
        with (tmp_path / "runs.txt").open("a") as noted:
            noted.write(f"report {topic}\n")
        return {"report": f"REPORT on {topic}: {insight}"}

    await agent.start()
    yield agent
    await agent.stop()
    agent.close()


@pytest.fixture
async def raw(xmtp_node: DevnetServer) -> AsyncIterator[NodeDriver]:
    driver = await NodeDriver.start("raw")
    yield driver
    await driver.close()


async def eventually(check: Callable[[], Any], what: str) -> Any:
    """``await check()`` until it returns something true, bounded. Another process's state has no event to wait
    on here: its control port is asked again every 100 ms."""
    async with asyncio.timeout(BOUND):
        while not (result := await check()):  # noqa: ASYNC110 (no event crosses the process boundary)
            await asyncio.sleep(0.1)
    assert result, what
    return result


async def readable(raw: NodeDriver) -> dict[str, list[dict[str, Any]]]:
    """Everything the bare client can read: ``{conversation type: [message, ...]}`` over all its conversations."""
    found: dict[str, list[dict[str, Any]]] = {}
    for conversation in (await raw.request("conversations"))["conversations"]:
        messages = (await raw.request("messages", conversationId=conversation["id"]))["messages"]
        found.setdefault(conversation["type"], []).extend(messages)
    return found


async def test_four_agents_in_four_processes_discover_by_trust_and_no_member_reads_another_pairs_call(
        a: AsyncAgent, served: Callable[..., Any], raw: NodeDriver) -> None:
    (b, c, d), me = await asyncio.gather(served("b", "c", "d"), raw.request("create"))
    b_wallet, c_wallet, d_wallet = [(await x.ask("status"))["wallet"] for x in (b, c, d)]
    r_wallet = checksum(me["address"])
    for member, tier in ((b, TrustTier.KNOWN), (c, TrustTier.KNOWN), (d, TrustTier.UNTRUSTED)):
        await member.ask("set_trust", wallet=a.wallet, tier=int(tier))
        a.set_trust((await member.ask("status"))["wallet"], TrustTier.KNOWN)

    # R, a stranger to B and C, invites them to a group and posts a well-formed discover there
    spam = (await raw.request("newGroup", addresses=[b_wallet.lower(), c_wallet.lower()], name="spam"))
    spam_id = spam["conversationId"]
    await raw.request("send", conversationId=spam_id, text=posts.post(
        "discover", post_id=secrets.token_hex(16), sender=r_wallet, sender_name="stranger", group=spam_id,
        now_ms=int(time.time() * 1000), ttl_ms=120_000).decode())

    group = await a.create_group("research", [b_wallet, c_wallet, d_wallet], description="papers on MLS")
    peers = await group.discover(timeout=5)
    assert {w: p.skills for w, p in peers.items()} == {b_wallet: ["research"], c_wallet: ["analysis"], d_wallet: []}
    assert peers[d_wallet].name == "" and peers[b_wallet].name == "b"  # D does not even read the group

    def states(member: ServedAgent) -> Callable[[], Any]:
        async def check() -> dict[str, tuple[str, str]] | None:
            found = {g["id"]: (g["state"], g["inviter"]) for g in await member.ask("groups")}
            return found if len(found) == (1 if member is d else 2) else None
        return check

    for member in (b, c):  # the stranger's invitation is recorded ignored, ours joined
        assert await eventually(states(member), "B and C record both invitations") == {
            group.id: ("joined", a.wallet), spam_id: ("ignored", r_wallet)}
    assert await eventually(states(d), "D records ours") == {group.id: ("ignored", a.wallet)}

    # R joins A's group; A calls B with a secret input: R can read the group, and nothing of the call
    await group.add(r_wallet)
    word = f"SECRET-{secrets.token_hex(8)}"
    assert await group.call(b_wallet, "research", {"topic": word}) == {"summary": f"findings on {word}"}
    assert sorted(await group.discover(timeout=1.5)) == sorted([b_wallet, c_wallet, d_wallet, r_wallet])
    seen = await readable(raw)
    assert set(seen) == {"group"}  # R's two groups; no DM: B and C never answered the stranger's discover
    texts = [m.get("text") or "" for m in seen["group"]]
    # the discover posted after R joined (MLS: a member reads nothing from before it joined)
    assert sum("a asks the members of this group which skills they offer" in t for t in texts) == 1
    assert not [t for t in texts if word in t]  # nor in any message at all (membership changes included):
    assert word not in repr(seen)

    # A removes R: R reads nothing posted after
    before = [m["id"] for m in (await raw.request("messages", conversationId=group.id))["messages"]
              if m["kind"] == "application"]
    await group.remove(r_wallet)
    assert r_wallet not in await group.members()
    assert sorted(await group.discover(timeout=1.5)) == sorted([b_wallet, c_wallet, d_wallet])
    sent = [e for e in a.journal.entries() if e.kind == "group.discover"]  # type: ignore[union-attr]
    assert [e.verdict for e in sent] == ["sent", "sent", "sent"]
    after = [m["id"] for m in (await raw.request("messages", conversationId=group.id))["messages"]
             if m["kind"] == "application"]
    assert after == before and len(before) == 1  # the discover after R's removal never reached it


async def test_a_group_collaboration_across_processes_completes_when_c_is_killed_mid_step_or_before_its_step(
        a: AsyncAgent, served: Callable[..., Any], fifos: Path, tmp_path: Path) -> None:
    b, c = await served("b", "c")
    b_wallet, c_wallet = (await b.ask("status"))["wallet"], (await c.ask("status"))["wallet"]
    for member in (b, c):
        await member.ask("set_trust", wallet=a.wallet, tier=int(TrustTier.KNOWN))
    group = await a.create_group("work", [b_wallet, c_wallet])

    def plan(topic: str) -> list[dict[str, Any]]:
        return [{"id": "dig", "skill": "research", "agent": b_wallet, "input": {"topic": topic}},
                {"id": "think", "skill": "analysis", "agent": c_wallet,
                 "input": {"summary": "{{dig.output.summary}}"}},
                {"id": "write", "skill": "report", "agent": "self",
                 "input": {"topic": topic, "insight": "{{think.output.insight}}"}}]

    async def started(skill: str) -> None:
        def read() -> str:
            with (fifos / f"{skill}.started").open() as signal:  # blocks until the skill opens it
                return signal.read()
        assert await asyncio.wait_for(asyncio.to_thread(read), BOUND) == "started\n"

    def check(result: dict[str, Any], topic: str) -> None:
        assert (result["state"], result["progress"], result["error"]) == ("completed", "3/3", None)
        assert sorted(result["members"]) == sorted([b_wallet, c_wallet])
        dig, think, write = result["steps"]
        assert think["input"] == {"summary": f"findings on {topic}"} == {"summary": dig["output"]["summary"]}
        assert write["input"]["insight"] == think["output"]["insight"] == f"analysed(findings on {topic})"
        assert write["output"] == {"report": f"REPORT on {topic}: analysed(findings on {topic})"}
        assert think["task_id"] is not None and think["attempts"] == 1  # A sent C one task
        noted = runs(tmp_path)
        assert [noted.count(f"{s} {x}") for s, x in (("research", topic), ("analysis", f"findings on {topic}"),
                                                      ("report", topic))] == [1, 1, 1]  # each step ran once

    # 1. C is killed while its analysis runs, and started again: it runs the task it had (attempt 2)
    topic = "MLS wait-analysis"
    running = asyncio.create_task(group.collaborate("Research MLS, analyse it, report", plan=plan(topic),
                                                    timeout=60))
    await started("analysis")
    c.kill()
    await asyncio.to_thread(c.start)
    result = await asyncio.wait_for(running, BOUND)
    check(result, topic)
    assert [n for n in runs(tmp_path) if n.startswith("analysis-start")] == [
        f"analysis-start 1 findings on {topic}", f"analysis-start 2 findings on {topic}"]

    # 2. C is killed before its step starts (B's research holds); the task to C is sent while C is down
    topic = "TLS wait-research"
    running = asyncio.create_task(group.collaborate("Research TLS, analyse it, report", plan=plan(topic),
                                                    timeout=60))
    await started("research")
    c.kill()
    mark = max((e.seq for e in a.journal.entries()), default=0)  # type: ignore[union-attr]
    sent_to_c = asyncio.Event()

    def note() -> None:
        if any(e.kind == "call.request" and e.direction == "out" and e.peer.lower() == c_wallet.lower()
               and e.verdict == "sent" for e in a.journal.entries(after=mark)):  # type: ignore[union-attr]
            sent_to_c.set()

    a.journal.add_listener(note)  # type: ignore[union-attr]
    try:
        await asyncio.to_thread((fifos / "research.gate").write_text, "go\n")  # B's research ends
        await asyncio.wait_for(sent_to_c.wait(), BOUND)
    finally:
        a.journal.remove_listener(note)  # type: ignore[union-attr]
    assert not running.done()
    await asyncio.to_thread(c.start)  # C finds the task on the network when it syncs at start
    result = await asyncio.wait_for(running, BOUND)
    check(result, topic)
    assert [n for n in runs(tmp_path) if n == f"analysis-start 1 findings on {topic}"] == [
        f"analysis-start 1 findings on {topic}"]
    assert len(a.collaborations()) == 2
