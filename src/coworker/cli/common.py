"""What the commands share: finding the agent a command works on, opening it, printing.

Printing: a peer chooses its name, its skills' names and descriptions, its error messages, its outputs and the
reasons of its trust requests, and those reach the owner's terminal. Every such string is printed through
:func:`shown` (text) or :func:`json_text` (JSON that keeps non-ASCII readable), so that no control character
reaches the terminal raw: an ESC or C1 sequence could rewrite the screen, set the window title or write the
clipboard (OSC 52), and a bidi override could reorder what is printed after it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from coworker import _paths
from coworker._errors import ConfigurationError, CoworkerError
from coworker.agent.agent import DB_FILE, AsyncAgent
from coworker.agent.config import validate_agent_name
from coworker.core.trust import TrustTier
from coworker.store.identity import KEY_FILE, KEYSTORE_FILE, Identity


class CliError(CoworkerError):
    """An error of the command line itself."""


def agents_root() -> Path:
    return _paths.home() / "agents"


def agent_names() -> list[str]:
    """The agents under ``$COWORKER_HOME/agents``: directories with a valid name that hold a wallet."""
    root = agents_root()
    if not root.is_dir():
        return []
    names = []
    for child in sorted(root.iterdir()):
        with contextlib.suppress(ConfigurationError):
            if child.is_dir() and validate_agent_name(child.name) and Identity.exists(child):
                names.append(child.name)
    return names


def choose_agent(args: argparse.Namespace) -> str:
    """The agent a command works on: ``--agent``, else ``COWORKER_AGENT``, else the only one there is."""
    name = getattr(args, "agent", None) or os.environ.get("COWORKER_AGENT")
    names = agent_names()
    if name:
        validate_agent_name(name)
        if name not in names:
            data_dir = _paths.agent_dir(name)
            if data_dir.is_dir():
                raise CliError(f"{data_dir} holds no wallet: run `coworker init --name {name}`")
            known = f"agents: {', '.join(names)}" if names else "there are none yet"
            raise CliError(f"no agent named {name!r} in {agents_root()} ({known}); "
                           f"create it with `coworker init --name {name}`")
        return name
    if len(names) == 1:
        return names[0]
    if not names:
        raise CliError(f"no agent in {agents_root()}: create one with `coworker init --name NAME`")
    raise CliError(f"several agents in {agents_root()} ({', '.join(names)}): choose one with --agent NAME "
                   f"or COWORKER_AGENT")


def suggest(args: argparse.Namespace, name: str, command: str) -> str:
    """A command to suggest, quoted: ``--agent NAME`` is in it when the user chose the agent with it or when
    several agents exist, so that it runs as it is."""
    chosen = bool(getattr(args, "agent", None)) or len(agent_names()) > 1
    return f"`coworker {f'--agent {name} ' if chosen else ''}{command}`"


@contextlib.contextmanager
def open_agent(args: argparse.Namespace) -> Iterator[AsyncAgent]:
    """Open an existing agent without starting it, and close its database afterwards.

    The empty passphrase reads an encrypted wallet's address from its keystore without decrypting it: these
    commands never sign anything, so they neither ask for the passphrase nor pay for scrypt.
    """
    agent = AsyncAgent(choose_agent(args), passphrase="")
    try:
        yield agent
    finally:
        agent.close()


def key_kind(data_dir: Path) -> tuple[str, Path]:
    if (data_dir / KEYSTORE_FILE).exists():
        return "encrypted keystore", data_dir / KEYSTORE_FILE
    return "plain file", data_dir / KEY_FILE


def published_skills(agent: AsyncAgent) -> list[dict[str, Any]] | None:
    """The skill cards the agent published on its last run, or None when it has never run."""
    text = agent.store.get_setting("skills")
    if text is None:
        return None
    try:
        cards = json.loads(text)
    except ValueError:
        raise CliError(f"the skills recorded in {agent.data_dir / DB_FILE} are not valid JSON") from None
    return [c for c in cards if isinstance(c, dict)] if isinstance(cards, list) else []


def tier_text(tier: TrustTier) -> str:
    return f"{tier.name.lower()} ({int(tier)})"


def age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


# C0, DEL, C1 (0x9b is CSI on its own), the bidi controls (marks, embeddings, overrides, isolates), the line and
# paragraph separators, and lone surrogates (which the terminal's encoding cannot print).
_UNSAFE = "\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff"
_UNSAFE_IN_TEXT = re.compile(f"[\x00-\x1f{_UNSAFE}]")
_UNSAFE_IN_LINES = re.compile(f"[\x00-\x08\x0b-\x1f{_UNSAFE}]")  # keeps newlines and tabs
_UNSAFE_IN_JSON = re.compile(f"[{_UNSAFE}]")  # json.dumps escapes C0 itself


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(text: object, *, lines: bool = False) -> str:
    """``text`` as it may be printed to a terminal: control characters shown escaped, like ``\\x1b`` or ``\\u202e``.

    Args:
        text: anything a peer (or a file) chose; it is printed as ``str(text)``.
        lines: keep newlines and tabs (a skill's text output, an error message); otherwise they are escaped too,
            so that one value stays on its line.
    """
    return (_UNSAFE_IN_LINES if lines else _UNSAFE_IN_TEXT).sub(_escaped, str(text))


def json_text(value: Any, indent: int | None = 2) -> str:
    """``value`` as JSON with non-ASCII characters kept readable, and none that a terminal acts on.

    ``json.dumps`` escapes C0 controls; DEL, C1, bidi controls and lone surrogates are escaped here as ``\\uXXXX``,
    which is the same JSON value (they can only occur inside strings).
    """
    text = json.dumps(value, indent=indent, ensure_ascii=False)
    return _UNSAFE_IN_JSON.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


class EscapingFormatter(logging.Formatter):
    """Log lines with control characters escaped (newlines kept): a logged message may quote what a peer sent,
    and logs are read in a terminal (stderr, ``tail -f agent.log``)."""

    def format(self, record: logging.LogRecord) -> str:
        return shown(super().format(record), lines=True)


def print_json(value: Any) -> None:
    """Machine-readable output: ASCII-only JSON, so that every control character is escaped."""
    print(json.dumps(value, indent=2))
