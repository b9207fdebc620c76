"""Hiding and exposing skills: a hidden skill is, to every peer and on every path (v2 and CoWorker 1.0), exactly a
skill that does not exist; the owner's choice is kept in the agent's store, made from Python or the CLI."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import coworker
from coworker import Agent, AsyncAgent, ConfigurationError, MemoryNetwork, Network, TrustTier
from coworker.agent.control import ControlClient
from coworker.cli.main import main
from coworker.core.protocol import encode, new_id, request
from coworker.store.records import TaskRecord
from coworker.store.sqlite import SQLiteStore

from .conftest import RawClient
from .test_v1 import answer, v1_message

Capture = pytest.CaptureFixture[str]


@pytest.fixture
def network() -> Network:
    return MemoryNetwork()


def _now_ms() -> int:
    return int(time.time() * 1000)


def same(a: dict[str, Any], b: dict[str, Any], name_a: str, name_b: str) -> bool:
    """Two answers are the same but for the skill name each named (and the ids that differ by nature)."""
    def strip(reply: dict[str, Any], name: str) -> str:
        kept = {k: v for k, v in reply.items() if k not in ("id", "corr", "ts", "exp", "timestamp", "correlation_id")}
        text = json.dumps(kept, sort_keys=True).replace(name, "X")
        return re.sub(r"[0-9a-f]{32}", "ID", text)
    return strip(a, name_a) == strip(b, name_b)


# ---- the store ------------------------------------------------------------------------------------------------


def test_the_store_keeps_a_choice_and_records_a_default_only_when_none_is() -> None:
    store = SQLiteStore(":memory:")
    assert store.skill_visibility("echo") is None and store.hidden_skills() == set()
    assert store.set_skill_visibility("echo", True, 1.0, only_if_unset=True) is True
    assert store.set_skill_visibility("echo", False, 2.0, only_if_unset=True) is False  # recorded already
    assert store.skill_visibility("echo") is True and store.hidden_skills() == {"echo"}
    store.set_skill_visibility("echo", False, 3.0)
    assert store.skill_visibility("echo") is False and store.hidden_skills() == set()
    store.close()


# ---- the owner's side -----------------------------------------------------------------------------------------


def add_skills(agent: AsyncAgent) -> None:
    @agent.skill(description="Echo the text back.", version="2.0.0")
    def echo(text: str) -> str:
        return text

    @agent.skill(min_trust_tier=TrustTier.INTERNAL)
    def secret() -> str:
        return "the secret"


def test_hide_and_expose_are_kept_across_a_restart(tmp_path: Path) -> None:
    agent = AsyncAgent("alice", network=MemoryNetwork(), data_dir=tmp_path / "alice")
    add_skills(agent)
    assert agent.skill_hidden("echo") is False  # registered in code: visible until hidden
    agent.hide_skill("echo")
    agent.close()

    again = AsyncAgent("alice", network=MemoryNetwork(), data_dir=tmp_path / "alice")
    add_skills(again)
    assert again.skill_hidden("echo") is True and again.skill_hidden("secret") is False
    assert again.skills_overview() == [
        {"name": "echo", "description": "Echo the text back.", "version": "2.0.0", "tier": "known",
         "min_trust_tier": 1, "hidden": True},
        {"name": "secret", "description": "", "version": "1.0.0", "tier": "internal", "min_trust_tier": 2,
         "hidden": False}]
    again.expose_skill("echo")
    again.close()
    third = AsyncAgent("alice", network=MemoryNetwork(), data_dir=tmp_path / "alice")
    assert third.skill_hidden("echo") is False
    third.close()


def test_hiding_a_name_that_is_no_skill_is_a_configuration_error(tmp_path: Path) -> None:
    agent = AsyncAgent("alice", network=MemoryNetwork(), data_dir=tmp_path / "alice")
    add_skills(agent)
    for act in (agent.hide_skill, agent.expose_skill):
        with pytest.raises(ConfigurationError, match="no skill named 'nothing'"):
            act("nothing")
    assert agent.store.hidden_skills() == set()
    agent.close()


def test_a_default_visibility_is_recorded_only_once_and_never_undoes_the_owners_choice(tmp_path: Path) -> None:
    agent = AsyncAgent("alice", network=MemoryNetwork(), data_dir=tmp_path / "alice")
    agent.set_default_visibility("weather", exposed=False)  # a skill folder found for the first time
    assert agent.skill_hidden("weather") is True
    add_skills(agent)
    agent.set_default_visibility("echo", exposed=False)
    agent.expose_skill("echo")
    agent.set_default_visibility("echo", exposed=False)  # found again on the next start: the owner's choice holds
    assert agent.skill_hidden("echo") is False
    agent.set_default_visibility("secret", exposed=True)  # expose=True
    agent.set_default_visibility("secret", exposed=False)
    assert agent.skill_hidden("secret") is False
    with pytest.raises(ConfigurationError):
        agent.set_default_visibility("not a name", exposed=True)
    agent.close()


def test_the_blocking_agent_hides_and_exposes_too(tmp_path: Path, blocking_agents: list[Any]) -> None:
    agent = Agent("alice", network=MemoryNetwork(), data_dir=tmp_path / "alice")
    blocking_agents.append(agent)

    @agent.skill()
    def echo(text: str) -> str:
        return text

    agent.hide_skill("echo")
    assert agent.skill_hidden("echo") and agent.skills_overview()[0]["hidden"] is True
    agent.expose_skill("echo")
    agent.set_default_visibility("echo", exposed=False)
    assert not agent.skill_hidden("echo")


# ---- what peers see -------------------------------------------------------------------------------------------


@pytest.fixture
async def alice(network: Network, tmp_path: Path, raw: RawClient) -> AsyncIterator[AsyncAgent]:
    """Alice serves echo and summarize, trusts the raw peer at INTERNAL, and hides summarize."""
    agent = AsyncAgent("alice", network=network, data_dir=tmp_path / "alice")

    @agent.skill()
    def echo(text: str) -> str:
        return text

    @agent.skill(min_trust_tier=TrustTier.INTERNAL)
    def summarize(text: str) -> str:
        return text[:10]

    agent.set_trust(raw.wallet, TrustTier.INTERNAL)
    await agent.start()
    agent.hide_skill("summarize")  # on the running agent: from the next message
    yield agent
    await agent.stop()
    agent.close()


async def ask(raw: RawClient, alice: AsyncAgent, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    await raw.send(alice.wallet, encode(request(kind, body, sender=raw.wallet, recipient=alice.wallet,
                                                now_ms=_now_ms(), ttl_ms=60_000)))
    return await raw.receive()


async def test_a_hidden_skill_is_not_discovered(alice: AsyncAgent, raw: RawClient) -> None:
    caps = await ask(raw, alice, "discover", {})
    assert [card["name"] for card in caps["body"]["skills"]] == ["echo"]


async def test_a_call_to_a_hidden_skill_is_answered_as_one_to_a_missing_skill(
        alice: AsyncAgent, raw: RawClient) -> None:
    hidden = await ask(raw, alice, "call.request", {"skill": "summarize", "input": {"text": "x"}, "task": new_id()})
    missing = await ask(raw, alice, "call.request", {"skill": "nothing", "input": {"text": "x"}, "task": new_id()})
    assert hidden["type"] == "call.error" and hidden["body"]["code"] == "SKILL_NOT_FOUND"
    assert same(hidden, missing, "summarize", "nothing")


async def test_a_plan_naming_a_hidden_skill_is_rejected_as_one_naming_a_missing_skill(
        alice: AsyncAgent, raw: RawClient) -> None:
    def plan(skill: str) -> dict[str, Any]:
        return {"collaboration": new_id(), "goal": "shorten it",
                "steps": [{"id": "s", "skill": skill, "agent": alice.wallet, "input": {"text": "x"}}]}

    hidden = await ask(raw, alice, "plan.propose", plan("summarize"))
    missing = await ask(raw, alice, "plan.propose", plan("nothing"))
    assert hidden["type"] == "plan.reject"
    assert same(hidden, missing, "summarize", "nothing")
    assert (await ask(raw, alice, "plan.propose", plan("echo")))["type"] == "plan.accept"


async def test_a_1_0_agent_sees_a_hidden_skill_as_a_missing_one(alice: AsyncAgent, raw: RawClient) -> None:
    async def v1_ask(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        await raw.send(alice.wallet, v1_message(raw, kind, payload, correlation_id="c"))
        return await answer(raw)

    caps = await v1_ask("discover", {})
    assert [s["name"] for s in caps["payload"]["skills"]] == ["echo"]
    for kind, payload in (("skill_card_query", {"skill": "{}"}),
                          ("task_request", {"skill": "{}", "input": {"text": "x"}})):
        hidden = await v1_ask(kind, json.loads(json.dumps(payload).replace("{}", "summarize")))
        missing = await v1_ask(kind, json.loads(json.dumps(payload).replace("{}", "nothing")))
        assert "SKILL_NOT_FOUND" in json.dumps(hidden), kind
        assert same(hidden, missing, "summarize", "nothing"), kind


async def test_exposing_a_hidden_skill_makes_it_visible_and_callable_again(
        alice: AsyncAgent, raw: RawClient, network: Network, tmp_path: Path) -> None:
    bob = AsyncAgent("bob", network=network, data_dir=tmp_path / "bob")
    alice.set_trust(bob.wallet, TrustTier.INTERNAL)
    async with bob:
        assert (await bob.connect(alice.wallet)).skills == ["echo"]
        with pytest.raises(coworker.SkillNotFound):
            await bob.call(alice.wallet, "summarize", {"text": "hello world, hello"})
        alice.expose_skill("summarize")
        assert sorted((await bob.connect(alice.wallet)).skills) == ["echo", "summarize"]
        assert await bob.call(alice.wallet, "summarize", {"text": "hello world, hello"}) == "hello worl"
        alice.hide_skill("echo")
        with pytest.raises(coworker.SkillNotFound):
            await bob.call(alice.wallet, "echo", {"text": "hi"})


async def test_a_task_running_when_its_skill_is_hidden_runs_to_its_end_and_its_repeats_get_its_state(
        network: Network, tmp_path: Path, raw: RawClient) -> None:
    alice = AsyncAgent("alice", network=network, data_dir=tmp_path / "alice")
    started, release = asyncio.Event(), asyncio.Event()

    @alice.skill()
    async def slow(text: str) -> str:
        started.set()
        await release.wait()
        return text.upper()

    alice.set_trust(raw.wallet, TrustTier.KNOWN)
    async with alice:
        task = new_id()
        call = {"skill": "slow", "input": {"text": "hi"}, "task": task}
        await raw.send(alice.wallet, encode(request("call.request", call, sender=raw.wallet,
                                                    recipient=alice.wallet, now_ms=_now_ms(), ttl_ms=60_000)))
        async with asyncio.timeout(10):
            await started.wait()
        alice.hide_skill("slow")
        repeat = await ask(raw, alice, "call.request", call)  # a retry, which doubles as a poll
        assert (repeat["type"], repeat["body"]["task"]) == ("call.ack", task)
        other = await ask(raw, alice, "call.request", {**call, "task": new_id()})  # a new call: stopped
        assert other["body"]["code"] == "SKILL_NOT_FOUND"
        release.set()
        while (result := await raw.receive())["type"] == "call.ack":  # a late ack may come first
            pass
        assert (result["type"], result["body"]["output"]) == ("call.result", "HI")


async def test_a_hidden_skills_task_taken_before_a_restart_runs_after_it(
        network: Network, tmp_path: Path, raw: RawClient) -> None:
    alice = AsyncAgent("alice", network=network, data_dir=tmp_path / "alice")
    runs = []

    @alice.skill()
    def shout(text: str) -> str:
        runs.append(text)
        return text.upper()

    alice.set_trust(raw.wallet, TrustTier.KNOWN)
    # what a stop or a crash while it ran leaves: a served task still working; then its skill is hidden
    task = TaskRecord(new_id(), "in", raw.wallet, "shout", "working", {"text": "hi"}, 1.0, version="1.0.0",
                      updated_at=1.0, last_activity=1.0, attempts=1)
    assert alice.store.add_task(task)
    alice.hide_skill("shout")
    async with alice:
        result = await raw.receive()  # the callee sends the result of a resumed task on its own
        assert (result["type"], result["body"]["task"], result["body"]["output"]) == ("call.result", task.id, "HI")
    assert runs == ["hi"] and alice.get_result(task.id)["state"] == "completed"
    alice.close()


async def test_the_control_ports_status_lists_only_visible_skills(alice: AsyncAgent) -> None:
    client = ControlClient.find(alice.data_dir)
    assert client is not None
    status = await asyncio.to_thread(client.request, "status", 30)
    assert status["skills"] == ["echo"]
    listed = await asyncio.to_thread(client.request, "skills", 30)
    assert [(s["name"], s["hidden"]) for s in listed] == [("echo", False), ("summarize", True)]


# ---- the CLI --------------------------------------------------------------------------------------------------


def cli(capsys: Capture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def served_once(home: Path) -> tuple[AsyncAgent, MemoryNetwork]:
    """``alice`` made by the CLI, then run once with echo and secret (published), and stopped."""
    net = MemoryNetwork()
    agent = AsyncAgent("alice", network=net)
    add_skills(agent)

    async def once() -> None:
        async with agent:
            pass

    asyncio.run(once())
    return agent, net


def test_the_cli_lists_hides_and_exposes_the_skills_of_a_stopped_agent(home: Path, capsys: Capture) -> None:
    assert cli(capsys, "init", "--name", "alice")[0] == 0
    code, out, _ = cli(capsys, "skills", "hide", "echo")
    assert code == 1  # it has not run: its skills are not known yet
    agent, net = served_once(home)

    code, out, err = cli(capsys, "skills", "hide", "echo")
    assert code == 0, err
    assert "hid skill echo" in out and "once the agent starts" in out
    code, out, _ = cli(capsys, "skills", "--json")
    assert [(s["name"], s["tier"], s["version"], s["hidden"]) for s in json.loads(out)] == [
        ("echo", "known", "2.0.0", True), ("secret", "internal", "1.0.0", False)]
    code, out, _ = cli(capsys, "skills")
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "MIN", "TIER", "VERSION", "PEERS", "DESCRIPTION"]
    assert [row.split()[:5] for row in rows] == [["echo", "known", "(1)", "2.0.0", "hidden"],
                                                 ["secret", "internal", "(2)", "1.0.0", "visible"]]
    code, out, _ = cli(capsys, "status", "--json")
    report = json.loads(out)
    assert [c["name"] for c in report["skills"]] == ["secret"] and report["hidden_skills"] == ["echo"]
    code, _, err = cli(capsys, "skills", "hide", "nothing")
    assert code == 1 and "no skill named 'nothing'" in err

    assert agent.skill_hidden("echo")  # the agent applies it when it next starts
    peer = AsyncAgent("peer", network=net, data_dir=home / "elsewhere" / "peer")
    agent.set_trust(peer.wallet, TrustTier.PRIVILEGED)

    async def look() -> list[str]:
        async with agent, peer:
            return sorted((await peer.connect(agent.wallet)).skills)

    assert asyncio.run(look()) == ["secret"]
    assert cli(capsys, "skills", "expose", "echo")[0] == 0
    assert asyncio.run(look()) == ["echo", "secret"]
    agent.close()
    peer.close()


def test_the_cli_hides_and_exposes_through_a_running_agent_at_once(home: Path, capsys: Capture) -> None:
    assert cli(capsys, "init", "--name", "alice")[0] == 0
    net = MemoryNetwork()
    agent = AsyncAgent("alice", network=net)
    add_skills(agent)

    async def scenario() -> tuple[list[tuple[int, str, str]], list[bool]]:
        outputs, seen = [], []
        async with agent:
            for argv in (("skills", "hide", "secret"), ("skills", "--json"), ("skills", "hide", "nothing"),
                         ("skills", "expose", "secret")):
                outputs.append(await asyncio.to_thread(cli, capsys, *argv))
                seen.append(agent.skill_hidden("secret"))
        return outputs, seen

    try:
        (hid, listed, unknown, exposed), seen = asyncio.run(scenario())
    finally:
        agent.close()
    assert hid[0] == 0 and "applies it at once" in hid[1]
    assert [(s["name"], s["hidden"]) for s in json.loads(listed[1])] == [("echo", False), ("secret", True)]
    assert unknown[0] == 1 and "no skill named 'nothing'" in unknown[2]
    assert exposed[0] == 0
    assert seen == [True, True, True, False]
