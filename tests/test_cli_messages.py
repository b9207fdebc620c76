"""What the ``coworker`` command says: JSON on request, task ids by prefix, hints that run as they are (with
``--agent`` when it is needed), CLI commands rather than Python methods, tiers, and a trust request to oneself.

Commands that talk to a peer drive an agent running in this process on a MemoryNetwork, through its control
endpoint, as they would drive one that ``coworker bridge start`` runs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from coworker import AsyncAgent, ConfigurationError, MemoryNetwork, TrustTier

from .test_cli import init, pending_request_from_bob, run

Capture = pytest.CaptureFixture[str]
T = TypeVar("T")

TIERS = "use untrusted, known, internal, privileged or 0-3"


def with_bob_running(home: Path, scenario: Callable[[AsyncAgent, AsyncAgent], T], *, trusted: bool = True) -> T:
    """Run ``bob`` (an agent of $COWORKER_HOME) and ``alice`` (kept elsewhere) on a MemoryNetwork; alice serves
    ``shout`` (text) and ``count`` (an object) and trusts bob unless told not to; ``scenario(alice, bob)`` runs in
    a thread meanwhile (the CLI, which reaches bob through his control endpoint)."""
    net = MemoryNetwork()
    alice = AsyncAgent("alice", network=net, data_dir=home / "elsewhere" / "alice")
    bob = AsyncAgent("bob", network=net)

    @alice.skill()
    def shout(text: str) -> str:
        return text.upper()

    @alice.skill()
    def count(text: str) -> dict[str, int]:
        return {"words": len(text.split())}

    if trusted:
        alice.set_trust(bob.wallet, TrustTier.KNOWN)

    async def main() -> T:
        async with alice, bob:
            return await asyncio.to_thread(scenario, alice, bob)

    try:
        return asyncio.run(main())
    finally:
        alice.close()
        bob.close()


# ---- call --json ----------------------------------------------------------------------------------------------


def test_call_prints_text_as_it_is_and_everything_as_json_with_json(home: Path, capsys: Capture) -> None:
    init(capsys, "bob")

    def calls(alice: AsyncAgent, bob: AsyncAgent) -> list[tuple[int, str, str]]:
        return [run(capsys, "call", alice.wallet, skill, "--input", '{"text": "hi there"}', *json_flag)
                for skill in ("shout", "count") for json_flag in ((), ("--json",))]

    (code1, text, _), (code2, quoted, _), (code3, plain, _), (code4, as_json, err) = with_bob_running(home, calls)
    assert (code1, code2, code3, code4) == (0, 0, 0, 0), err
    assert text == "HI THERE\n"
    assert json.loads(quoted) == "HI THERE"
    assert json.loads(plain) == json.loads(as_json) == {"words": 2}


# ---- task ids by prefix ---------------------------------------------------------------------------------------


def test_task_takes_a_unique_prefix_and_says_when_one_is_ambiguous_or_missing(home: Path, capsys: Capture) -> None:
    init(capsys, "bob")
    ids = ["abc1" + "0" * 28, "abc2" + "0" * 28, "f00d" + "1" * 28]
    net = MemoryNetwork()
    alice = AsyncAgent("alice", network=net, data_dir=home / "elsewhere" / "alice")
    bob = AsyncAgent("bob", network=net)
    alice.add_skill(lambda text: text.upper(), name="shout")
    alice.set_trust(bob.wallet, TrustTier.KNOWN)

    async def requests() -> None:
        async with alice, bob:
            for task_id in ids:
                await bob.wait(await bob.request(alice.wallet, "shout", {"text": "hi"}, task_id=task_id))

    asyncio.run(requests())
    alice.close()
    bob.close()

    code, out, err = run(capsys, "task", "f00d")
    assert code == 0, err
    assert out.startswith(f"task      {ids[2]} (ours)") and 'result    "HI"' in out
    code, out, err = run(capsys, "task", "ABC1", "--json")
    assert code == 0 and json.loads(out)["task_id"] == ids[0]
    code, out, err = run(capsys, "task", "abc")
    assert (code, out) == (1, "")
    assert err == f"coworker: error: 2 tasks have an id starting with 'abc' ({ids[0]}, {ids[1]}): give more digits\n"
    code, _, err = run(capsys, "task", "abd")
    assert (code, err) == (1, "coworker: error: no task id starts with 'abd'\n")
    code, _, err = run(capsys, "task", "0" * 32)
    assert (code, err) == (1, f"coworker: error: no task {'0' * 32}\n")
    code, _, err = run(capsys, "task", "xyz")
    assert code == 1 and err.startswith("coworker: error: not a task id: 'xyz'")


# ---- hints that run as they are -------------------------------------------------------------------------------


def test_the_connect_hint_names_the_agent_when_it_was_chosen_or_there_are_several(
        home: Path, capsys: Capture, monkeypatch: pytest.MonkeyPatch) -> None:
    init(capsys, "bob")

    def connects(alice: AsyncAgent, bob: AsyncAgent) -> list[str]:
        alone = run(capsys, "connect", alice.wallet)[1]
        chosen = run(capsys, "connect", alice.wallet, "--agent", "bob")[1]
        init(capsys, "carol")
        monkeypatch.setenv("COWORKER_AGENT", "bob")
        several = run(capsys, "connect", alice.wallet)[1]
        return [alone, chosen, several, alice.wallet]

    alone, chosen, several, alice = with_bob_running(home, connects, trusted=False)
    assert f"ask it with `coworker trust request {alice}`" in alone
    assert f"ask it with `coworker --agent bob trust request {alice}`" in chosen
    assert f"ask it with `coworker --agent bob trust request {alice}`" in several


def test_trust_list_says_how_to_approve_a_pending_request(home: Path, capsys: Capture) -> None:
    init(capsys, "alice")
    bob = pending_request_from_bob(home)
    code, out, _ = run(capsys, "trust", "list")
    assert code == 0
    assert out.splitlines()[-1] == (f"approve with `coworker trust approve {bob}` (--tier T to grant another "
                                    f"tier), or refuse with `coworker trust deny {bob}`")
    out = run(capsys, "trust", "list", "--agent", "alice")[1]
    assert f"approve with `coworker --agent alice trust approve {bob}`" in out


def test_approve_without_a_request_names_the_cli_command_that_sets_a_tier(home: Path, capsys: Capture) -> None:
    init(capsys, "alice")
    init(capsys, "bob")  # two agents: the hint needs --agent
    wallet = "0x" + "ab" * 20
    code, out, err = run(capsys, "trust", "approve", wallet, "--agent", "alice")
    assert (code, out) == (1, "")
    checksummed = err.split("from ")[1].split(":")[0]
    assert err == (f"coworker: error: no pending trust request from {checksummed}: set its tier without one with "
                   f"`coworker --agent alice trust set {checksummed} TIER`\n")
    assert "set_trust" not in err


def test_approve_through_a_running_agent_without_a_request_names_the_cli_command_too(home: Path,
                                                                                     capsys: Capture) -> None:
    init(capsys, "bob")
    code, out, err = with_bob_running(home, lambda alice, bob: run(capsys, "trust", "approve", alice.wallet))
    assert (code, out) == (1, "")
    assert "set its tier without one with `coworker trust set 0x" in err and "set_trust" not in err


def test_an_unknown_network_from_the_environment_is_explained_without_python(
        home: Path, capsys: Capture, monkeypatch: pytest.MonkeyPatch) -> None:
    init(capsys, "bob")
    monkeypatch.setenv("COWORKER_NETWORK", "mainnet")
    code, _, err = run(capsys, "connect", "0x" + "ab" * 20, "--agent", "bob")
    assert (code, err) == (1, "coworker: error: unknown network 'mainnet' (from COWORKER_NETWORK): use one of "
                              "local, dev, production (change or unset COWORKER_NETWORK)\n")


# ---- tiers ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [("trust", "set", "0x" + "ef" * 20, "superuser"),
                                  ("trust", "approve", "0x" + "ef" * 20, "--tier", "superuser"),
                                  ("trust", "request", "0x" + "ef" * 20, "--tier", "superuser")])
def test_an_invalid_tier_lists_the_valid_ones(argv: tuple[str, ...], capsys: Capture) -> None:
    init(capsys, "alice")
    code, out, err = run(capsys, *argv)
    assert (code, out, err) == (1, "", f"coworker: error: invalid tier 'superuser': {TIERS}\n")


@pytest.mark.parametrize("value", ["superuser", 7, "4", True, None])
def test_an_invalid_tier_is_refused_by_the_library_with_the_same_words(value: Any, tmp_path: Path) -> None:
    agent = AsyncAgent("a", network=MemoryNetwork(), data_dir=tmp_path / "a")
    try:
        with pytest.raises(ConfigurationError) as error:
            agent.set_trust("0x" + "ab" * 20, value)
        assert str(error.value) == f"invalid tier {value!r}: {TIERS}"
    finally:
        agent.close()


# ---- a trust request to oneself -------------------------------------------------------------------------------


def test_a_trust_request_to_the_agents_own_wallet_is_refused_before_anything_is_sent(capsys: Capture) -> None:
    wallet = init(capsys, "bob")
    code, out, err = run(capsys, "trust", "request", wallet.lower(), "--agent", "bob")
    # the agent did not start: on "local" with no devnet and no autostart (the tests' setting) it would say so
    assert (code, out) == (1, "")
    assert err == (f"coworker: error: {wallet} is agent bob's own wallet: an agent does not ask itself for "
                   f"trust\n")


async def test_request_trust_to_our_own_wallet_raises_at_once(tmp_path: Path) -> None:
    agent = AsyncAgent("a", network=MemoryNetwork(), data_dir=tmp_path / "a")
    try:
        with pytest.raises(ConfigurationError, match="is this agent's own wallet: an agent does not ask itself"):
            await agent.request_trust(agent.wallet.lower())
        assert not agent.running  # refused before the agent started, so before anything was sent
    finally:
        agent.close()
