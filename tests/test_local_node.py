"""The local XMTP node on port 5556, as agents, the demo and ``coworker devnet`` find it: a devnet they start
themselves says so once, and a port held by a program that is not a devnet is named as such."""

from __future__ import annotations

import asyncio
import json
import os
import socketserver
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from coworker import AsyncAgent, TransportError
from coworker._process import spawn_ready
from coworker.cli.main import main
from coworker.devnet import DEFAULT_PORT
from coworker.devnet._cli import PID_FILENAME, port_user

from .conftest import require_node_sdk
from .test_cli import init, run
from .test_cli_xmtp import exited

Capture = pytest.CaptureFixture[str]

NOT_A_DEVNET = (f"port {DEFAULT_PORT} is in use by another program (not a CoWorker devnet): stop it or free the port "
                f"(`ss -ltnp 'sport = :{DEFAULT_PORT}'` names the program)")


class _Greeter(socketserver.BaseRequestHandler):
    """Answers like a line-based server (SMTP, Redis, ...) would: a greeting, then it hangs up."""

    def handle(self) -> None:
        self.request.sendall(b"220 a mail server, not an XMTP node\r\n")


@pytest.fixture
def foreign_program() -> Iterator[None]:
    """A plain TCP server, not gRPC, on 127.0.0.1:5556."""
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer(("127.0.0.1", DEFAULT_PORT), _Greeter)
    thread = threading.Thread(target=server.serve_forever, name="foreign-program", daemon=True)
    thread.start()
    yield
    server.shutdown()
    server.server_close()
    thread.join()


def test_a_plain_tcp_server_on_the_port_is_not_taken_for_a_devnet(foreign_program: None) -> None:
    assert port_user() == "other"


@pytest.mark.parametrize("autostart", ["1", "0"])
async def test_an_agent_on_local_names_the_program_that_holds_the_port(
        foreign_program: None, autostart: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COWORKER_DEVNET_AUTOSTART", autostart)
    agent = AsyncAgent("alice", network="local", data_dir=tmp_path / "alice")
    try:
        with pytest.raises(TransportError) as error:
            await agent.start()
        assert str(error.value) == NOT_A_DEVNET
        assert not agent.running
    finally:
        agent.close()


def test_the_cli_and_devnet_start_name_the_program_that_holds_the_port(
        foreign_program: None, home: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capture) -> None:
    monkeypatch.setenv("COWORKER_DEVNET_AUTOSTART", "1")
    code, out, err = run(capsys, "devnet", "start")
    assert (code, out, err) == (1, "", f"error: {NOT_A_DEVNET}\n")
    assert not (home / "devnet" / PID_FILENAME).exists()

    init(capsys, "bob")
    code, out, err = run(capsys, "connect", "0x" + "ab" * 20, "--agent", "bob")
    assert (code, out, err) == (1, "", f"coworker: error: {NOT_A_DEVNET}\n")


def test_the_demo_names_the_program_that_holds_the_port(foreign_program: None, home: Path,
                                                        monkeypatch: pytest.MonkeyPatch, capsys: Capture) -> None:
    require_node_sdk()
    monkeypatch.setenv("COWORKER_DEVNET_AUTOSTART", "1")
    code, out, err = run(capsys, "demo")
    assert code == 1
    assert err == f"coworker: error: {NOT_A_DEVNET}\n"
    assert "already running" not in out
    assert not (home / "devnet" / PID_FILENAME).exists()


# ---- a devnet started by an agent -----------------------------------------------------------------------------


@pytest.fixture
def devnet_stopped_afterwards(home: Path, capsys: Capture) -> Iterator[Path]:
    """The devnet's pidfile under this test's COWORKER_HOME; whatever devnet it names is stopped at the end."""
    pidfile = home / "devnet" / PID_FILENAME
    yield pidfile
    if pidfile.exists():
        pid = json.loads(pidfile.read_text())["pid"]
        assert main(["devnet", "stop"]) == 0
        assert exited(pid), f"the devnet (pid {pid}) did not stop"
        capsys.readouterr()


def test_an_agent_that_starts_the_devnet_says_so_once_on_stderr(
        devnet_stopped_afterwards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capture) -> None:
    require_node_sdk()
    monkeypatch.setenv("COWORKER_DEVNET_AUTOSTART", "1")
    assert port_user() == "nobody", "port 5556 is taken: run the tests in their own network namespace"
    alice = AsyncAgent("alice", network="local", data_dir=tmp_path / "alice")
    bob = AsyncAgent("bob", network="local", data_dir=tmp_path / "bob")

    async def both() -> None:
        try:
            await alice.start()
            await bob.start()  # finds it running: says nothing
            assert await bob.ping(alice.wallet) > 0
        finally:
            await bob.stop()
            await alice.stop()

    try:
        asyncio.run(both())
    finally:
        alice.close()
        bob.close()
    out, err = capsys.readouterr()
    pid = json.loads(devnet_stopped_afterwards.read_text())["pid"]
    line = (f"coworker: started the local XMTP node in the background (coworker devnet, pid {pid}, "
            f"log {devnet_stopped_afterwards.parent / 'devnet.log'}); `coworker devnet stop` stops it")
    assert err.splitlines() == [line]
    assert "XMTP node" not in out
    assert not exited(pid, 0) and os.getpid() != pid


def test_a_background_child_interrupted_before_it_is_ready_is_not_left_running(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = ("import os, signal, sys; open(sys.argv[1], 'w').write(str(os.getpid())); "
              "os.kill(os.getppid(), signal.SIGINT); signal.pause()")  # Ctrl-C while the devnet starts
    with pytest.raises(KeyboardInterrupt):
        spawn_ready(lambda ready_fd: [sys.executable, "-c", script, str(pidfile)], tmp_path / "child.log", 60)
    assert exited(int(pidfile.read_text()))
