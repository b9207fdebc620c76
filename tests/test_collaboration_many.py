"""Collaborations with several members (a group's): each member is proposed its part, steps chain across
members, one rejection rejects the whole before anything runs, the keyword planner plans across members, and an
initiator restarted mid-plan resumes without running or sending a step twice. Three agents on the memory network."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import coworker
from coworker import AccessDenied, AsyncAgent, ConfigurationError, KeywordPlanner, MemoryNetwork, TrustTier
from coworker.core.plans import check_proposal, parse_plan_many, proposal_body
from coworker.core.protocol import PlanProposeBody
from coworker.core.skills import build_skill
from coworker.core.tasks import RetryPolicy

from .conftest import Counter

FAST = RetryPolicy(first=0.02, maximum=0.2)
GOAL = "Research MLS, then analysis of the findings, then a report"
BOUND = 10  # seconds any single wait in these tests may take


@dataclass
class Hold:
    """Holds C's analysis until released."""

    on: bool = False
    started: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)


def add_report(agent: AsyncAgent, counter: Counter) -> None:
    @agent.skill("report", description="Write a report from an insight")
    def report(topic: str, insight: str) -> dict[str, str]:
        counter.hit("report")
        return {"report": f"REPORT on {topic}: {insight}"}


def add_research(agent: AsyncAgent, counter: Counter) -> None:
    @agent.skill("research", description="Research a topic and return findings", output_schema={"summary": "str"})
    def research(topic: str) -> dict[str, str]:
        counter.hit("research")
        return {"summary": f"findings on {topic}"}


def add_analysis(agent: AsyncAgent, counter: Counter, hold: Hold) -> None:
    @agent.skill("analysis", description="Analyse findings", output_schema={"insight": "str"})
    async def analysis(summary: str) -> dict[str, str]:
        counter.hit("analysis")
        if hold.on:
            hold.started.set()
            await hold.release.wait()
        return {"insight": f"analysed({summary})"}

    @agent.skill("audit", description="Audit findings", min_trust_tier=TrustTier.INTERNAL)
    def audit(summary: str) -> str:
        counter.hit("audit")
        return "fine"


PLAN = [{"id": "dig", "skill": "research", "input": {"topic": "MLS"}},
        {"id": "think", "skill": "analysis", "input": {"summary": "{{dig.output.summary}}"}},
        {"id": "write", "skill": "report", "agent": "self", "input": {"topic": "MLS",
                                                                      "insight": "{{think.output.insight}}"}}]


@pytest.fixture
def hold() -> Hold:
    return Hold()


@pytest.fixture
def net(monkeypatch: pytest.MonkeyPatch) -> MemoryNetwork:
    monkeypatch.delenv("COWORKER_LLM_BASE_URL", raising=False)
    return MemoryNetwork()


def initiator(net: MemoryNetwork, tmp_path: Path, counter: Counter) -> AsyncAgent:
    """A, who writes reports (a new object on the same directory is A after a restart)."""
    a = AsyncAgent("a", network=net, data_dir=tmp_path / "a", retry=FAST)
    add_report(a, counter)
    return a


@pytest.fixture
async def trio(net: MemoryNetwork, tmp_path: Path, counter: Counter,
               hold: Hold) -> AsyncIterator[tuple[AsyncAgent, AsyncAgent, AsyncAgent]]:
    """A reports; B researches; C analyses. B and C hold A at KNOWN. All started."""
    a = initiator(net, tmp_path, counter)
    b = AsyncAgent("b", network=net, data_dir=tmp_path / "b", retry=FAST)
    c = AsyncAgent("c", network=net, data_dir=tmp_path / "c", retry=FAST)
    add_research(b, counter)
    add_analysis(c, counter, hold)
    for member in (b, c):
        member.set_trust(a.wallet, TrustTier.KNOWN)
    for agent in (a, b, c):
        await agent.start()
    yield a, b, c
    hold.release.set()
    for agent in (a, b, c):
        await agent.stop()
        agent.close()


async def collaborate(a: AsyncAgent, wallets: list[str], goal: str = GOAL, **kwargs: Any) -> dict[str, Any]:
    return await asyncio.wait_for(a._collaborations.collaborate_many(wallets, goal, **kwargs), BOUND)


async def test_three_agents_run_a_plan_with_each_step_fed_by_the_one_before_on_another_member(
        trio: tuple[AsyncAgent, AsyncAgent, AsyncAgent], counter: Counter) -> None:
    a, b, c = trio
    result = await collaborate(a, [b.wallet, c.wallet.lower()], plan=PLAN)
    assert (result["state"], result["progress"], result["error"]) == ("completed", "3/3", None)
    assert result["members"] == [b.wallet, c.wallet] and result["peer"] == b.wallet
    dig, think, write = result["steps"]
    assert [(s["agent"], s["side"]) for s in result["steps"]] == [(b.wallet, "peer"), (c.wallet, "peer"),
                                                                   (a.wallet, "self")]
    assert think["input"] == {"summary": "findings on MLS"} and think["inputs_from"] == ["dig"]
    assert write["input"]["insight"] == "analysed(findings on MLS)" and write["inputs_from"] == ["think"]
    assert write["output"] == {"report": "REPORT on MLS: analysed(findings on MLS)"}
    assert counter.runs == {"research": 1, "analysis": 1, "report": 1}
    # each member served its own step only, as a task with A: B never saw C's input, nor C B's
    assert [(t["task_id"], t["skill"]) for t in b.list_tasks(direction="in")] == [(dig["task_id"], "research")]
    assert [(t["task_id"], t["skill"]) for t in c.list_tasks(direction="in")] == [(think["task_id"], "analysis")]
    assert a.collaborations() == [result]
    assert await a.resume_collaboration(result["collaboration_id"]) == result


async def test_a_member_refusing_its_part_rejects_the_collaboration_before_anything_runs(
        trio: tuple[AsyncAgent, AsyncAgent, AsyncAgent], counter: Counter) -> None:
    a, b, c = trio
    c.set_trust(a.wallet, TrustTier.INTERNAL)  # A sees C's audit when it discovers C

    class DemotingPlanner:
        """Plans an audit on C, while C lowers A's tier between A's discovery and A's proposal."""

        def plan(self, goal: str, own: Any, peers: Any) -> Any:
            assert set(peers) == {b.wallet, c.wallet} and "audit" in [x["name"] for x in peers[c.wallet]]
            c.set_trust(a.wallet, TrustTier.KNOWN)
            return [{"id": "dig", "skill": "research", "agent": b.wallet, "input": {"topic": goal}},
                    {"skill": "audit", "agent": c.wallet, "input": {"summary": "{{dig.output.summary}}"}}]

    with pytest.raises(coworker.PlanRejected) as rejected:
        await collaborate(a, [b.wallet, c.wallet], planner=DemotingPlanner())
    assert f"{c.wallet} rejected the plan: step 'audit': no skill named 'audit' visible to you" in str(rejected.value)
    (stored,) = a.collaborations()
    assert (stored["state"], stored["rejected_by"]) == ("rejected", c.wallet)
    assert "no skill named 'audit'" in stored["reason"]
    assert counter.runs == {} and b.list_tasks() == [] and c.list_tasks() == [] and a.list_tasks() == []
    with pytest.raises(coworker.PlanRejected, match=c.wallet):
        await a.resume_collaboration(stored["collaboration_id"])


async def test_a_member_that_stopped_trusting_us_rejects_it_too_and_the_record_says_who(
        trio: tuple[AsyncAgent, AsyncAgent, AsyncAgent], counter: Counter) -> None:
    a, b, c = trio

    class Untrusting:
        def plan(self, goal: str, own: Any, peers: Any) -> Any:
            b.set_trust(a.wallet, TrustTier.UNTRUSTED)
            return PLAN

    with pytest.raises(AccessDenied):
        await collaborate(a, [b.wallet, c.wallet], planner=Untrusting())
    (stored,) = a.collaborations()
    assert (stored["state"], stored["rejected_by"]) == ("rejected", b.wallet)
    assert stored["reason"].startswith("ACCESS_DENIED") and stored["members"] == [b.wallet, c.wallet]
    assert counter.runs == {} and c.list_tasks() == [] and b.list_tasks() == []


async def test_the_keyword_planner_picks_each_skill_on_the_member_that_shows_it(
        trio: tuple[AsyncAgent, AsyncAgent, AsyncAgent], counter: Counter) -> None:
    a, b, c = trio
    result = await collaborate(a, [c.wallet, b.wallet])
    assert result["planner"] == "KeywordPlanner()" and result["state"] == "completed"
    assert [(s["skill"], s["agent"]) for s in result["steps"]] == [("research", b.wallet), ("analysis", c.wallet),
                                                                   ("report", a.wallet)]
    assert result["members"] == [b.wallet, c.wallet]  # in plan order
    assert result["steps"][1]["template"] == {"summary": "{{research.output.summary}}"}
    assert result["steps"][2]["template"]["insight"] == "{{analysis.output.insight}}"
    assert result["steps"][2]["output"]["report"] == f"REPORT on {GOAL}: analysed(findings on {GOAL})"
    assert counter.runs == {"research": 1, "analysis": 1, "report": 1}


async def test_a_plan_that_cannot_run_across_members_is_refused_before_anything_is_sent(
        trio: tuple[AsyncAgent, AsyncAgent, AsyncAgent], counter: Counter) -> None:
    a, b, c = trio
    ambiguous = [{"skill": "research", "agent": "peer", "input": {"topic": "x"}}]
    with pytest.raises(ConfigurationError, match="'peer' names one only when there is one"):
        await collaborate(a, [b.wallet, c.wallet], plan=ambiguous)
    hidden = [{"skill": "audit", "agent": c.wallet, "input": {"summary": "x"}}]
    with pytest.raises(ConfigurationError, match=f"the peer {c.wallet} shows us no skill named 'audit'"):
        await collaborate(a, [b.wallet, c.wallet], plan=hidden)
    with pytest.raises(ConfigurationError, match="cannot collaborate with itself"):
        await collaborate(a, [b.wallet, a.wallet])
    assert a.collaborations() == [] and b.list_tasks() == [] and c.list_tasks() == [] and counter.runs == {}


async def test_one_member_is_a_two_party_collaboration(
        trio: tuple[AsyncAgent, AsyncAgent, AsyncAgent], counter: Counter) -> None:
    a, b, _ = trio
    plan = [{"id": "dig", "skill": "research", "agent": "peer", "input": {"topic": "MLS"}},
            {"skill": "report", "input": {"topic": "MLS", "insight": "{{dig.output.summary}}"}}]
    result = await collaborate(a, [b.wallet], plan=plan)
    assert (result["state"], result["peer"], result["members"]) == ("completed", b.wallet, [b.wallet])


async def test_an_initiator_restarted_mid_plan_resumes_and_no_step_runs_or_is_sent_twice(
        net: MemoryNetwork, tmp_path: Path, counter: Counter, trio: tuple[AsyncAgent, AsyncAgent, AsyncAgent],
        hold: Hold) -> None:
    a, b, c = trio
    hold.on = True
    running = asyncio.create_task(a._collaborations.collaborate_many([b.wallet, c.wallet], GOAL, plan=PLAN))
    await asyncio.wait_for(hold.started.wait(), BOUND)
    await a.stop()  # A goes away while C analyses
    interrupted = await asyncio.wait_for(running, BOUND)
    assert (interrupted["state"], interrupted["progress"]) == ("running", "1/3")
    sent = interrupted["steps"][1]["task_id"]
    assert sent is not None and interrupted["steps"][1]["status"] == "running"
    a.close()
    hold.release.set()  # C finishes while A is away: the answer waits for A

    a = initiator(net, tmp_path, counter)  # the same agent, restarted
    try:
        assert a.collaborations()[0]["members"] == [b.wallet, c.wallet]
        result = await asyncio.wait_for(a.resume_collaboration(interrupted["collaboration_id"]), BOUND)
        assert (result["state"], result["progress"]) == ("completed", "3/3")
        assert result["steps"][1]["task_id"] == sent  # waited for the task it had sent, sent no other
        assert result["steps"][2]["output"]["report"] == "REPORT on MLS: analysed(findings on MLS)"
        assert counter.runs == {"research": 1, "analysis": 1, "report": 1}
        assert len(b.list_tasks(direction="in")) == 1 and len(c.list_tasks(direction="in")) == 1
    finally:
        await a.stop()
        a.close()


async def test_a_member_that_did_not_answer_its_part_is_asked_again_on_resume_and_only_it(
        trio: tuple[AsyncAgent, AsyncAgent, AsyncAgent], counter: Counter, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, c = trio
    asked: list[str] = []
    lost = [True]  # the first proposal to C goes unanswered
    original = a._runtime.request

    async def request(wallet: str, kind: str, *args: Any) -> Any:
        asked.append(f"{kind} {wallet}")
        if kind == "plan.propose" and wallet == c.wallet and lost:
            lost.pop()
            raise coworker.CallTimeout("no answer")
        return await original(wallet, kind, *args)

    monkeypatch.setattr(a._runtime, "request", request)
    with pytest.raises(coworker.CallTimeout, match=f"{c.wallet} did not answer the plan of collaboration"):
        await collaborate(a, [b.wallet, c.wallet], plan=PLAN)
    (stored,) = a.collaborations()
    assert stored["state"] == "proposed" and counter.runs == {} and b.list_tasks() == []
    record = a.store.collaboration(stored["collaboration_id"])
    assert record is not None and record.record["accepted"] == [b.wallet]
    asked.clear()
    result = await asyncio.wait_for(a.resume_collaboration(stored["collaboration_id"]), BOUND)
    assert (result["state"], result["progress"]) == ("completed", "3/3")
    assert [x for x in asked if x.startswith("plan.propose")] == [f"plan.propose {c.wallet}"]  # B accepted already
    assert counter.runs == {"research": 1, "analysis": 1, "report": 1}


async def test_a_groups_collaboration_plans_across_its_members_and_leaves_out_one_that_shows_nothing(
        trio: tuple[AsyncAgent, AsyncAgent, AsyncAgent], net: MemoryNetwork, tmp_path: Path, counter: Counter) -> None:
    a, b, c = trio
    d = AsyncAgent("d", network=net, data_dir=tmp_path / "d", retry=FAST)  # does not trust A: shows it nothing
    add_research(d, counter)
    await d.start()
    try:
        group = await a.create_group("mls", [d.wallet, b.wallet, c.wallet])
        result = await asyncio.wait_for(group.collaborate(GOAL), BOUND)
        assert (result["state"], result["progress"]) == ("completed", "3/3")
        assert [(s["skill"], s["agent"]) for s in result["steps"]] == [("research", b.wallet),
                                                                       ("analysis", c.wallet), ("report", a.wallet)]
        assert result["members"] == [b.wallet, c.wallet] and d.list_tasks() == []
        assert a.collaborations() == [result]
    finally:
        await d.stop()
        d.close()


# ---- the pure parts --------------------------------------------------------------------------------------

B, C, A = "0x" + "b" * 40, "0x" + "c" * 40, "0x" + "a" * 40


def cards(*fns: Any) -> dict[str, dict[str, Any]]:
    built = [build_skill(fn, name=None, description="", input_schema=None, output_schema=None,
                         min_trust_tier=TrustTier.KNOWN, version="1.0.0") for fn in fns]
    return {s.name: s.card() for s in built}


def research(topic: str) -> dict[str, Any]: ...
def analysis(summary: str) -> dict[str, Any]: ...
def report(topic: str, insight: str) -> str: ...


def test_each_member_is_proposed_its_own_steps_and_the_ids_of_the_others_they_use() -> None:
    from coworker.core.plans import new_record

    plan = parse_plan_many(PLAN, cards(report), {B: cards(research), C: cards(analysis)}, own_wallet=A)
    record = new_record(plan, own_wallet=A, timeout=5, planner="given")
    to_b, to_c = (proposal_body("c" * 32, GOAL, record, m) for m in (B, C))
    assert [s["id"] for s in to_b["steps"]] == ["dig"] and "other_steps" not in to_b
    assert [s["id"] for s in to_c["steps"]] == ["think"] and to_c["other_steps"] == ["dig"]
    assert "write" not in str(to_b) + str(to_c)  # nobody sees the initiator's own step or another's input
    skills_c = {s.name: s for s in [build_skill(analysis, name=None, description="", input_schema=None,
                                                output_schema=None, min_trust_tier=TrustTier.KNOWN,
                                                version="1.0.0")]}
    part = PlanProposeBody.model_validate(to_c)
    assert check_proposal(part, C, A, TrustTier.KNOWN, skills_c) is None
    unexplained = PlanProposeBody.model_validate({**to_c, "other_steps": []})
    assert check_proposal(unexplained, C, A, TrustTier.KNOWN, skills_c) == (
        "step 'think' uses the output of dig, which does not run before it")
    assert check_proposal(part, C, A, TrustTier.UNTRUSTED, skills_c) == (
        "step 'think': no skill named 'analysis' visible to you")


def test_the_keyword_planner_names_members_by_wallet_and_prefers_this_agent() -> None:
    own = list(cards(report).values())
    peers = {B: list(cards(research, report).values()), C: list(cards(analysis, research).values())}
    steps = KeywordPlanner().plan(GOAL, own, peers)["steps"]
    assert [(s["skill"], s["agent"]) for s in steps] == [("research", B), ("analysis", C), ("report", "self")]
