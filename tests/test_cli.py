"""The ``coworker`` command, run in-process: ``main([...])`` with a temporary ``COWORKER_HOME``."""

from __future__ import annotations

import asyncio
import json
import os
import runpy
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import coworker
from coworker import AsyncAgent, MemoryNetwork, TrustTier
from coworker.cli.main import main

Capture = pytest.CaptureFixture[str]


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("COWORKER_HOME", str(tmp_path))
    for name in ("COWORKER_AGENT", "COWORKER_NETWORK", "COWORKER_PASSPHRASE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def run(capsys: Capture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def init(capsys: Capture, name: str, *extra: str) -> str:
    """Create an agent and return its wallet."""
    code, out, err = run(capsys, "init", "--name", name, *extra)
    assert code == 0, err
    return out.split("wallet:")[1].split()[0]


def status(capsys: Capture, *extra: str) -> dict[str, Any]:
    code, out, err = run(capsys, "status", "--json", *extra)
    assert code == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


def pending_request_from_bob(home: Path, alice: str = "alice") -> str:
    """Run ``alice`` and a peer ``bob`` (kept outside COWORKER_HOME's agents) on a MemoryNetwork until bob's
    request for INTERNAL is pending at alice; both are stopped and closed afterwards. Returns bob's wallet."""
    net = MemoryNetwork()
    a = AsyncAgent(alice, network=net)
    b = AsyncAgent("bob", network=net, data_dir=home / "elsewhere" / "bob")

    async def ask() -> str:
        await a.start()
        try:
            return await b.request_trust(a.wallet, TrustTier.INTERNAL, "review my code")
        finally:
            await b.stop()
            await a.stop()

    try:
        assert asyncio.run(ask()) == "pending"
    finally:
        a.close()
        b.close()
    return b.wallet


# ---- init -----------------------------------------------------------------------------------------------------


def test_init_creates_a_wallet_with_mode_0600(home: Path, capsys: Capture) -> None:
    code, out, _ = run(capsys, "init", "--name", "alice", "--network", "dev")
    assert code == 0
    data_dir = home / "agents" / "alice"
    key = data_dir / "wallet.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert json.loads((data_dir / "config.json").read_text()) == {"name": "alice", "network": "dev"}
    wallet = out.split("wallet:")[1].split()[0]
    assert wallet.startswith("0x") and len(wallet) == 42
    assert str(data_dir) in out
    assert "network:   dev" in out


def test_init_twice_keeps_the_same_wallet(home: Path, capsys: Capture) -> None:
    first = init(capsys, "alice")
    key = (home / "agents" / "alice" / "wallet.key").read_text()
    code, out, _ = run(capsys, "init", "--name", "alice")
    assert code == 0
    assert "already exists" in out
    assert out.split("wallet:")[1].split()[0] == first
    assert (home / "agents" / "alice" / "wallet.key").read_text() == key


def test_init_again_with_another_network_changes_only_the_network(home: Path, capsys: Capture) -> None:
    wallet = init(capsys, "alice")
    code, out, _ = run(capsys, "init", "--name", "alice", "--network", "production")
    assert code == 0 and "network is now production" in out
    assert out.split("wallet:")[1].split()[0] == wallet
    assert status(capsys)["network"] == "production"


def test_init_rejects_an_unknown_network(home: Path, capsys: Capture) -> None:
    code, _, err = run(capsys, "init", "--name", "alice", "--network", "mainnet")
    assert code == 2
    assert "invalid choice: 'mainnet'" in err
    assert not (home / "agents" / "alice").exists()


def test_init_rejects_an_invalid_name(home: Path, capsys: Capture) -> None:
    code, _, err = run(capsys, "init", "--name", "../evil")
    assert code == 1
    assert err.startswith("coworker: error: invalid agent name")
    assert not (home / "evil").exists()


def test_init_with_coworker_passphrase_writes_an_encrypted_keystore(
        home: Path, capsys: Capture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COWORKER_PASSPHRASE", "correct horse battery staple")
    wallet = init(capsys, "vault")
    data_dir = home / "agents" / "vault"
    keystore = data_dir / "keystore.json"
    assert stat.S_IMODE(keystore.stat().st_mode) == 0o600
    assert not (data_dir / "wallet.key").exists()
    assert json.loads(keystore.read_text())["crypto"]["kdf"] == "scrypt"
    # Reading the agent later needs no passphrase: the address is in the keystore.
    monkeypatch.delenv("COWORKER_PASSPHRASE")
    report = status(capsys)
    assert report["wallet"] == wallet
    assert report["key"] == {"kind": "encrypted", "path": str(keystore)}


def test_init_encrypt_refuses_passphrases_that_differ(
        home: Path, capsys: Capture, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter(["first try", "second try"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    code, _, err = run(capsys, "init", "--name", "vault", "--encrypt")
    assert code == 1
    assert err == "coworker: error: the passphrases differ; nothing was created\n"
    assert not (home / "agents" / "vault").exists()


def test_init_takes_no_passphrase_flag(capsys: Capture) -> None:
    code, _, err = run(capsys, "init", "--name", "vault", "--passphrase", "secret")
    assert code == 2
    assert "unrecognized arguments" in err


# ---- choosing the agent ---------------------------------------------------------------------------------------


def test_unknown_agent_is_a_clear_error(home: Path, capsys: Capture) -> None:
    init(capsys, "alice")
    code, out, err = run(capsys, "--agent", "nobody", "status")
    assert code == 1
    assert out == ""
    assert err.startswith("coworker: error: no agent named 'nobody'")
    assert "agents: alice" in err and "coworker init --name nobody" in err
    assert "Traceback" not in err
    assert not (home / "agents" / "nobody").exists()


def test_no_agent_at_all_says_to_run_init(capsys: Capture) -> None:
    code, _, err = run(capsys, "status")
    assert code == 1
    assert "coworker init --name NAME" in err


def test_several_agents_need_a_choice(capsys: Capture, monkeypatch: pytest.MonkeyPatch) -> None:
    alice, bob = init(capsys, "alice"), init(capsys, "bob")
    code, _, err = run(capsys, "status")
    assert code == 1
    assert "several agents" in err and "alice, bob" in err
    assert status(capsys, "--agent", "bob")["wallet"] == bob  # after the subcommand
    code, out, _ = run(capsys, "--agent", "alice", "status", "--json")  # before it
    assert json.loads(out)["wallet"] == alice
    monkeypatch.setenv("COWORKER_AGENT", "bob")
    assert status(capsys)["wallet"] == bob


def test_the_only_agent_is_chosen_without_asking(capsys: Capture) -> None:
    wallet = init(capsys, "alice")
    assert status(capsys)["wallet"] == wallet


# ---- status ---------------------------------------------------------------------------------------------------


def test_status_reports_the_network_and_its_source(
        home: Path, capsys: Capture, monkeypatch: pytest.MonkeyPatch) -> None:
    wallet = init(capsys, "alice", "--network", "dev")
    report = status(capsys)
    assert (report["name"], report["wallet"]) == ("alice", wallet)
    assert (report["network"], report["network_source"]) == ("dev", "config.json")
    assert report["data_dir"] == str(home / "agents" / "alice")
    assert report["key"]["kind"] == "plain"
    assert report["running"] is False and report["pid"] is None
    assert report["trusted_peers"] == 0 and report["pending_trust_requests"] == 0
    assert report["calls"]["made"] == 0 and report["calls"]["served"] == 0
    assert report["skills"] is None

    monkeypatch.setenv("COWORKER_NETWORK", "production")
    report = status(capsys)
    assert (report["network"], report["network_source"]) == ("production", "COWORKER_NETWORK")

    code, out, _ = run(capsys, "status")
    assert code == 0
    assert "network:   production (from COWORKER_NETWORK)" in out
    assert f"wallet:    {wallet}" in out
    assert "running:   no" in out


def test_status_shows_a_running_agent_its_calls_and_skills(home: Path, capsys: Capture) -> None:
    init(capsys, "alice")
    net = MemoryNetwork()
    alice = AsyncAgent("alice", network=net)
    caller = AsyncAgent("caller", network=net, data_dir=home / "elsewhere" / "caller")

    @alice.skill(description="Echo the text back.", min_trust_tier=TrustTier.INTERNAL, version="2.1.0")
    def echo(text: str) -> str:
        return text

    async def scenario() -> dict[str, Any]:
        await alice.start()
        try:
            alice.set_trust(caller.wallet, TrustTier.INTERNAL)
            assert await caller.call(alice.wallet, "echo", {"text": "hi"}) == "hi"
            alice.store.flush()
            return await asyncio.to_thread(status, capsys)  # the CLI, while the agent runs and answers it
        finally:
            await caller.stop()
            await alice.stop()

    try:
        report = asyncio.run(scenario())
    finally:
        alice.close()
        caller.close()
    assert report["running"] is True
    assert report["pid"] is not None and report["pid"] > 0
    assert report["last_network"] == "memory"
    assert report["trusted_peers"] == 1
    assert report["calls"]["served"] == 1 and report["calls"]["served_by_status"] == {"completed": 1}
    assert [card["name"] for card in report["skills"]] == ["echo"]

    code, out, _ = run(capsys, "status")
    assert "running:   no" in out
    assert "1 served (1 completed)" in out
    assert "1 published on the last run: echo" in out

    code, out, _ = run(capsys, "skills")
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["NAME", "MIN", "TIER", "VERSION", "PEERS", "DESCRIPTION"]
    assert row.split() == ["echo", "internal", "(2)", "2.1.0", "visible", "Echo", "the", "text", "back."]
    code, out, _ = run(capsys, "skills", "--json")
    assert json.loads(out)[0]["min_trust_tier"] == 2


def test_skills_before_the_first_run_says_so(capsys: Capture) -> None:
    init(capsys, "alice")
    code, out, _ = run(capsys, "skills")
    assert code == 0 and "has not run yet" in out
    code, out, _ = run(capsys, "skills", "--json")
    assert json.loads(out) == []


def test_tasks_and_task_show_calls_made_and_their_receipts(home: Path, capsys: Capture) -> None:
    init(capsys, "alice")
    net = MemoryNetwork()
    a = AsyncAgent("alice", network=net)
    b = AsyncAgent("bob", network=net, data_dir=home / "elsewhere" / "bob")

    @b.skill()
    def echo(text: str) -> str:
        return text

    async def calls() -> tuple[str, str]:
        b.set_trust(a.wallet, TrustTier.KNOWN)
        async with a, b:
            done = await a.request(b.wallet, "echo", {"text": "hi"})
            await a.wait(done)
            refused = await a.request(b.wallet, "missing")
            with pytest.raises(coworker.SkillNotFound):
                await a.wait(refused)
        return done, refused

    done, refused = asyncio.run(calls())
    for agent in (a, b):
        agent.close()
    code, out, err = run(capsys, "tasks")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["TASK", "DIR", "STATE", "SKILL", "MS", "PEER"]
    assert [line.split()[:4] for line in lines[1:]] == [[refused, "out", "rejected", "missing"],
                                                        [done, "out", "completed", "echo"]]
    code, out, _ = run(capsys, "tasks", "--state", "completed", "--json")
    assert [t["task_id"] for t in json.loads(out)] == [done]
    code, out, _ = run(capsys, "task", done)
    assert code == 0 and 'result    "hi"' in out and "signature verifies" in out and f"signed by {b.wallet}" in out
    code, out, _ = run(capsys, "task", refused, "--json")
    assert json.loads(out)["error"]["code"] == "SKILL_NOT_FOUND"
    code, _, err = run(capsys, "task", "0" * 32)
    assert code == 1 and "no task" in err
    code, _, err = run(capsys, "tasks", "--state", "finished")
    assert code == 1 and "not a task state" in err


# ---- trust ----------------------------------------------------------------------------------------------------


def test_trust_approve_grants_a_pending_request(home: Path, capsys: Capture) -> None:
    init(capsys, "alice")
    bob = pending_request_from_bob(home)

    code, out, _ = run(capsys, "trust", "list")
    assert code == 0
    assert "pending trust requests (1):" in out
    assert f"{bob}  asks for internal (2)" in out and "'review my code'" in out
    assert status(capsys)["pending_trust_requests"] == 1

    code, out, err = run(capsys, "trust", "approve", bob.lower(), "--tier", "known")
    assert code == 0, err
    assert f"approved {bob} at tier known (1)" in out
    assert "not running" in out

    code, out, _ = run(capsys, "trust", "list", "--json")
    listing = json.loads(out)
    assert listing["pending"] == []
    assert listing["trusted"] == [{"wallet": bob, "name": "", "tier": "known", "tier_number": 1}]
    report = status(capsys)
    assert (report["trusted_peers"], report["pending_trust_requests"]) == (1, 0)


def test_trust_approve_defaults_to_the_tier_asked_for(home: Path, capsys: Capture) -> None:
    init(capsys, "alice")
    bob = pending_request_from_bob(home)
    code, out, _ = run(capsys, "trust", "approve", bob)
    assert code == 0 and "at tier internal (2)" in out


def test_trust_deny_drops_a_pending_request(home: Path, capsys: Capture) -> None:
    init(capsys, "alice")
    bob = pending_request_from_bob(home)
    code, out, _ = run(capsys, "trust", "deny", bob)
    assert code == 0 and f"denied the trust request from {bob}" in out
    listing = json.loads(run(capsys, "trust", "list", "--json")[1])
    assert listing == {"trusted": [], "pending": []}


def test_trust_approve_without_a_request_is_an_error(capsys: Capture) -> None:
    init(capsys, "alice")
    wallet = "0x" + "ab" * 20
    code, _, err = run(capsys, "trust", "approve", wallet)
    assert code == 1
    assert err.startswith("coworker: error: no pending trust request from 0x")


def test_trust_set_changes_a_tier_up_and_down(capsys: Capture) -> None:
    init(capsys, "alice")
    wallet = "0x" + "cd" * 20
    code, out, _ = run(capsys, "trust", "set", wallet, "privileged")
    assert code == 0 and "untrusted (0) -> privileged (3)" in out
    code, out, _ = run(capsys, "trust", "set", wallet, "1")
    assert code == 0 and "privileged (3) -> known (1)" in out
    listing = json.loads(run(capsys, "trust", "list", "--json")[1])
    assert [(p["tier"], p["tier_number"]) for p in listing["trusted"]] == [("known", 1)]


def test_trust_set_rejects_an_unknown_tier(capsys: Capture) -> None:
    init(capsys, "alice")
    code, out, err = run(capsys, "trust", "set", "0x" + "ef" * 20, "friend")
    assert code == 1
    assert out == ""
    assert err == "coworker: error: invalid tier 'friend': use untrusted, known, internal, privileged or 0-3\n"


def test_a_bad_wallet_address_is_a_clear_error(capsys: Capture) -> None:
    init(capsys, "alice")
    code, _, err = run(capsys, "trust", "set", "0xnope", "known")
    assert code == 1
    assert err.startswith("coworker: error: not a wallet address: '0xnope'")


# ---- serve ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["Agent", "AsyncAgent"])
def test_serve_prints_its_banner_once_and_stops_on_ctrl_c(kind: str, home: Path, tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(f"from coworker import {kind}, MemoryNetwork\n\nagent = {kind}('ann', network=MemoryNetwork())\n")
    env = {**os.environ, "COWORKER_HOME": str(home)}
    with subprocess.Popen([sys.executable, "-m", "coworker", "serve", str(app)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env) as serving:
        assert serving.stdout is not None
        lines = [serving.stdout.readline()]
        while lines[-1] and "Ctrl-C" not in lines[-1]:
            lines.append(serving.stdout.readline())
        serving.send_signal(signal.SIGINT)
        out, err = serving.communicate(timeout=30)
    assert serving.returncode == 0, err
    assert "".join(lines).startswith("serving ann (0x")
    assert lines[-1] == "Ctrl-C stops it (or `coworker bridge stop --agent ann` from another shell)\n"
    assert "serving" not in out and "Ctrl-C" not in out  # said once
    assert "Traceback" not in err


# ---- the rest ----------------------------------------------------------------------------------------


def test_version_prints_the_package_version(capsys: Capture) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out == f"coworker {coworker.__version__}\n"


def test_no_command_prints_the_help(capsys: Capture) -> None:
    code, _, err = run(capsys)
    assert code == 2
    assert "usage: coworker" in err and "init" in err and "demo" in err


def test_the_devnet_and_setup_commands_are_wired(capsys: Capture) -> None:
    code, out, _ = run(capsys, "devnet", "--help")
    assert code == 0
    assert all(action in out for action in ("start", "stop", "status", "run"))
    code, out, _ = run(capsys, "setup", "--help")
    assert code == 0 and "--force" in out


def test_python_dash_m_coworker_runs_the_same_command(capsys: Capture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["coworker", "--version"])
    sys.modules.pop("coworker.__main__", None)
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("coworker", run_name="__main__")
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"coworker {coworker.__version__}\n"


def test_status_counts_the_peers_that_speak_coworker_1_0(home: Path, capsys: Capture) -> None:
    init(capsys, "alice")
    agent = AsyncAgent("alice")
    agent.store.set_peer_protocol("0x" + "1" * 40, "1.0", 1.0)
    agent.store.set_peer_protocol("0x" + "2" * 40, "2", 1.0)
    agent.store.set_peer_protocol("0x" + "3" * 40, "2", 1.0)
    agent.close()
    assert status(capsys)["peers_by_protocol"] == {"1.0": 1, "2": 2}
    code, out, _ = run(capsys, "status")
    assert code == 0 and "2 peers on protocol v2, 1 on CoWorker 1.0" in out
