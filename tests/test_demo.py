"""``coworker demo`` when things go wrong: an agent process that fails to start, Ctrl-C at any step.

Each ends with one line and exit code 1 (failure) or 130 (interrupt), never a traceback, and leaves no process
behind: the agents are stopped and waited for, and their sidecars follow them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from coworker.cli import demo
from coworker.devnet import DevnetServer

from .test_cli import run
from .test_cli_xmtp import exited

pytestmark = pytest.mark.integration

Capture = pytest.CaptureFixture[str]


def processes_under(home: Path) -> dict[int, str]:
    """Live processes other than this one whose COWORKER_HOME is ``home`` (demo agents, their sidecars): pid ->
    command line."""
    marker = f"COWORKER_HOME={home}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in environ and state != "Z":
            found[int(entry.name)] = cmdline
    return found


def assert_nothing_left(home: Path) -> None:
    """No demo agent runs any more; sidecars of agents that were killed mid-start exit on their own (bounded)."""
    left = processes_under(home)
    agents = [pid for pid, cmdline in left.items() if "coworker.cli.demo" in cmdline]
    assert agents == [], f"demo agents still running: {agents}"
    for pid, cmdline in left.items():
        assert exited(pid), f"process {pid} ({cmdline}) outlived the demo"


@pytest.mark.parametrize("failing", ["assistant", "researcher"])
def test_an_agent_process_that_fails_to_start_ends_the_demo_with_one_line(
        xmtp_node: DevnetServer, failing: str, home: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capture) -> None:
    real = demo._agent_command

    def command(role: str, data_dir: Path) -> list[str]:
        if role != failing:
            return real(role, data_dir)
        return [sys.executable, "-c", "raise SystemExit('cannot open the wallet: disk full')"]

    monkeypatch.setattr(demo, "_agent_command", command)
    code, out, err = run(capsys, "demo")
    log = home / "demo" / failing / "logs" / "agent.log"
    assert code == 1
    assert err == (f"coworker: error: the {failing} process of the demo exited with code 1 before it was ready: "
                   f"cannot open the wallet: disk full; see {log}\n")
    assert "2. start" not in out
    assert_nothing_left(home)


def test_ctrl_c_while_the_agents_start_stops_them_and_ends_with_one_line(
        xmtp_node: DevnetServer, home: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capture) -> None:
    real = demo._agent_command

    def command(role: str, data_dir: Path) -> list[str]:
        if role == "assistant":
            return real(role, data_dir)
        # the researcher stands for the user: Ctrl-C while the assistant starts; it then never gets ready
        return [sys.executable, "-c", "import os, signal, sys; os.kill(os.getppid(), signal.SIGINT); sys.stdin.read()"]

    monkeypatch.setattr(demo, "_agent_command", command)
    code, out, err = run(capsys, "demo")
    assert (code, err) == (130, "coworker: interrupted\n"), out
    assert "2. start" not in out
    assert_nothing_left(home)


@pytest.mark.parametrize("after", ["CoWorker demo:", "1. the local XMTP node", "2. start assistant",
                                   "5. assistant's owner approves"])
def test_ctrl_c_at_any_step_of_the_demo_ends_it_with_one_line_and_code_130(
        xmtp_node: DevnetServer, after: str, home: Path) -> None:
    with subprocess.Popen([sys.executable, "-m", "coworker", "demo"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=dict(os.environ)) as running:
        assert running.stdout is not None
        seen = [running.stdout.readline()]
        while seen[-1] and after not in seen[-1]:
            seen.append(running.stdout.readline())
        assert after in seen[-1], "".join(seen)
        running.send_signal(signal.SIGINT)
        out, err = running.communicate(timeout=60)
    assert (running.returncode, err) == (130, "coworker: interrupted\n"), "".join(seen) + out
    assert "first contact and collaboration over XMTP: OK" not in out
    assert_nothing_left(home)
