"""The message journal: the latest protocol messages in and out of one running agent, with what became of each.

Theory of operation. The runtime notes every message where its fate is decided: an incoming one on its path
through :meth:`~coworker.runtime.dispatch.Runtime._dispatch` (dropped by the rate limit, undecodable, forged,
stale, a duplicate, a reply nobody waits for; or handled), an outgoing one in
:class:`~coworker.runtime.link.Link` once the transport took it (sent) or refused it (failed). Noting one costs a
small object and a deque append: no encoding, no copy of the message. What a message carried (a call's input, its
output) is never kept; a ``call.progress`` keeps its message, percentage and latest partial result, truncated
(:func:`progress_detail`), and an error its code.

An incoming request is noted ``handled`` when it passed every check; when its answer turns out to be a refusal
(trust too low, a skill not found, invalid input: decided later, on the request's own task) the link gives that
entry its final verdict, ``refused``, with the code (:meth:`Journal.refused`): entries are frozen, and settling one
puts a copy with its verdict in its place. Listeners hear of every new entry and of every settled one.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from coworker._listeners import Listeners
from coworker.core import protocol as proto

DEFAULT_SIZE = 2000  # entries kept
LOOK_BACK = 512  # entries searched, newest first, for the request a late verdict is about
DETAIL_TEXT = 300  # characters of a progress message kept
DETAIL_PARTIAL = 1000  # characters of a progress report's latest partial result (as JSON) kept


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One protocol message in or out, as :meth:`Journal.entries` returns it.

    ``verdict`` of an incoming message: ``handled`` (it passed every check and was acted on), ``refused``
    (answered with an error; ``reason`` is ``"CODE: message"``) or ``dropped`` (not answered: rate limit,
    undecodable with nothing to answer, a reply nobody waits for, a duplicate; ``reason`` says which); of an
    outgoing one ``sent`` or ``failed`` (``reason``: the error; an error we sent has its code as ``reason``).
    ``kind``: the envelope type (``call.request``, ``call.result``, ``error``...), or ``unread`` (dropped before
    it was read), ``undecodable``, ``batch`` (a frame that could not be split), ``1.0:<type>`` (a CoWorker 1.0
    message that took no envelope's form). ``peer``: the other side (for an incoming message whose sender has
    several addresses before it is read, the smallest). ``size``: bytes. ``detail``: small (under 2 KB as
    JSON): a progress report's message, percentage and latest partial result, truncated; an error's code."""

    seq: int
    at: float
    direction: str
    peer: str
    kind: str
    message_id: str | None
    task_id: str | None
    size: int
    verdict: str
    reason: str
    protocol: str
    detail: dict[str, Any]


class Journal:
    """The last ``size`` messages in and out.

    Example::

        for entry in agent.journal.entries(peer=wallet, limit=20):
            print(entry.seq, entry.direction, entry.kind, entry.verdict, entry.reason)
    """

    def __init__(self, size: int = DEFAULT_SIZE, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.seq = 0  # the latest entry's
        self._notes: collections.deque[JournalEntry] = collections.deque(maxlen=size)
        self._listeners = Listeners("a journal listener")

    @property
    def size(self) -> int:
        """How many entries are kept at most."""
        return self._notes.maxlen or 0

    def note(self, direction: str, peer: str, kind: str, size: int, verdict: str, *, message_id: str | None = None,
             task_id: str | None = None, reason: str = "", protocol: str = "2",
             detail: dict[str, Any] | None = None) -> JournalEntry:
        """Add an entry (returned, to be settled later when its verdict may change)."""
        self.seq += 1
        note = JournalEntry(self.seq, self.clock(), direction, peer, kind, message_id, task_id, size, verdict, reason,
                            protocol, {} if detail is None else detail)
        self._notes.append(note)
        if self._listeners:
            self._listeners()
        return note

    def refused(self, request_id: str, code: str, message: str = "") -> None:
        """The incoming request ``request_id``, noted handled, was answered with an error: its entry says so."""
        note = self._handled(request_id)
        if note is not None:
            self.settle(note, "refused", f"{code}: {message}"[:500])

    def drop(self, request_id: str, reason: str) -> None:
        """The incoming request ``request_id``, noted handled, turned out to be one to drop unanswered (a
        duplicate): its entry says so."""
        note = self._handled(request_id)
        if note is not None:
            self.settle(note, "dropped", reason)

    def _handled(self, request_id: str) -> JournalEntry | None:
        """The latest entry of an incoming message ``request_id`` noted handled, among the latest
        :data:`LOOK_BACK` (a verdict decided later is decided soon after): searched only then, so that noting a
        request costs nothing more."""
        for n, note in enumerate(reversed(self._notes)):
            if n >= LOOK_BACK:
                break
            if note.message_id == request_id and note.direction == "in" and note.verdict == "handled":
                return note
        return None

    def settle(self, note: JournalEntry, verdict: str, reason: str = "") -> None:
        """Give an entry its final verdict (if it is still kept)."""
        for n in range(len(self._notes) - 1, -1, -1):  # newest first: it was noted moments ago
            if self._notes[n].seq == note.seq:
                self._notes[n] = dataclasses.replace(note, verdict=verdict, reason=reason)
                break
            if self._notes[n].seq < note.seq:
                return
        if self._listeners:
            self._listeners()

    def entries(self, *, after: int = 0, limit: int = 200, peer: str | None = None,
                task_id: str | None = None) -> list[JournalEntry]:
        """Entries newest first: those after ``after`` (a seq), of one peer (any case) or one task, at most
        ``limit``."""
        key = None if peer is None else peer.lower()
        found: list[JournalEntry] = []
        for note in reversed(self._notes):
            if note.seq <= after or len(found) >= limit:
                break
            if (key is None or note.peer.lower() == key) and (task_id is None or note.task_id == task_id):
                found.append(note)
        return found

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after each new entry and each settled one (on the runtime's loop: keep it cheap,
        e.g. set an event); an exception it raises is logged."""
        self._listeners.add(listener)

    def remove_listener(self, listener: Callable[[], None]) -> None:
        self._listeners.remove(listener)


def progress_detail(body: dict[str, Any]) -> dict[str, Any]:
    """A ``call.progress`` body as the journal keeps it: its message, percentage, and latest partial result (as
    JSON), truncated."""
    detail: dict[str, Any] = {}
    message = body.get("message")
    if isinstance(message, str) and message:
        detail["message"] = message[:DETAIL_TEXT]
    progress = body.get("progress")
    if isinstance(progress, int | float) and not isinstance(progress, bool):
        detail["progress"] = progress
    partials = body.get("partials")
    if isinstance(partials, list) and partials:
        try:
            detail["partial"] = json.dumps(partials[-1], separators=(",", ":"))[:DETAIL_PARTIAL]
        except (TypeError, ValueError):
            detail["partial"] = "?"
        detail["partials"] = len(partials)
    return detail


def about(env: proto.Envelope) -> tuple[str | None, dict[str, Any] | None]:
    """The task a message is about (``call.*``) and the journal's detail of it (progress, an error's code)."""
    if not env.type.startswith("call."):
        if env.type == "error":
            return None, {"code": str(env.body.get("code"))[:64]}
        return None, None
    task = env.body.get("task")
    if not isinstance(task, str):
        task = env.id if env.type == "call.request" else None
    if env.type == "call.progress":
        return task, progress_detail(env.body)
    if env.type == "call.error":
        return task, {"code": str(env.body.get("code"))[:64]}
    return task, None
