"""Where CoWorker keeps its files: ``$COWORKER_HOME`` (default ``~/.coworker``)."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The CoWorker home directory; not created here."""
    value = os.environ.get("COWORKER_HOME")
    return Path(value).expanduser() if value else Path.home() / ".coworker"


def agent_dir(name: str) -> Path:
    """The directory that holds one agent's key, database and logs."""
    return home() / "agents" / name


def devnet_dir() -> Path:
    """The default state directory of the local XMTP node."""
    return home() / "devnet"


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) with mode 0700 for the leaf; return it."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path

