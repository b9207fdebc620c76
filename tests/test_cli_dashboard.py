"""``coworker dashboard`` and the serve options for it: the agent serves its dashboard in another process, and the
CLI asks it (over its control port) for a one-time login link."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from coworker.cli.main import main

Capture = pytest.CaptureFixture[str]

APP = """
from coworker import AsyncAgent, MemoryNetwork

agent = AsyncAgent("dash", network=MemoryNetwork())

@agent.skill()
def echo(text: str) -> str:
    return text
"""


def run(capsys: Capture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _serve(home: Path, tmp_path: Path, *options: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    app = tmp_path / "app.py"
    app.write_text(APP)
    env = {**os.environ, "COWORKER_HOME": str(home)}
    child = subprocess.Popen([sys.executable, "-m", "coworker", "serve", str(app), *options], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        banner = ""
        for line in child.stdout:  # the banner, once the agent serves (or the child's end)
            banner += line
            if "stops it" in line:
                break
        assert "serving dash" in banner, (banner, child.stderr.read() if child.poll() is not None else "")
        yield child, banner
    finally:
        child.terminate()
        child.wait(timeout=20)


@pytest.fixture
def served(home: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    yield from _serve(home, tmp_path, "--dashboard-port", "0")


def test_coworker_dashboard_prints_a_login_link_that_works_once(served: tuple[subprocess.Popen[str], str],
                                                                capsys: Capture) -> None:
    _, banner = served
    url = banner.split("dashboard: ")[1].split()[0]
    assert url.startswith("http://127.0.0.1:")
    code, out, err = run(capsys, "dashboard", "--agent", "dash", "--json", "--no-browser")
    assert code == 0, err
    link = json.loads(out)
    assert link["url"] == url and link["login"].startswith(url + "/login?t=")
    first = httpx.get(link["login"])
    assert first.status_code == 303 and "coworker_session=" in first.headers["set-cookie"]
    assert httpx.get(link["login"]).status_code == 401
    code, out, _ = run(capsys, "dashboard", "--agent", "dash", "--no-browser")
    assert code == 0 and f"dashboard of dash: {url}" in out and "works once" in out
    code, out, _ = run(capsys, "status", "--agent", "dash")
    assert code == 0 and f"dashboard: {url}" in out


def test_an_agent_served_without_a_dashboard_says_so(home: Path, tmp_path: Path, capsys: Capture) -> None:
    for _, banner in _serve(home, tmp_path, "--no-dashboard"):
        assert "dashboard:" not in banner
        code, _, err = run(capsys, "dashboard", "--agent", "dash", "--no-browser")
        assert code != 0 and "serves no dashboard" in err


def test_coworker_dashboard_for_an_agent_that_is_not_running(capsys: Capture) -> None:
    code, _, _ = run(capsys, "init", "--name", "idle")
    assert code == 0
    code, _, err = run(capsys, "dashboard", "--agent", "idle")
    assert code != 0 and "not running" in err and "coworker serve --agent idle" in err
