"""Agent-level behaviour: trust flows, identity per agent, persistence, errors, the blocking facade."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import stat
from pathlib import Path
from typing import Any

import pytest

import coworker
from coworker import Agent, AsyncAgent, MemoryNetwork, TrustTier


async def test_auto_accept_grants_up_to_the_maximum_tier_only(tmp_path: Path) -> None:
    net = MemoryNetwork()
    async with AsyncAgent("a", network=net, data_dir=tmp_path / "a", auto_accept_trust=True) as a, \
            AsyncAgent("b", network=net, data_dir=tmp_path / "b") as b:
        assert await b.request_trust(a.wallet, TrustTier.INTERNAL, reason="more") == "pending"
        assert await b.request_trust(a.wallet, TrustTier.KNOWN) == "granted"
        assert a.trust_tier(b.wallet) == TrustTier.KNOWN
        assert a.trust_requests() == []  # the grant answered the request


async def test_a_request_never_lowers_an_existing_tier(tmp_path: Path) -> None:
    net = MemoryNetwork()
    async with AsyncAgent("a", network=net, data_dir=tmp_path / "a") as a, \
            AsyncAgent("b", network=net, data_dir=tmp_path / "b") as b:
        a.set_trust(b.wallet, TrustTier.INTERNAL)
        assert await b.request_trust(a.wallet, TrustTier.KNOWN) == "granted"
        assert a.trust_tier(b.wallet) == TrustTier.INTERNAL


async def test_approval_and_denial_reach_the_requester(tmp_path: Path) -> None:
    net = MemoryNetwork()
    async with AsyncAgent("a", network=net, data_dir=tmp_path / "a") as a, \
            AsyncAgent("b", network=net, data_dir=tmp_path / "b") as b, \
            AsyncAgent("c", network=net, data_dir=tmp_path / "c") as c:
        assert await b.request_trust(a.wallet) == "pending"
        assert await c.request_trust(a.wallet) == "pending"
        with pytest.raises(coworker.ConfigurationError, match="invalid tier 'admin': use untrusted"):
            await a.approve_trust(b.wallet, "admin")
        assert {r.wallet for r in a.trust_requests()} == {b.wallet, c.wallet}  # a bad tier loses no request
        await a.deny_trust(c.wallet)
        assert await a.approve_trust(b.wallet, TrustTier.INTERNAL) == TrustTier.INTERNAL
        await b.ping(a.wallet)  # the notices travelled before this round trip
        await c.ping(a.wallet)
        assert b.store.standing(a.wallet) == ("granted", TrustTier.INTERNAL)
        assert c.store.standing(a.wallet) == ("denied", TrustTier.UNTRUSTED)
        assert a.trust_tier(c.wallet) == TrustTier.UNTRUSTED
        with pytest.raises(coworker.AccessDenied):
            await c.call(a.wallet, "anything")
        with pytest.raises(coworker.ConfigurationError, match="no pending trust request"):
            await a.approve_trust(c.wallet)


def test_two_agents_on_one_machine_have_their_own_keys(home: Path) -> None:
    a, b = AsyncAgent("one"), AsyncAgent("two")
    assert a.wallet != b.wallet
    for agent in (a, b):
        key = agent.data_dir / "wallet.key"
        assert agent.data_dir == home / "agents" / agent.name
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert stat.S_IMODE((agent.data_dir / "coworker.db").stat().st_mode) == 0o600
        assert agent.wallet.lower() not in key.read_text()  # the file holds the key, not the address
        agent.close()
    assert AsyncAgent("one").wallet == a.wallet


def test_passphrase_makes_an_encrypted_v3_keystore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COWORKER_PASSPHRASE", "correct horse")
    agent = AsyncAgent("enc", data_dir=tmp_path / "enc")
    keystore = tmp_path / "enc" / "keystore.json"
    assert keystore.exists() and not (tmp_path / "enc" / "wallet.key").exists()
    assert stat.S_IMODE(keystore.stat().st_mode) == 0o600
    assert '"crypto"' in keystore.read_text()
    agent.close()
    monkeypatch.delenv("COWORKER_PASSPHRASE")
    locked = AsyncAgent("enc", data_dir=tmp_path / "enc")  # the address is readable without the passphrase
    assert locked.wallet == agent.wallet
    locked.close()
    with pytest.raises(coworker.IdentityError, match="wrong passphrase"):
        AsyncAgent("enc", data_dir=tmp_path / "enc", passphrase="wrong")


async def test_starting_an_encrypted_agent_without_its_passphrase_is_a_clear_error(tmp_path: Path) -> None:
    AsyncAgent("enc", data_dir=tmp_path / "enc", passphrase="pw").close()
    agent = AsyncAgent("enc", data_dir=tmp_path / "enc", network=MemoryNetwork())
    with pytest.raises(coworker.IdentityError, match="COWORKER_PASSPHRASE"):
        await agent.start()
    agent.close()


async def test_one_agent_directory_serves_one_process_at_a_time(tmp_path: Path) -> None:
    first = AsyncAgent("a", network=MemoryNetwork(), data_dir=tmp_path / "a")
    second = AsyncAgent("a", network=MemoryNetwork(), data_dir=tmp_path / "a")
    async with first:
        with pytest.raises(coworker.StoreError, match="already running"):
            await second.start()
    await second.start()
    await second.stop()
    first.close()
    second.close()


def test_addresses_compare_case_insensitively(tmp_path: Path) -> None:
    agent = AsyncAgent("a", data_dir=tmp_path / "a")
    peer = "0x" + "ab" * 20
    agent.set_trust(peer.upper().replace("0X", "0x"), TrustTier.INTERNAL)
    assert agent.trust_tier(peer) == TrustTier.INTERNAL
    with pytest.raises(coworker.ConfigurationError, match="not a wallet address"):
        agent.trust_tier("0xB0B_WALLET_ADDRESS")
    agent.close()


@pytest.mark.parametrize("name", ["", "../escape", "a/b", ".hidden", "x" * 65])
def test_bad_agent_names_are_refused(name: str) -> None:
    with pytest.raises(coworker.ConfigurationError, match="invalid agent name"):
        AsyncAgent(name)


async def test_named_networks_say_what_is_missing_and_unknown_names_are_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = AsyncAgent("a", data_dir=tmp_path / "a")
    assert agent.network_name == "local"
    with pytest.raises(coworker.TransportError, match="local XMTP node is not running"):
        await agent.start()  # this test runs no devnet, and tests never start one in the background
    assert not agent.running
    monkeypatch.setenv("COWORKER_NETWORK", "dev")
    with pytest.raises(coworker.ConfigurationError, match="COWORKER_LOCAL_ONLY"):
        await agent.start()
    monkeypatch.setenv("COWORKER_NETWORK", "mainnet")
    with pytest.raises(coworker.ConfigurationError, match="unknown network 'mainnet'"):
        await agent.start()
    agent.close()


async def test_calls_are_recorded_on_both_sides_with_sizes(pair: tuple[AsyncAgent, AsyncAgent]) -> None:
    alice, bob = pair
    await bob.call(alice.wallet, "echo", {"text": "hi"})
    (made,) = bob.calls()
    (served,) = alice.calls()
    assert made.id == served.id  # the call's id is the request's message id
    assert (made.direction, made.status, made.skill, made.peer) == ("out", "completed", "echo", alice.wallet)
    assert (served.direction, served.status, served.peer) == ("in", "completed", bob.wallet)
    assert made.request_bytes == served.request_bytes > 0
    assert made.response_bytes == served.response_bytes > 0


async def test_input_must_be_a_json_object(pair: tuple[AsyncAgent, AsyncAgent]) -> None:
    alice, bob = pair
    with pytest.raises(coworker.ConfigurationError, match="JSON object"):
        await bob.call(alice.wallet, "echo", ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(coworker.ConfigurationError, match="JSON"):
        await bob.call(alice.wallet, "echo", {"text": object()})


def test_blocking_agent_starts_on_first_use_and_serves_until_stopped(tmp_path: Path,
                                                                     blocking_agents: list[Any]) -> None:
    import threading

    net = MemoryNetwork()
    server = Agent("server", network=net, data_dir=tmp_path / "s")
    client = Agent("client", network=net, data_dir=tmp_path / "c")
    blocking_agents.append(client)
    server.add_skill(lambda text: text.upper(), name="shout")
    server.set_trust(client.wallet, TrustTier.KNOWN)
    serving = threading.Thread(target=server.serve)
    serving.start()
    try:
        assert client.call(server.wallet, "shout", {"text": "hi"}, timeout=10) == "HI"
        assert not client.running or client.running  # started implicitly by call()
        assert client.ping(server.wallet) > 0
    finally:
        server.stop()
        serving.join(timeout=10)
    assert not serving.is_alive()
    server.close()


class CtrlCAfter(io.StringIO):
    """A stdout that sends this process SIGINT once ``marker`` was written: a user who reads the banner and
    presses Ctrl-C."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.sent = False

    def write(self, text: str) -> int:
        written = super().write(text)
        if not self.sent and self.marker in self.getvalue():
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)
        return written


def test_serve_says_who_serves_on_which_network_and_how_to_stop_it(tmp_path: Path) -> None:
    agent = Agent("alice", network=MemoryNetwork(), data_dir=tmp_path / "alice")
    agent.add_skill(lambda text: text, name="echo")
    stdout = CtrlCAfter("Ctrl-C")
    with contextlib.redirect_stdout(stdout):
        agent.serve()  # returns on the SIGINT
    said = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", stdout.getvalue())  # 8090, or the next free port
    assert said == (f"serving alice ({agent.wallet}) on memory\nskills: echo\n"
                    f"dashboard: http://127.0.0.1:PORT (`coworker dashboard --agent alice` logs in)\nCtrl-C stops it\n")
    assert not agent.running
    agent.close()


async def test_async_serve_says_it_once_and_names_the_cli_command_that_stops_it(home: Path) -> None:
    agent = AsyncAgent("alice", network=MemoryNetwork())  # in $COWORKER_HOME/agents, where the CLI finds it
    stdout = CtrlCAfter("Ctrl-C")
    with contextlib.redirect_stdout(stdout):
        await agent.serve()
    assert re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", stdout.getvalue()).splitlines() == [
        f"serving alice ({agent.wallet}) on memory",
        "skills: none",
        "dashboard: http://127.0.0.1:PORT (`coworker dashboard --agent alice` logs in)",
        "Ctrl-C stops it (or `coworker bridge stop --agent alice` from another shell)",
    ]
    assert not agent.running
    agent.close()


def test_keys_never_appear_in_logs_or_repr(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    agent = AsyncAgent("a", data_dir=tmp_path / "a")
    key = (tmp_path / "a" / "wallet.key").read_text().strip()
    assert key.removeprefix("0x") not in caplog.text
    assert key.removeprefix("0x") not in repr(agent)
    assert "0x" + key.removeprefix("0x") not in os.environ.values()
    agent.close()
