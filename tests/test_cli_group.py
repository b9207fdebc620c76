"""``coworker group``, run in-process (``main([...])``) against agents on the in-memory network: through the running
agent's control port, and in this process when the agent does not run."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coworker import AsyncAgent, MemoryNetwork, TrustTier
from coworker.agent.invites import make_invite
from coworker.store.identity import Identity

from .test_cli import Capture, run


def run_json(capsys: Capture, *argv: str) -> Any:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


class Peers:
    """B, C and D (outside COWORKER_HOME's agents) serving one skill each on ``net``, in a loop of their own thread;
    B and C trust ``alice`` (KNOWN), D does not."""

    def __init__(self, net: MemoryNetwork, home: Path, alice: str) -> None:
        self.agents = [AsyncAgent(n, network=net, data_dir=home / "elsewhere" / n) for n in ("bob", "carol", "dave")]
        for agent, skill in zip(self.agents, ("research", "analyze", "secret"), strict=True):
            def run_skill(text: str, _skill: str = skill) -> str:
                return f"{_skill}: {text}"
            agent.add_skill(run_skill, name=skill)
        self.wallets = [a.wallet for a in self.agents]
        self._alice = alice
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> Peers:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        for agent in self.agents:
            await agent.start()
            agent.set_trust(self._alice, TrustTier.KNOWN if agent.name != "dave" else TrustTier.UNTRUSTED)

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            for agent in self.agents:
                await agent.stop()
        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        for agent in self.agents:
            agent.close()


@pytest.fixture
def alice(capsys: Capture) -> str:
    code, out, err = run(capsys, "init", "--name", "alice")
    assert code == 0, err
    return out.split("wallet:")[1].split()[0]


@pytest.fixture
def peers(home: Path, alice: str) -> Iterator[tuple[MemoryNetwork, Peers]]:
    net = MemoryNetwork()
    with Peers(net, home, alice) as running:
        yield net, running


def test_group_commands_through_the_running_agent(home: Path, alice: str, capsys: Capture,
                                                  peers: tuple[MemoryNetwork, Peers]) -> None:
    net, others = peers
    bob, carol, dave = others.wallets
    invite = make_invite(Identity.load_or_create(home / "elsewhere" / "carol", None), "carol", "local")
    me = AsyncAgent("alice", network=net)
    for wallet in others.wallets:
        me.set_trust(wallet, TrustTier.KNOWN)

    def cli() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        created = run_json(capsys, "group", "create", "research", bob, invite, "--description", "papers on MLS")
        seen["created"] = created
        short = created["id"][:6]  # a group is named by the start of its id as well
        seen["list"] = run_json(capsys, "group", "list")
        seen["members"] = run_json(capsys, "group", "members", short)
        seen["discover"] = run_json(capsys, "group", "discover", short, "--timeout", "0.5")
        seen["added"] = run_json(capsys, "group", "add", short, dave)
        seen["discover_with_dave"] = run_json(capsys, "group", "discover", short, "--timeout", "0.5")
        code, out, _ = run(capsys, "group", "discover", short, "--timeout", "0.5")
        seen["discover_text"] = out
        code, out, _ = run(capsys, "group", "remove", short, carol)
        seen["removed_text"] = (code, out)
        seen["members_after"] = run_json(capsys, "group", "members", short)
        seen["unknown"] = run(capsys, "group", "members", "ffff")
        seen["left"] = run(capsys, "group", "leave", short)
        seen["list_after_leaving"] = run_json(capsys, "group", "list")
        return seen

    async def scenario() -> dict[str, Any]:
        async with me:
            return await asyncio.to_thread(cli)

    try:
        seen = asyncio.run(scenario())
    finally:
        me.close()
    created = seen["created"]
    assert (created["name"], created["description"], created["state"]) == ("research", "papers on MLS", "joined")
    assert sorted(created["members"]) == sorted([alice, bob, carol])  # the invite code named carol
    assert [(g["id"], g["state"]) for g in seen["list"]] == [(created["id"], "joined")]
    assert sorted(seen["members"]) == sorted([alice, bob, carol])
    assert {w: p["skills"] for w, p in seen["discover"].items()} == {bob: ["research"], carol: ["analyze"]}
    assert sorted(seen["added"]["members"]) == sorted([alice, bob, carol, dave])
    found = seen["discover_with_dave"]
    assert {w: p["skills"] for w, p in found.items()} == {bob: ["research"], carol: ["analyze"], dave: []}
    assert found[dave]["name"] == ""  # dave holds alice as a stranger: it does not even read the group
    lines = seen["discover_text"].splitlines()
    assert lines[0].split() == ["WALLET", "NAME", "WE", "TRUST", "SKILLS"]
    assert any(line.startswith(bob) and line.split()[1:] == ["bob", "known", "research"] for line in lines)
    assert any(line.startswith(dave) and "no answer" in line for line in lines)
    code, out = seen["removed_text"]
    assert code == 0 and out.strip() == f"{carol} removed from the group research (3 members now)"
    assert sorted(seen["members_after"]) == sorted([alice, bob, dave])
    code, _, err = seen["unknown"]
    assert code == 1 and "no group 'ffff'" in err

    code, out, _ = seen["left"]
    assert code == 0 and out.strip() == "left the group research: nothing posted in it is read from now on"
    assert [g["state"] for g in seen["list_after_leaving"]] == ["left"]
    code, out, _ = run(capsys, "group", "list")  # the agent has stopped: read from its store
    assert code == 0 and out.splitlines()[1].split()[:3] == [created["id"], "left", "research"]


def test_group_commands_start_the_agent_in_this_process_when_it_does_not_run(
        home: Path, alice: str, capsys: Capture, peers: tuple[MemoryNetwork, Peers],
        monkeypatch: pytest.MonkeyPatch) -> None:
    net, others = peers
    bob, carol, _ = others.wallets
    monkeypatch.setattr("coworker.cli.network.AsyncAgent", lambda name: AsyncAgent(name, network=net))
    code, out, err = run(capsys, "group", "create", "work", bob, carol)
    assert code == 0, err
    group_id = out.splitlines()[0].split()[1]
    assert "members:" in out and bob in out and carol in out
    assert sorted(run_json(capsys, "group", "members", group_id)) == sorted([alice, bob, carol])
    assert run_json(capsys, "group", "list")[0]["id"] == group_id


def test_group_list_says_when_there_is_none_and_unknown_wallets_are_refused(alice: str, capsys: Capture) -> None:
    code, out, _ = run(capsys, "group", "list")
    assert code == 0 and "no groups" in out
    assert run_json(capsys, "group", "list") == []
    code, _, err = run(capsys, "group", "create", "g", "not-a-wallet")
    assert code == 1 and "not-a-wallet" in err
    code, _, err = run(capsys, "group")  # `coworker group` alone lists them
    assert code == 0
