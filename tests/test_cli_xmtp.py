"""The network commands of ``coworker``, run in-process (``main([...])``) for real over XMTP through the devnet.

One callee, ``alice``, serves in the background for the whole module (``coworker bridge start APP.py``) under a
COWORKER_HOME shared by the tests that talk to her; it is restarted if a test stopped it, and stopped at the end.
Callers (``bob``, ``carol``) are created with ``coworker init``; each of their commands runs the caller in this
process for its length, with its own sidecar. Tests that need no network use their own COWORKER_HOME.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from coworker import ConfigurationError
from coworker._process import wait_exit
from coworker.agent.invites import INVITE_PREFIX, read_invite
from coworker.cli.main import main
from coworker.cli.network import bridge_status
from coworker.devnet import DevnetServer

from .test_cli import init, run

pytestmark = pytest.mark.integration

Capture = pytest.CaptureFixture[str]

APP = '''
from coworker import Agent

agent = Agent("alice")


@agent.skill()
def summarize(text: str, max_words: int = 50) -> dict:
    """Summarize text: its first words."""
    words = text.split()
    return {"summary": " ".join(words[:max_words]), "word_count": len(words)}
'''


def exited(pid: int, timeout: float = 15.0) -> bool:
    """True once ``pid`` has exited (waits on a pidfd, at most ``timeout`` seconds)."""
    return wait_exit(pid, timeout)


def node_children() -> list[int]:
    """Live ``node`` processes (sidecars) that are children of this process."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm, _, rest = stat.partition("(")[2].rpartition(")")
        state, ppid = rest.split()[:2]
        if comm == "node" and int(ppid) == os.getpid() and state != "Z":
            found.append(int(entry.name))
    return found


# ---- alice, in the background -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Alice:
    wallet: str
    pid: int
    app: Path
    status: dict[str, Any]


@pytest.fixture(scope="module")
def shared_home(xmtp_node: DevnetServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The COWORKER_HOME of alice and her callers; alice is stopped (and must exit) at the end of the module."""
    home = tmp_path_factory.mktemp("net") / "home"
    yield home
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COWORKER_HOME", str(home))
        status = bridge_status("alice")
        if status is not None:
            assert main(["bridge", "stop", "--agent", "alice"]) == 0
            assert exited(status["pid"]), f"alice (pid {status['pid']}) is still running"


@pytest.fixture
def alice(shared_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capture) -> Alice:
    """Alice serving ``summarize`` (default tier) in the background; started on first use."""
    monkeypatch.setenv("COWORKER_HOME", str(shared_home))
    app = shared_home.parent / "alice_app.py"
    status = bridge_status("alice")
    if status is None:
        app.write_text(APP)
        code, out, err = run(capsys, "bridge", "start", str(app), "--agent", "alice")
        assert code == 0, out + err
        status = bridge_status("alice")
        assert status is not None
    return Alice(status["wallet"], status["pid"], app, status)


@pytest.fixture
def carol(alice: Alice, capsys: Capture) -> str:
    """A caller that alice trusts at KNOWN (set in her database while she runs); its wallet."""
    wallet = init(capsys, "carol")
    code, out, err = run(capsys, "trust", "set", wallet, "known", "--agent", "alice")
    assert code == 0, err
    assert f"the running agent (pid {alice.pid}) applies this" in out
    return wallet


# ---- coworker demo --------------------------------------------------------------------------------------------


def test_demo_runs_first_contact_between_two_processes_over_the_devnet(xmtp_node: DevnetServer, home: Path,
                                                                      capsys: Capture) -> None:
    messages = xmtp_node.status().counts.messages
    code, out, err = run(capsys, "demo")
    assert code == 0, out + err
    lines = out.splitlines()
    assert "researcher sees 0 skills: assistant does not trust it yet" in out
    assert "assistant answers 'pending'" in out
    assert "5. assistant's owner approves researcher" in out
    assert "researcher now holds tier known at assistant" in out
    assert "researcher sees 2 skills: summarize, translate" in out
    assert '"word_count": 19' in out
    assert '"translation": "bonjour monde"' in out
    assert "step research on researcher: completed" in out
    assert "step summarize on assistant: completed" in out and "fed with research's output" in out
    assert "completed (2/2 steps)" in out
    steps = [line for line in lines if re.match(r"\d+\. ", line)]
    assert len(steps) == 9
    assert all(line.endswith(" ms") for line in steps), steps
    assert lines[-1] == "first contact and collaboration over XMTP: OK"

    agents = dict(re.findall(r"^    (assistant|researcher) +0x[0-9a-fA-F]{40}  pid (\d+)", out, re.MULTILINE))
    sidecars = re.findall(r"sidecar pid (\d+)", out)
    assert len(agents) == 2 and len(sidecars) == 2, out
    assert agents["assistant"] != agents["researcher"]
    assert str(os.getpid()) not in agents.values()
    for pid in [*agents.values(), *sidecars]:
        assert exited(int(pid), 0), f"process {pid} of the demo is still running"
    assert not (home / "agents").exists()
    assert xmtp_node.status().counts.messages >= messages + 11  # 11 requests and replies, at least


# ---- invites --------------------------------------------------------------------------------------------------


def tamper(code: str) -> str:
    """The code with one character in the middle of its base64 payload changed."""
    middle = len(INVITE_PREFIX) + (len(code) - len(INVITE_PREFIX)) // 2
    return code[:middle] + ("A" if code[middle] != "A" else "B") + code[middle + 1:]


def reencoded(code: str, **changes: str) -> str:
    """The code's JSON with some fields changed but the old signature kept."""
    payload = code[len(INVITE_PREFIX):]
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body.update(changes)
    return INVITE_PREFIX + base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")


def test_an_invite_gives_back_the_wallet_name_and_network(capsys: Capture) -> None:
    wallet = init(capsys, "alice")
    code, out, err = run(capsys, "invite", "--agent", "alice")
    assert code == 0, err
    invite = out.strip()
    assert invite.startswith(INVITE_PREFIX) and "\n" not in invite
    assert "coworker connect" in err
    assert read_invite(invite) == {"wallet": wallet, "name": "alice", "network": "local"}

    code, out, err = run(capsys, "invite", "--agent", "alice", "--json")
    assert code == 0, err
    assert read_invite(json.loads(out)["invite"]) == {"wallet": wallet, "name": "alice", "network": "local"}


def test_an_altered_invite_is_refused(capsys: Capture) -> None:
    init(capsys, "alice")
    invite = run(capsys, "invite", "--agent", "alice")[1].strip()
    for altered, reason in ((tamper(invite), r"damaged|altered"), (reencoded(invite, name="mallory"), "altered")):
        with pytest.raises(ConfigurationError, match=reason):
            read_invite(altered)
        code, out, err = run(capsys, "connect", altered, "--agent", "alice")
        assert (code, out) == (1, "")
        assert re.match(rf"coworker: error: the invite code .*({reason})", err), err
    with pytest.raises(ConfigurationError, match="not an invite code"):
        read_invite("0x" + "ab" * 20)


def test_connect_refuses_an_invite_for_another_network_and_names_both(capsys: Capture) -> None:
    init(capsys, "bob")
    init(capsys, "dave", "--network", "dev")
    invite = run(capsys, "invite", "--agent", "dave")[1].strip()
    assert read_invite(invite)["network"] == "dev"
    code, out, err = run(capsys, "connect", invite, "--agent", "bob")
    assert (code, out) == (1, "")
    assert "the invite is for the 'dev' network but this agent is on 'local'" in err
    assert "--network dev" in err


# ---- a callee in the background, callers in this process ------------------------------------------------------


def test_bridge_status_shows_the_running_agent_its_inbox_and_sidecar(alice: Alice, capsys: Capture) -> None:
    code, text, err = run(capsys, "bridge", "status", "--agent", "alice")
    assert code == 0, err
    code, out, err = run(capsys, "bridge", "status", "--agent", "alice", "--json")
    assert code == 0, err
    status = json.loads(out)
    xmtp = status["xmtp"]
    assert status["running"] is True and status["name"] == "alice"
    assert (status["pid"], status["wallet"], status["network"]) == (alice.pid, alice.wallet, "local")
    assert status["skills"] == ["summarize"]
    assert xmtp["inboxId"] and xmtp["installationId"] and xmtp["env"] == "local"
    assert not exited(xmtp["pid"], 0), "the sidecar is not running"

    assert f"agent alice: running, pid {alice.pid}, network local" in text
    assert f"wallet:       {alice.wallet}" in text
    assert f"XMTP inbox:   {xmtp['inboxId']}" in text
    assert f"installation: {xmtp['installationId']}" in text
    assert f"sidecar:      pid {xmtp['pid']}," in text


def test_first_contact_trust_request_approval_and_a_call(alice: Alice, capsys: Capture) -> None:
    bob = init(capsys, "bob")
    invite = run(capsys, "invite", "--agent", "alice")[1].strip()

    code, out, err = run(capsys, "connect", invite, "--agent", "bob")
    assert code == 0, err
    assert "peer:       alice\n" in out and f"wallet:     {alice.wallet}" in out
    assert "skills:     none visible to us: the peer does not trust us yet." in out
    assert f"ask it with `coworker --agent bob trust request {alice.wallet}`" in out  # bob was chosen with --agent

    code, out, err = run(capsys, "trust", "request", alice.wallet, "--agent", "bob", "--reason", "tests")
    assert code == 0, err
    assert out == f"trust request to {alice.wallet} for known: pending (the peer's owner must approve it)\n"

    code, out, err = run(capsys, "trust", "list", "--agent", "alice")
    assert code == 0, err
    assert "pending trust requests (1):" in out
    assert re.search(rf"{bob}  asks for known \(1\)  \d+s ago  reason: 'tests'", out), out
    code, out, err = run(capsys, "trust", "list", "--agent", "alice", "--json")
    assert [(r["wallet"], r["requested_tier"]) for r in json.loads(out)["pending"]] == [(bob, "known")]

    code, out, err = run(capsys, "trust", "approve", bob, "--agent", "alice")
    assert code == 0, err
    assert out == f"approved {bob} at tier known (1); the running agent (pid {alice.pid}) told the peer\n"
    assert "pending trust requests (0):" in run(capsys, "trust", "list", "--agent", "alice")[1]

    code, out, err = run(capsys, "connect", alice.wallet, "--agent", "bob")
    assert code == 0, err
    assert "skills:     1 visible to us" in out
    assert re.search(r"^  summarize  Summarize text: its first words\.$", out, re.MULTILINE), out

    code, out, err = run(capsys, "call", alice.wallet, "summarize", "--agent", "bob", "--input", '{"text": "a b c"}')
    assert code == 0, err
    assert json.loads(out) == {"summary": "a b c", "word_count": 3}
    assert not node_children(), "a caller's sidecar outlived its command"


def test_call_reads_its_input_from_a_file(alice: Alice, carol: str, tmp_path: Path, capsys: Capture) -> None:
    path = tmp_path / "input.json"
    path.write_text(json.dumps({"text": "one two three four", "max_words": 2}))
    code, out, err = run(capsys, "call", alice.wallet, "summarize", "--agent", "carol", "--input", f"@{path}")
    assert code == 0, err
    assert json.loads(out) == {"summary": "one two", "word_count": 4}


def test_a_call_to_a_skill_that_does_not_exist_fails_with_skill_not_found(alice: Alice, carol: str,
                                                                         capsys: Capture) -> None:
    code, out, err = run(capsys, "call", alice.wallet, "translate", "--agent", "carol")
    assert (code, out) == (1, "")
    assert err == "coworker: error: no skill named 'translate' visible to you\n"


@pytest.mark.parametrize(("given", "error"), [
    ("not json", "--input is not JSON: Expecting value"),
    ('["a list"]', "--input must be a JSON object, like '{\"text\": \"hello\"}'"),
    ('"a string"', "--input must be a JSON object"),
    ("@missing.json", "cannot read missing.json: No such file or directory"),
])
def test_call_input_that_is_not_a_json_object_is_a_clear_error(given: str, error: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: Capture) -> None:
    monkeypatch.chdir(tmp_path)
    init(capsys, "bob")
    code, out, err = run(capsys, "call", "0x" + "b0" * 20, "summarize", "--agent", "bob", "--input", given)
    assert (code, out) == (1, "")
    assert err.startswith(f"coworker: error: {error}"), err


def test_status_names_the_network_of_a_running_agent(alice: Alice, capsys: Capture) -> None:
    code, out, err = run(capsys, "status", "--agent", "alice")
    assert code == 0, err
    assert re.search(r"^network: +local \(from .*last run on local\)$", out, re.MULTILINE), out
    assert f"running:   yes (pid {alice.pid})" in out
    assert f"XMTP:      inbox {alice.status['xmtp']['inboxId']}, installation " in out
    assert "skills:    1 published now: summarize" in out  # the agent runs
    status = json.loads(run(capsys, "status", "--agent", "alice", "--json")[1])
    assert (status["network"], status["last_network"], status["running"]) == ("local", "local", True)


def test_bridge_refuses_a_second_start_and_stop_ends_the_agent_and_its_sidecar(alice: Alice,
                                                                              capsys: Capture) -> None:
    code, out, err = run(capsys, "bridge", "start", str(alice.app), "--agent", "alice")
    assert (code, out, err) == (1, "", f"agent alice is already running (pid {alice.pid})\n")
    assert bridge_status("alice") is not None

    sidecar = alice.status["xmtp"]["pid"]
    code, out, err = run(capsys, "bridge", "stop", "--agent", "alice")
    assert code == 0, err
    assert (out, err) == (f"agent alice stopped (pid {alice.pid})\n", "")  # asked to stop, not killed
    assert exited(alice.pid, 5) and exited(sidecar, 5)

    code, out, _ = run(capsys, "bridge", "status", "--agent", "alice")
    assert (code, out) == (3, "agent alice: not running\n")
    code, out, _ = run(capsys, "bridge", "status", "--agent", "alice", "--json")
    assert (code, json.loads(out)) == (3, {"name": "alice", "running": False})
    assert run(capsys, "bridge", "stop", "--agent", "alice")[:2] == (0, "agent alice is not running\n")


# ---- coworker serve errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "error"), [
    (None, "no such file: {path}"),
    ("x = 1\n", "{path} defines no Agent at module level (like `agent = Agent(\"my-bot\")`)"),
    ("from coworker import Agent\n\na = Agent('ann')\nb = Agent('ben')\n",
     "{path} defines several agents (ann, ben): choose one with --agent NAME"),
])
def test_serve_refuses_a_file_without_exactly_one_agent(source: str | None, error: str, tmp_path: Path,
                                                        capsys: Capture) -> None:
    path = tmp_path / "app.py"
    if source is not None:
        path.write_text(source)
    code, out, err = run(capsys, "serve", str(path))
    assert (code, out) == (1, "")
    assert err == f"coworker: error: {error.format(path=path)}\n"
