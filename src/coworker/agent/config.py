"""An agent's settings: its name, its ``config.json``, the network it is on, and the lock that lets one process
at a time run it."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from pathlib import Path
from typing import Any

from coworker._errors import ConfigurationError, StoreError
from coworker.core.trust import TrustTier
from coworker.transports.base import Network
from coworker.transports.xmtp.transport import XMTP_NETWORKS, XmtpNetwork

NETWORK_NAMES = XMTP_NETWORKS
CONFIG_FILE = "config.json"
LOCK_FILE = "agent.lock"
_AGENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def validate_agent_name(name: str) -> str:
    """Return ``name`` if it can name an agent (and its directory); raise ConfigurationError otherwise."""
    if not isinstance(name, str) or not _AGENT_NAME.match(name):
        raise ConfigurationError(f"invalid agent name {name!r}: use 1-64 letters, digits, '_', '.', '-', "
                                 f"starting with a letter or digit")
    return name


def parse_tier(value: TrustTier | int | str, what: str = "tier") -> TrustTier:
    """A trust tier from a tier, number or name; ConfigurationError otherwise."""
    try:
        return TrustTier.parse(value)
    except ValueError as exc:
        raise ConfigurationError(str(exc) if what == "tier" else f"{what}: {exc}") from None


def read_config(data_dir: Path) -> dict[str, Any]:
    """The agent's ``config.json`` (written by ``coworker init``), or {} when there is none."""
    path = data_dir / CONFIG_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"{path} does not hold a JSON object")
    return data


def write_config(data_dir: Path, config: dict[str, Any]) -> None:
    """Write the agent's ``config.json``."""
    path = data_dir / CONFIG_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    tmp.replace(path)


def network_name(spec: str | Network | None, data_dir: Path) -> tuple[str, str]:
    """The name of the network an agent is on and where that choice came from."""
    if isinstance(spec, Network):
        return spec.name, "argument"
    if spec is not None:
        return spec, "argument"
    env = os.environ.get("COWORKER_NETWORK")
    if env:
        return env, "COWORKER_NETWORK"
    configured = read_config(data_dir).get("network")
    if isinstance(configured, str) and configured:
        return configured, CONFIG_FILE
    return "local", "default"


def resolve_network(spec: str | Network | None, data_dir: Path) -> Network:
    """The network object for ``spec`` (a name, a network object, or None for the configured default)."""
    if isinstance(spec, Network):
        return spec
    name, source = network_name(spec, data_dir)
    if name not in NETWORK_NAMES:
        also = {"argument": "or a network object such as coworker.MemoryNetwork()",
                "COWORKER_NETWORK": "(change or unset COWORKER_NETWORK)"}.get(
            source, f"(`coworker init --name {data_dir.name} --network local` changes it)")
        raise ConfigurationError(f"unknown network {name!r} (from {source}): use one of {', '.join(NETWORK_NAMES)} "
                                 f"{also}")
    return XmtpNetwork(name)


class AgentLock:
    """An exclusive lock on the agent's directory: one running process per agent."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StoreError(f"the agent in {self.path.parent} is already running (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    @staticmethod
    def holder(path: Path) -> int | None:
        """The pid of the process running the agent, or None when it is not running."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        finally:
            os.close(fd)
        return None
