"""Installing the Node side (``coworker setup``, and the first start that needs it).

Node.js and npm are replaced by small scripts on a PATH of the test's own, so that each way of failing can be
shown and no test reaches the npm registry; the real install is what ``make test`` and CI run before the suite.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from coworker import AsyncAgent, TransportError, XmtpNetwork
from coworker._version import __version__
from coworker.cli.main import main
from coworker.transports.xmtp import node
from coworker.transports.xmtp.node import SetupError


def _tool(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


FAKE_NPM_OK = """\
echo "$@" >> "$NPM_LOG"
/bin/mkdir -p node_modules/@xmtp/node-sdk
"""


@pytest.fixture
def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, home: Path) -> Path:
    """An empty directory that is the whole PATH: put fake ``node`` and ``npm`` in it."""
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", str(directory))
    monkeypatch.delenv("COWORKER_NODE_DIR", raising=False)  # install into the test's own COWORKER_HOME
    monkeypatch.setenv("NPM_LOG", str(tmp_path / "npm.log"))
    return directory


def _setup_error() -> str:
    with pytest.raises(SetupError) as caught:
        node.ensure_installed(say=lambda line: None)
    message = str(caught.value)
    assert "\n" not in message
    assert "coworker setup" in message
    return message


def test_without_node_the_error_says_node_is_missing_and_how_to_install_it(tools: Path) -> None:
    assert "Node.js is not installed" in _setup_error()


def test_too_old_a_node_is_named_with_the_version_needed(tools: Path) -> None:
    _tool(tools, "node", "echo v18.19.0\n")
    _tool(tools, "npm", FAKE_NPM_OK)
    assert "Node.js 18.19.0 is too old (the XMTP SDK needs >= 20.19.0)" in _setup_error()


def test_without_npm_the_error_names_npm(tools: Path) -> None:
    _tool(tools, "node", "echo v20.20.2\n")
    assert "npm is not installed" in _setup_error()


def test_a_failed_install_quotes_npm_and_leaves_nothing_half_done(tools: Path, home: Path) -> None:
    _tool(tools, "node", "echo v20.20.2\n")
    _tool(tools, "npm", "echo 'npm ERR! code ENOTFOUND' >&2\nexit 1\n")
    message = _setup_error()
    assert "installing the XMTP SDK failed (`npm ci` exited with 1: npm ERR! code ENOTFOUND)" in message
    assert not (node.install_dir() / node.MARKER).exists()
    assert not node.node_available()
    _tool(tools, "npm", FAKE_NPM_OK)  # fixed: the next start installs it
    assert node.ensure_installed(say=lambda line: None) == node.install_dir()


def test_an_install_goes_into_the_coworker_home_once_per_version_with_a_progress_line(
        tools: Path, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tool(tools, "node", "echo v20.20.2\n")
    _tool(tools, "npm", FAKE_NPM_OK)
    monkeypatch.chdir(tmp_path)
    said: list[str] = []
    directory = node.ensure_installed(say=said.append)
    assert directory == home / "node" / f"{__version__}-{node.lock_hash()}"
    assert said[0].startswith(f"installing the XMTP SDK (@xmtp/node-sdk {node.sdk_version()}) into {directory}")
    assert said[1].startswith("XMTP SDK installed in ") and said[1].endswith(" s")
    assert (tmp_path / "npm.log").read_text() == "ci --no-audit --no-fund --loglevel=error\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "home", "npm.log"]  # nothing in the cwd
    for name in node.MANIFESTS:
        assert (directory / name).read_bytes() == (node.SOURCES / name).read_bytes()
    scripts = directory / f"scripts-{node.scripts_hash()}"
    for name in node.SCRIPTS:
        assert (scripts / name).read_bytes() == (node.SOURCES / name).read_bytes()
    assert node.script("sidecar.mjs") == scripts / "sidecar.mjs"
    assert node.sdk_version() == "5.5.0"

    (scripts / "sidecar.mjs").write_text("// changed by hand\n")
    again: list[str] = []
    assert node.ensure_installed(say=again.append) == directory
    assert again == []  # installed already: no second npm ci
    assert (tmp_path / "npm.log").read_text().count("ci") == 1
    assert (scripts / "sidecar.mjs").read_bytes() == (node.SOURCES / "sidecar.mjs").read_bytes()


def test_scripts_that_differ_live_side_by_side_in_one_installation(
        tools: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Two copies of CoWorker of one version (say, two checkouts) whose sidecars differ share the installed SDK
    but never run each other's scripts."""
    _tool(tools, "node", "echo v20.20.2\n")
    _tool(tools, "npm", FAKE_NPM_OK)
    directory = node.ensure_installed(say=lambda line: None)
    ours = node.script("sidecar.mjs")
    other_sources = tmp_path / "other"
    other_sources.mkdir()
    for name in (*node.SCRIPTS, *node.MANIFESTS, "README.md"):
        (other_sources / name).write_bytes((node.SOURCES / name).read_bytes())
    (other_sources / "sidecar.mjs").write_text("// another checkout's sidecar\n")
    monkeypatch.setattr(node, "SOURCES", other_sources)
    assert node.ensure_installed(say=lambda line: None) == directory  # same lockfile: the same installation
    theirs = node.script("sidecar.mjs")
    assert theirs != ours and theirs.parent.parent == ours.parent.parent == directory
    assert theirs.read_text() == "// another checkout's sidecar\n"
    assert ours.read_bytes() == (Path(node.__file__).parent / "sidecar" / "sidecar.mjs").read_bytes()


def test_coworker_setup_prints_one_line_and_exits_1_without_node(tools: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["setup"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("coworker: error: Node.js is not installed")


def test_coworker_setup_installs_and_says_where(tools: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _tool(tools, "node", "echo v20.20.2\n")
    _tool(tools, "npm", FAKE_NPM_OK)
    assert main(["setup"]) == 0
    out, err = capsys.readouterr()
    assert "coworker: installing the XMTP SDK" in err and "coworker: XMTP SDK installed in" in err
    assert out.startswith("Node.js 20.20.2") and str(node.install_dir()) in out and out.rstrip().endswith("ready")
    assert main(["setup"]) == 0
    assert "installing" not in capsys.readouterr().err


async def test_an_agent_that_needs_the_node_side_and_cannot_install_it_says_why(
        xmtp_node: object, tools: Path, tmp_path: Path) -> None:
    assert os.listdir(tools) == []  # no node on PATH
    agent = AsyncAgent("lonely", network=XmtpNetwork("local", start_devnet=False), data_dir=tmp_path / "lonely")
    with pytest.raises(TransportError, match=r"^Node\.js is not installed .*coworker setup"):
        await agent.start()
    agent.close()


def test_the_package_carries_the_sidecar_sources() -> None:
    for name in (*node.SCRIPTS, *node.MANIFESTS):
        assert (node.SOURCES / name).is_file(), name
    assert '"@xmtp/node-sdk": "5.5.0"' in (node.SOURCES / "package.json").read_text()
