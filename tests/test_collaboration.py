"""Collaborations: plans across two agents, chained steps, proposals the peer accepts or rejects, resuming,
the keyword planner, and the LLM planner against a fake OpenAI-compatible endpoint on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import coworker
from coworker import (
    Agent,
    AsyncAgent,
    CallContext,
    ConfigurationError,
    KeywordPlanner,
    LLMPlanner,
    MemoryNetwork,
    TrustTier,
)
from coworker.core.planning import plan_from_answer
from coworker.core.plans import resolve
from coworker.core.skills import build_skill
from coworker.core.tasks import RetryPolicy

from .conftest import Counter

FAST = RetryPolicy(first=0.02, maximum=0.2)
GOAL = "Research AI agents and write a report"
BOUND = 10  # seconds any single wait in these tests may take


class Writer:
    """How the writer's ``write`` skill behaves: fail, or hold until released."""

    def __init__(self) -> None:
        self.fail = False
        self.hold = False
        self.started = asyncio.Event()
        self.release = asyncio.Event()


def add_research(agent: AsyncAgent, counter: Counter) -> None:
    @agent.skill("research", description="Research a topic and return findings",
                 output_schema={"summary": "str", "facts": "list[str]"})
    def research(topic: str) -> dict[str, Any]:
        counter.hit("research")
        return {"summary": f"Findings on {topic}: agents call each other's skills", "facts": ["one", "two"]}


def add_writing(agent: AsyncAgent, counter: Counter, writer: Writer) -> None:
    @agent.skill("write", description="Write a report from notes")
    async def write(topic: str, notes: str) -> dict[str, str]:
        counter.hit("write")
        if writer.fail:
            raise RuntimeError("the writer has no ink")
        if writer.hold:
            writer.started.set()
            await writer.release.wait()
        return {"report": f"REPORT on {topic}. Based on: {notes}"}

    @agent.skill("review", description="Review a report", min_trust_tier=TrustTier.INTERNAL)
    def review(text: str) -> str:
        counter.hit("review")
        return "looks fine"


def researcher(net: MemoryNetwork, tmp_path: Path, counter: Counter) -> AsyncAgent:
    """Alice, who researches (a new object on the same directory is alice after a restart)."""
    alice = AsyncAgent("alice", network=net, data_dir=tmp_path / "alice", retry=FAST)
    add_research(alice, counter)
    return alice


@pytest.fixture
def writer() -> Writer:
    return Writer()


@pytest.fixture
def net(monkeypatch: pytest.MonkeyPatch) -> MemoryNetwork:
    monkeypatch.delenv("COWORKER_LLM_BASE_URL", raising=False)  # the keyword planner unless a test says so
    return MemoryNetwork()


@pytest.fixture
async def agents(net: MemoryNetwork, tmp_path: Path, counter: Counter,
                 writer: Writer) -> AsyncIterator[tuple[AsyncAgent, AsyncAgent]]:
    """Alice researches; Bob writes and trusts Alice at KNOWN. Both started."""
    alice = researcher(net, tmp_path, counter)
    bob = AsyncAgent("bob", network=net, data_dir=tmp_path / "bob", retry=FAST)
    add_writing(bob, counter, writer)
    bob.set_trust(alice.wallet, TrustTier.KNOWN)
    await alice.start()
    await bob.start()
    yield alice, bob
    writer.release.set()
    await alice.stop()
    await bob.stop()
    alice.close()
    bob.close()


# ---- running plans ---------------------------------------------------------------------------------------

async def test_research_here_then_write_there_completes_with_the_research_fed_into_the_write(
        agents: tuple[AsyncAgent, AsyncAgent], counter: Counter) -> None:
    alice, bob = agents
    result = await asyncio.wait_for(alice.collaborate(bob.wallet, GOAL), BOUND)
    assert (result["state"], result["progress"], result["error"]) == ("completed", "2/2", None)
    research, write = result["steps"]
    assert (research["skill"], research["agent"], research["status"]) == ("research", alice.wallet, "completed")
    assert (write["skill"], write["agent"], write["status"]) == ("write", bob.wallet, "completed")
    assert write["template"]["notes"] == "{{research.output.summary}}"
    assert write["inputs_from"] == ["research"]
    assert write["input"]["notes"] == research["output"]["summary"]  # the chaining, visible in the result
    assert research["output"]["summary"] in write["output"]["report"]
    assert write["input"]["topic"] == GOAL
    assert all(s["duration_ms"] is not None and s["duration_ms"] >= 0 for s in result["steps"])
    assert [k["done"] for k in result["key_results"]] == [True, True]
    assert (counter["research"], counter["write"]) == (1, 1)
    served = bob.list_tasks(direction="in")
    assert [(t["task_id"], t["skill"]) for t in served] == [(write["task_id"], "write")]
    assert alice.collaborations() == [result]


async def test_an_explicit_plan_runs_as_given_with_references_inside_text_as_json(
        agents: tuple[AsyncAgent, AsyncAgent]) -> None:
    alice, bob = agents
    plan = {"steps": [{"id": "dig", "skill": "research", "input": {"topic": "MLS"}},
                      {"id": "draft", "skill": "write", "agent": bob.wallet,
                       "input": {"topic": "{{dig.output.summary}}", "notes": "Facts: {{dig.output.facts}}"}}],
            "key_results": ["a report on MLS", {"description": "facts found", "step": "dig"}]}
    result = await asyncio.wait_for(alice.collaborate(bob.wallet, "Write about MLS", plan=plan), BOUND)
    assert result["state"] == "completed" and result["planner"] == "given"
    dig, draft = result["steps"]
    assert draft["input"] == {"topic": dig["output"]["summary"], "notes": 'Facts: ["one", "two"]'}
    assert result["key_results"] == [{"description": "a report on MLS", "step": None, "done": True},
                                     {"description": "facts found", "step": "dig", "done": True}]


@pytest.mark.parametrize(("plan", "problem"), [
    ([{"id": "write", "skill": "write", "agent": "peer", "input": {"topic": "x", "notes": "{{dig.output}}"}},
      {"id": "dig", "skill": "research", "input": {"topic": "x"}}],
     "step 'write' uses the output of dig, which does not run before it"),
    ([{"skill": "research", "input": {"topic": "x"}}, {"skill": "translate", "agent": "peer"}],
     "shows us no skill named 'translate'"),
    ([{"skill": "write", "agent": "self", "input": {"topic": "x", "notes": "y"}}],
     "this agent has no skill named 'write'"),
    ([{"skill": "research", "input": {"topic": "x"}}], "no step is for the peer"),
    ([{"skill": "write", "input": {"topic": "x"}}], "lacks the required field(s) notes"),
    ([{"skill": "write", "agent": "0x" + "12" * 20, "input": {}}], "is neither 'self', 'peer'"),
], ids=["later-step", "unknown-peer-skill", "unknown-own-skill", "nothing-for-the-peer", "missing-field",
        "third-agent"])
async def test_a_plan_that_cannot_run_is_refused_before_anything_is_sent(
        agents: tuple[AsyncAgent, AsyncAgent], counter: Counter, plan: list[dict[str, Any]], problem: str) -> None:
    alice, bob = agents
    with pytest.raises(ConfigurationError) as refused:
        await alice.collaborate(bob.wallet, GOAL, plan=plan)
    assert problem in str(refused.value)
    assert alice.collaborations() == [] and bob.list_tasks() == [] and counter.runs == {}


async def test_without_the_peers_trust_the_plan_is_refused_before_it_is_sent(
        agents: tuple[AsyncAgent, AsyncAgent]) -> None:
    alice, bob = agents
    bob.set_trust(alice.wallet, TrustTier.UNTRUSTED)
    with pytest.raises(ConfigurationError, match="shows us no skills: it does not trust us yet"):
        await alice.collaborate(bob.wallet, GOAL)


async def test_the_peer_rejects_a_plan_for_a_skill_it_no_longer_shows_us_and_nothing_runs(
        agents: tuple[AsyncAgent, AsyncAgent], counter: Counter) -> None:
    alice, bob = agents
    bob.set_trust(alice.wallet, TrustTier.INTERNAL)  # alice sees "review" when she discovers bob's skills

    class DemotingPlanner:
        """Plans a review, while bob lowers alice's tier between her discovery and her proposal."""

        def plan(self, goal: str, own: Any, peer: Any) -> Any:
            assert "review" in [c["name"] for c in peer]
            bob.set_trust(alice.wallet, TrustTier.KNOWN)
            return [{"id": "dig", "skill": "research", "input": {"topic": goal}},
                    {"skill": "review", "agent": "peer", "input": {"text": "{{dig.output.summary}}"}}]

    with pytest.raises(coworker.PlanRejected) as rejected:
        await asyncio.wait_for(alice.collaborate(bob.wallet, GOAL, planner=DemotingPlanner()), BOUND)
    assert "rejected the plan: step 'review': no skill named 'review' visible to you" in str(rejected.value)
    assert rejected.value.code == "PLAN_REJECTED"
    (stored,) = alice.collaborations()
    assert stored["state"] == "rejected" and "no skill named 'review'" in stored["reason"]
    assert counter.runs == {} and bob.list_tasks() == [] and alice.list_tasks() == []
    with pytest.raises(coworker.PlanRejected):
        await alice.resume_collaboration(stored["collaboration_id"])


async def test_a_failed_step_stops_the_plan_and_resuming_tries_that_step_again(
        agents: tuple[AsyncAgent, AsyncAgent], counter: Counter, writer: Writer) -> None:
    alice, bob = agents
    writer.fail = True
    failed = await asyncio.wait_for(alice.collaborate(bob.wallet, GOAL), BOUND)
    assert (failed["state"], failed["progress"]) == ("failed", "1/2")
    assert failed["error"] == {"step": "write", "code": "SKILL_FAILED", "message": "the writer has no ink"}
    assert [s["status"] for s in failed["steps"]] == ["completed", "failed"]
    assert failed["key_results"][1]["done"] is False
    writer.fail = False
    done = await asyncio.wait_for(alice.resume_collaboration(failed["collaboration_id"]), BOUND)
    assert (done["state"], done["progress"], done["error"]) == ("completed", "2/2", None)
    assert done["steps"][1]["task_id"] != failed["steps"][1]["task_id"]  # a new task for the new attempt
    assert done["steps"][1]["attempts"] == 2
    assert (counter["research"], counter["write"]) == (1, 2)


async def test_an_interrupted_collaboration_resumes_after_a_restart_and_runs_no_step_twice(
        net: MemoryNetwork, tmp_path: Path, counter: Counter, writer: Writer) -> None:
    alice = researcher(net, tmp_path, counter)
    bob = AsyncAgent("bob", network=net, data_dir=tmp_path / "bob", retry=FAST)
    add_writing(bob, counter, writer)
    bob.set_trust(alice.wallet, TrustTier.KNOWN)
    await alice.start()
    await bob.start()
    writer.hold = True
    collaboration_id = "c0" * 16
    running = asyncio.create_task(alice.collaborate(bob.wallet, GOAL, collaboration_id=collaboration_id))
    await asyncio.wait_for(writer.started.wait(), BOUND)
    await alice.stop()  # alice goes away while bob writes
    interrupted = await asyncio.wait_for(running, BOUND)
    assert (interrupted["state"], interrupted["progress"]) == ("running", "1/2")
    sent = interrupted["steps"][1]["task_id"]
    assert sent is not None and interrupted["steps"][1]["status"] == "running"
    alice.close()
    writer.release.set()  # bob finishes while alice is away: the answer waits for her

    alice = researcher(net, tmp_path, counter)  # the same agent, restarted
    try:
        assert alice.collaborations()[0]["state"] == "running"
        result = await asyncio.wait_for(alice.resume_collaboration(collaboration_id), BOUND)
        assert (result["state"], result["progress"]) == ("completed", "2/2")
        assert result["steps"][1]["task_id"] == sent  # waited for the task it had sent, sent no other
        assert result["steps"][1]["input"]["notes"] in result["steps"][1]["output"]["report"]
        assert (counter["research"], counter["write"]) == (1, 1)
        assert len(bob.list_tasks(direction="in")) == 1
        again = await alice.collaborate(bob.wallet, GOAL, collaboration_id=collaboration_id)
        assert again == result  # the same id names the same collaboration: nothing runs again
    finally:
        await alice.stop()
        await bob.stop()
        alice.close()
        bob.close()


async def test_a_collaboration_cancelled_mid_step_resumes_from_that_step(
        agents: tuple[AsyncAgent, AsyncAgent], counter: Counter) -> None:
    alice, bob = agents
    held, release, attempts = asyncio.Event(), asyncio.Event(), []

    @alice.skill("outline", description="Outline a report")
    async def outline(topic: str, ctx: CallContext) -> str:
        attempts.append(ctx.attempt)
        held.set()
        await release.wait()
        return f"outline of {topic}"

    plan = [{"skill": "outline", "input": {"topic": "MLS"}},
            {"skill": "write", "input": {"topic": "MLS", "notes": "{{outline.output}}"}}]
    running = asyncio.create_task(alice.collaborate(bob.wallet, "Outline and write about MLS", plan=plan))
    await asyncio.wait_for(held.wait(), BOUND)
    (stored,) = alice.collaborations()
    assert (stored["state"], stored["steps"][0]["status"]) == ("running", "running")
    with pytest.raises(ConfigurationError, match="is already running in this agent"):
        await alice.resume_collaboration(stored["collaboration_id"])
    running.cancel()  # the code that started it gives up (or its process dies)
    with pytest.raises(asyncio.CancelledError):
        await running
    release.set()
    result = await asyncio.wait_for(alice.resume_collaboration(stored["collaboration_id"]), BOUND)
    assert (result["state"], result["progress"]) == ("completed", "2/2")
    assert attempts == [1, 2] and result["steps"][0]["attempts"] == 2  # a local step runs again, and knows it
    assert result["steps"][1]["input"]["notes"] == "outline of MLS" and counter["write"] == 1


class Crash(BaseException):
    """The process dies here."""


async def test_a_task_id_stored_but_never_sent_is_the_one_sent_on_resume(
        agents: tuple[AsyncAgent, AsyncAgent], counter: Counter, monkeypatch: pytest.MonkeyPatch) -> None:
    alice, bob = agents

    def crash(*args: Any, **kwargs: Any) -> str:
        raise Crash

    with monkeypatch.context() as patch:
        patch.setattr(alice._runtime, "submit", crash)
        with pytest.raises(Crash):
            await alice.collaborate(bob.wallet, GOAL)
    (stored,) = alice.collaborations()
    chosen = stored["steps"][1]["task_id"]
    assert chosen is not None and stored["steps"][1]["status"] == "running" and alice.list_tasks() == []
    result = await asyncio.wait_for(alice.resume_collaboration(stored["collaboration_id"]), BOUND)
    assert result["state"] == "completed" and result["steps"][1]["task_id"] == chosen
    assert [t["task_id"] for t in bob.list_tasks(direction="in")] == [chosen]
    assert (counter["research"], counter["write"]) == (1, 1)


async def test_collaborations_are_listed_after_a_restart(net: MemoryNetwork, tmp_path: Path,
                                                         counter: Counter, writer: Writer) -> None:
    alice = researcher(net, tmp_path, counter)
    bob = AsyncAgent("bob", network=net, data_dir=tmp_path / "bob", retry=FAST)
    add_writing(bob, counter, writer)
    bob.set_trust(alice.wallet, TrustTier.KNOWN)
    async with alice, bob:
        first = await asyncio.wait_for(alice.collaborate(bob.wallet, GOAL), BOUND)
    alice.close()
    bob.close()
    later = researcher(net, tmp_path, counter)  # not started: the list comes from the store
    try:
        (listed,) = later.collaborations()
        assert listed == first and listed["steps"][1]["output"]["report"].startswith("REPORT")
        with pytest.raises(ConfigurationError, match="no collaboration"):
            await later.resume_collaboration("0" * 32)
    finally:
        later.close()


def test_the_blocking_agent_collaborates_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             blocking_agents: list[Agent]) -> None:
    monkeypatch.delenv("COWORKER_LLM_BASE_URL", raising=False)
    net = MemoryNetwork()
    alice = Agent("alice", network=net, data_dir=tmp_path / "alice", retry=FAST)
    bob = Agent("bob", network=net, data_dir=tmp_path / "bob", retry=FAST)
    blocking_agents.extend([alice, bob])

    @alice.skill(description="Research a topic", output_schema={"summary": "str"})
    def research(topic: str) -> dict[str, str]:
        return {"summary": f"all about {topic}"}

    @bob.skill(description="Write a report")
    def write(topic: str, notes: str) -> str:
        return f"report: {notes}"

    bob.set_trust(alice.wallet, TrustTier.KNOWN)
    bob.start()
    result = alice.collaborate(bob.wallet, GOAL, timeout=BOUND)
    assert result["progress"] == "2/2" and result["steps"][1]["output"] == f"report: all about {GOAL}"
    assert alice.resume_collaboration(result["collaboration_id"]) == result
    assert alice.collaborations(1) == [result]


# ---- the pure parts --------------------------------------------------------------------------------------

def card(fn: Any, description: str = "", output_schema: Any = None) -> dict[str, Any]:
    skill = build_skill(fn, name=None, description=description, input_schema=None, output_schema=output_schema,
                        min_trust_tier=TrustTier.KNOWN, version="1.0.0")
    return skill.card()


def research(topic: str) -> dict[str, Any]: ...
def write(topic: str, notes: str) -> str: ...
def summarize(text: str, max_words: int = 50) -> dict[str, Any]: ...
def translate(text: str, language: str = "fr") -> str: ...
def lookup(subject: str) -> list[str]: ...


RESEARCH = card(research, "Research a topic and return findings", {"summary": "str", "facts": "list[str]"})
WRITE = card(write, "Write a report from notes")


def test_the_keyword_planner_chains_the_skills_in_the_order_the_goal_names_them() -> None:
    planned = KeywordPlanner().plan(GOAL, [RESEARCH], [WRITE])
    assert planned["steps"] == [
        {"id": "research", "skill": "research", "agent": "self", "input": {"topic": GOAL}},
        {"id": "write", "skill": "write", "agent": "peer",
         "input": {"topic": GOAL, "notes": "{{research.output.summary}}"}},
    ]
    assert planned["key_results"] == [
        {"description": "research: Research a topic and return findings", "step": "research"},
        {"description": "write: Write a report from notes", "step": "write"},
    ]
    summarizing = card(summarize, "Summarize text", {"summary": "str", "word_count": "int"})
    goal = "Summarize this text, then translate the summary into French"
    steps = KeywordPlanner().plan(goal, [card(translate, "Translate text")], [summarizing])["steps"]
    assert [(s["skill"], s["agent"]) for s in steps] == [("summarize", "peer"), ("translate", "self")]
    assert steps[0]["input"] == {"text": goal}  # "text" takes the goal in the first step only
    assert steps[1]["input"] == {"text": "{{summarize.output.summary}}"}


def test_the_keyword_planner_prefers_this_agent_but_always_gives_the_peer_a_step() -> None:
    steps = KeywordPlanner().plan(GOAL, [RESEARCH], [RESEARCH, WRITE])["steps"]
    assert [(s["skill"], s["agent"]) for s in steps] == [("research", "self"), ("write", "peer")]
    steps = KeywordPlanner().plan(GOAL, [RESEARCH, WRITE], [RESEARCH, WRITE])["steps"]
    assert [(s["skill"], s["agent"]) for s in steps] == [("research", "peer"), ("write", "self")]


def test_the_keyword_planner_matches_descriptions_when_the_goal_names_no_skill() -> None:
    facts = card(lookup, "Find facts on a subject")
    steps = KeywordPlanner().plan("Find facts about MLS", [], [facts, WRITE])["steps"]
    assert steps == [{"id": "lookup", "skill": "lookup", "agent": "peer", "input": {"subject": "Find facts about MLS"}}]


def test_the_keyword_planner_says_when_no_skill_matches_the_goal() -> None:
    with pytest.raises(ConfigurationError, match=r"no skill of either agent matches the goal 'Bake bread'.*plan="):
        KeywordPlanner().plan("Bake bread", [RESEARCH], [WRITE])


def test_a_whole_reference_is_the_value_and_an_embedded_one_is_text() -> None:
    outputs = {"dig": {"summary": "short", "facts": ["a", {"b": 1}], "n": 3}, "say": "hello"}
    data = {"all": "{{dig.output}}", "facts": "{{ dig.output.facts }}", "second": "{{dig.output.facts.1.b}}",
            "line": "n={{dig.output.n}}; {{say.output}}; {{dig.output.facts}}", "nested": [{"x": "{{say.output}}"}],
            "plain": 7}
    assert resolve(data, outputs) == {
        "all": outputs["dig"], "facts": ["a", {"b": 1}], "second": 1,
        "line": 'n=3; hello; ["a", {"b": 1}]', "nested": [{"x": "hello"}], "plain": 7}


@pytest.mark.parametrize(("value", "problem"), [
    ("{{gone.output}}", "input.x: step 'gone' has no output"),
    ("{{dig.output.missing}}", "input.x: dig.output (dict) has no 'missing'"),
    ("see {{dig.output.facts.5}}", "input.x: dig.output.facts (list) has no '5'"),
])
def test_a_reference_to_a_missing_step_or_field_is_a_clear_error(value: str, problem: str) -> None:
    with pytest.raises(ConfigurationError) as error:
        resolve({"x": value}, {"dig": {"facts": ["a"]}})
    assert problem in str(error.value)


@pytest.mark.parametrize("answer", [
    '{"steps": []}',
    'Here is the plan:\n```json\n{"steps": []}\n```\nGood luck!',
    '```\n{"steps": []}\n```',
    'Sure! {"steps": []} Hope that helps.',
])
def test_a_plan_is_read_from_a_model_answer_with_or_without_fences(answer: str) -> None:
    assert plan_from_answer(answer) == {"steps": []}


# ---- the LLM planner against a fake OpenAI-compatible endpoint -------------------------------------------

class FakeLLM:
    """An OpenAI-compatible ``/chat/completions`` endpoint on 127.0.0.1 that records requests and answers
    ``self.answer`` (the assistant's text) or ``self.raw`` (the whole HTTP body) with ``self.status``."""

    def __init__(self) -> None:
        self.answer = ""
        self.raw: bytes | None = None
        self.status = 200
        self.requests: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "authorization": self.headers.get("Authorization"),
                                      "body": body})
                data = fake.raw if fake.raw is not None else json.dumps(
                    {"id": "x", "object": "chat.completion", "model": body.get("model"),
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": fake.answer},
                                  "finish_reason": "stop"}]}).encode()
                self.send_response(fake.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), name="fake-llm", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(BOUND)


@pytest.fixture
def fake_llm() -> Iterator[FakeLLM]:
    server = FakeLLM()
    yield server
    server.close()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "llm-key"
    path.write_text("sk-test-not-a-real-key\n")
    path.chmod(0o600)
    return path


LLM_PLAN = {"steps": [{"id": "dig", "skill": "research", "agent": "self", "input": {"topic": "AI agents"}},
                      {"id": "report", "skill": "write", "agent": "peer",
                       "input": {"topic": "AI agents", "notes": "{{dig.output.summary}}"}}],
            "key_results": [{"description": "a report on AI agents", "step": "report"}]}


async def test_when_configured_the_llm_planner_plans_with_the_goal_the_skills_the_model_and_the_key(
        agents: tuple[AsyncAgent, AsyncAgent], fake_llm: FakeLLM, key_file: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    alice, bob = agents
    monkeypatch.setenv("COWORKER_LLM_BASE_URL", fake_llm.base_url)
    monkeypatch.setenv("COWORKER_LLM_MODEL", "tiny-planner")
    monkeypatch.setenv("COWORKER_LLM_API_KEY_FILE", str(key_file))
    fake_llm.answer = "```json\n" + json.dumps(LLM_PLAN, indent=2) + "\n```"
    caplog.set_level("DEBUG")
    result = await asyncio.wait_for(alice.collaborate(bob.wallet, GOAL), BOUND)
    assert (result["state"], result["progress"]) == ("completed", "2/2")
    assert result["planner"] == f"LLMPlanner(url='{fake_llm.base_url}/chat/completions', model='tiny-planner')"
    assert result["steps"][1]["input"]["notes"] == result["steps"][0]["output"]["summary"]
    assert result["key_results"] == [{"description": "a report on AI agents", "step": "report", "done": True}]
    (sent,) = fake_llm.requests
    assert sent["path"] == "/v1/chat/completions"
    assert sent["authorization"] == "Bearer sk-test-not-a-real-key"
    assert sent["body"]["model"] == "tiny-planner"
    system, user = sent["body"]["messages"]
    assert system["role"] == "system" and "{{<step id>.output.<field>}}" in system["content"]
    context = json.loads(user["content"])
    assert context["goal"] == GOAL
    assert [c["name"] for c in context["agents"]["self"]["skills"]] == ["research"]
    assert [c["name"] for c in context["agents"]["peer"]["skills"]] == ["write"]  # "review" is hidden from alice
    assert context["agents"]["peer"]["skills"][0]["description"] == "Write a report from notes"
    assert "sk-test" not in caplog.text and "sk-test" not in json.dumps(result)


@pytest.mark.parametrize(("answer", "raw", "status", "problem"), [
    ("I would rather not plan today.", None, 200, "answered no usable plan"),
    ("", b"<html>not json</html>", 200, "did not answer like an OpenAI-compatible chat completion"),
    ("", b'{"error": {"message": "bad key"}}', 401, "answered HTTP 401"),
])
async def test_a_bad_llm_answer_is_a_clear_error_naming_the_endpoint(
        fake_llm: FakeLLM, answer: str, raw: bytes | None, status: int, problem: str) -> None:
    fake_llm.answer, fake_llm.raw, fake_llm.status = answer, raw, status
    planner = LLMPlanner(fake_llm.base_url, "tiny-planner")
    with pytest.raises(ConfigurationError) as error:
        await planner.plan(GOAL, [RESEARCH], [WRITE])
    assert f"the LLM at {fake_llm.base_url}/chat/completions" in str(error.value) and problem in str(error.value)
    assert fake_llm.requests[0]["authorization"] is None  # no key file, no key


async def test_an_llm_plan_that_cannot_run_is_refused_before_anything_is_sent(
        agents: tuple[AsyncAgent, AsyncAgent], fake_llm: FakeLLM, counter: Counter) -> None:
    alice, bob = agents
    fake_llm.answer = json.dumps({"steps": [{"skill": "research", "input": {"topic": "x"}},
                                            {"skill": "translate", "agent": "peer", "input": {"text": "x"}}]})
    planner = LLMPlanner(fake_llm.base_url, "tiny-planner")
    with pytest.raises(ConfigurationError, match=r"the plan of LLMPlanner\(.*\) cannot run: .*'translate'"):
        await alice.collaborate(bob.wallet, GOAL, planner=planner)
    assert alice.collaborations() == [] and counter.runs == {}


async def test_an_unreachable_llm_endpoint_is_a_clear_error_naming_it() -> None:
    with socket.socket() as probe:  # a port on this machine that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    planner = LLMPlanner(f"http://127.0.0.1:{port}/v1", "m", timeout=BOUND)
    with pytest.raises(ConfigurationError, match=rf"cannot reach the LLM at http://127.0.0.1:{port}/v1/chat/compl"):
        await planner.plan(GOAL, [RESEARCH], [WRITE])


def test_the_llm_planner_needs_an_endpoint_a_model_and_a_readable_key_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key_file: Path) -> None:
    for name in ("COWORKER_LLM_BASE_URL", "COWORKER_LLM_MODEL", "COWORKER_LLM_API_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigurationError, match="COWORKER_LLM_BASE_URL"):
        LLMPlanner()
    with pytest.raises(ConfigurationError, match="COWORKER_LLM_MODEL"):
        LLMPlanner("http://127.0.0.1:1/v1")
    with pytest.raises(ConfigurationError, match="cannot read the LLM API key file"):
        LLMPlanner("http://127.0.0.1:1/v1", "m", tmp_path / "missing")
    planner = LLMPlanner("http://127.0.0.1:1/v1", "m", key_file)
    assert "sk-test" not in repr(planner) and "sk-test" not in str(vars(planner).get("url"))
