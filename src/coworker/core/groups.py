"""Group posts: what an agent writes into a group it belongs to. No I/O, no clock.

Theory of operation. A group (an XMTP MLS group, or the in-memory network's) is a coordination channel only: an
agent posts there what every member should hear at once (today: "which skills do you offer me?"), and each member
answers point to point, over its DM with the asker, with an ordinary protocol reply. Calls never go through a group,
so no member sees another's input or output.

Humans may be members too, so a post reads as text first and carries its machine part on its last line::

    alice asks the members of this group which skills they offer
    coworker-group 1 {"type":"discover","id":"<32 hex>","from":"0x...","group":"<id>","ts":<ms>,"exp":<ms>}

:func:`post` builds one, :func:`is_post` recognises one (the dispatcher asks it before anything else), and
:func:`parse` checks it strictly: it returns the :class:`GroupPost`, or why the post is refused (it never raises).
The asker's name goes on the first line with control characters and line breaks removed. A post's metadata for the
group itself (purpose, CoWorker version) is :func:`app_data`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final

from coworker.core.protocol import is_address, parse_json

MARKER: Final = "coworker-group 1 "
_PREFIX: Final = "coworker-group "
MAX_POST_BYTES: Final = 4096  # a post is small: a line of text and a line of JSON
MAX_NAME_CHARS: Final = 64
POST_TYPES: Final = frozenset({"discover"})
_ID = re.compile(r"^[0-9a-f]{32}$")
_GROUP_ID = re.compile(r"^[0-9A-Za-z_-]{1,128}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
APP_DATA_KIND: Final = "coworker-group"


@dataclass(frozen=True, slots=True)
class GroupPost:
    """One machine post in a group: ``type`` (``discover``), its ``id`` (replies name it as their ``corr``), the
    wallet that asks (``sender``), the ``group`` it was posted to, and its creation and expiry times (ms)."""

    type: str
    id: str
    sender: str
    group: str
    ts: int
    exp: int


def is_post(data: bytes) -> bool:
    """Whether ``data`` holds a group post (of any version) on one of its lines."""
    return (b"\n" + _PREFIX.encode()) in data or data.startswith(_PREFIX.encode())


def readable(name: str) -> str:
    """``name`` made safe for the post's text line: no control characters or line breaks, at most 64 characters."""
    cleaned = _CONTROL.sub(" ", name).strip()
    return cleaned[:MAX_NAME_CHARS] or "an agent"


def post(kind: str, *, post_id: str, sender: str, sender_name: str, group: str, now_ms: int, ttl_ms: int) -> bytes:
    """The bytes of a post of type ``kind`` (its text line, then the machine line).

    Raises:
        ValueError: an unknown type, a malformed id, wallet or group id.
    """
    if kind not in POST_TYPES:
        raise ValueError(f"unknown group post type {kind!r}")
    if not _ID.match(post_id) or not is_address(sender) or not _GROUP_ID.match(group):
        raise ValueError("a group post needs a 32-hex id, a wallet address and a group id")
    text = f"{readable(sender_name)} asks the members of this group which skills they offer"
    machine = {"type": kind, "id": post_id, "from": sender, "group": group, "ts": now_ms, "exp": now_ms + ttl_ms}
    return f"{text}\n{MARKER}{json.dumps(machine, separators=(',', ':'))}".encode()


def parse(data: bytes) -> GroupPost | str:
    """The post in ``data``, or why it is refused."""
    if len(data) > MAX_POST_BYTES:
        return f"a group post is at most {MAX_POST_BYTES} bytes, got {len(data)}"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "a group post is UTF-8 text"
    lines = text.split("\n")
    last = lines[-1]
    if not last.startswith(_PREFIX):
        return "a group post ends with its machine line"
    if not last.startswith(MARKER):
        return f"unsupported group post version {last[len(_PREFIX):].split(' ', 1)[0]!r}"
    try:
        machine: Any = parse_json(last[len(MARKER):].encode())  # depth-limited, unlike json.loads
    except ValueError:
        return "the machine line of a group post is not JSON"
    if not isinstance(machine, dict) or set(machine) != {"type", "id", "from", "group", "ts", "exp"}:
        return "the machine line of a group post has exactly: type, id, from, group, ts, exp"
    kind, post_id, sender, group = machine["type"], machine["id"], machine["from"], machine["group"]
    ts, exp = machine["ts"], machine["exp"]
    if kind not in POST_TYPES:
        return f"unknown group post type {kind!r}"
    if not isinstance(post_id, str) or not _ID.match(post_id):
        return "a group post's id is 32 lower-case hex digits"
    if not is_address(sender):
        return "a group post's from is a wallet address"
    if not isinstance(group, str) or not _GROUP_ID.match(group):
        return "a group post's group is a conversation id"
    if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**53 for t in (ts, exp)) or exp < ts:
        return "a group post's ts and exp are times in ms, exp not before ts"
    return GroupPost(kind, post_id, sender, group, ts, exp)


def app_data(version: str) -> str:
    """What a group created by CoWorker keeps in its metadata besides its description: the CoWorker version."""
    return json.dumps({"kind": APP_DATA_KIND, "coworker": version}, separators=(",", ":"))


def coworker_version(data: str) -> str | None:
    """The CoWorker version a group's metadata names, or None when CoWorker did not make the group."""
    try:
        value = json.loads(data) if data else None
    except ValueError:
        return None
    if isinstance(value, dict) and value.get("kind") == APP_DATA_KIND and isinstance(value.get("coworker"), str):
        return str(value["coworker"])
    return None
