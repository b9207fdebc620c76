"""Seeded mutation of valid protocol-v2 envelopes: every message type, every field, and the bytes themselves.

:func:`valid_messages` makes one valid envelope of each type (requests, and replies that name the live tasks and the
requests of the agent under attack, so that they reach the caller's side too); :func:`mutate` copies one and
breaks it in one to three ways: a field (of the envelope, the body or anything nested) set to a hostile value,
removed, or added; the body replaced; then, one time in five, the encoded bytes flipped, cut, or spliced with
``1e400``, ``NaN`` and control characters. One case in ten is sent unbroken, so the ordinary paths (skills that
run, results that complete a task) run between the attacks. Used by ``tests/test_fuzz.py`` and, for long runs,
``scripts/fuzz_long.py``.
"""

from __future__ import annotations

import copy
import json
import random
import secrets
from collections.abc import Sequence
from typing import Any

DEEP: Any = []
for _ in range(60):
    DEEP = [DEEP]

HOSTILE: tuple[Any, ...] = (
    None, True, False, 0, -1, 1, 2**31, 2**53, 2**64, -(2**63), 0.5, -0.0, 1e308, float("inf"), float("-inf"),
    float("nan"), "", " ", "x" * 5000, "\x00", "\x1b]52;c;aGVsbG8=\x07", "\u202eevil", "\ud800", "é" * 100,
    "0x" + "0" * 40, "0x" + "f" * 40, "0x" + "g" * 40, "a" * 32, "g" * 32, "A" * 32, "call.request", "ping",
    [], [1, "2", None], {}, {"a": {"b": {"c": []}}}, {"__proto__": {"admin": True}}, DEEP,
    {"text": "y" * 20_000}, list(range(300)),
)
SPLICES: tuple[bytes, ...] = (b"1e400", b"-1e400", b"NaN", b"Infinity", b"\x00", b"\x1b[2J", b"\xff\xfe", b"}}}}",
                              b"[[[[[[[[", b'"', b"\\u0000", b"\\ud800")


def _id() -> str:
    return secrets.token_hex(16)


def valid_messages(target: str, sender: str, now_ms: int, *, task_ids: Sequence[str],
                   request_ids: Sequence[str], skill: str = "echo") -> list[dict[str, Any]]:
    """One valid envelope of each message type from ``sender`` to ``target``; task replies name ``task_ids``
    (tasks ``target`` sent to ``sender``) and answer ``request_ids`` (its requests' message ids)."""
    task = task_ids[0] if task_ids else _id()
    corr = request_ids[0] if request_ids else _id()
    receipt = {"task_id": task, "caller": target, "provider": sender, "skill": skill, "version": "1.0.0",
               "status": "completed", "started_at": now_ms / 1000, "duration_ms": 1.0, "input_bytes": 10,
               "output_bytes": 10, "signature": "0x" + "11" * 65}
    bodies: dict[str, dict[str, Any]] = {
        "ping": {"message": "hi"},
        "discover": {},
        "trust.request": {"tier": 1, "reason": "let me in"},
        "call.request": {"skill": skill, "input": {"text": "hello"}, "task": _id()},
        "call.cancel": {"task": task},
        "plan.propose": {"collaboration": _id(), "goal": "do it",
                         "steps": [{"id": "one", "skill": skill, "agent": target, "input": {"text": "a"}}]},
        "pong": {"message": "hi"},
        "capabilities": {"name": "peer", "wallet": sender, "skills": [{"name": "x"}]},
        "trust.grant": {"tier": 1},
        "trust.pending": {"tier": 1},
        "trust.deny": {"tier": 0, "reason": "no"},
        "call.ack": {"task": task, "state": "working"},
        "call.progress": {"task": task, "seq": 1, "progress": 0.5, "message": "half", "index": 0,
                          "partials": ["p"]},
        "call.result": {"task": task, "output": {"text": "done"}, "duration_ms": 1.0, "receipt": receipt},
        "call.error": {"task": task, "code": "SKILL_FAILED", "message": "no", "receipt": receipt},
        "plan.accept": {"collaboration": _id()},
        "plan.reject": {"collaboration": _id(), "reason": "no"},
        "error": {"code": "PROTOCOL_ERROR", "message": "bad"},
        "unknown.type": {"x": 1},
    }
    messages = []
    for kind, body in bodies.items():
        is_reply = kind not in ("ping", "discover", "trust.request", "call.request", "call.cancel", "plan.propose")
        messages.append({"coworker": 2, "id": _id(), "type": kind, "corr": corr if is_reply else _id(),
                         "from": sender, "to": target, "ts": now_ms, "exp": now_ms + 60_000, "body": body})
    return messages


def _slots(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON value: paths of keys and indexes (the empty path is the whole value)."""
    found: list[tuple[Any, ...]] = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found.extend(_slots(item, (*path, key)))
    elif isinstance(value, list) and len(value) < 50:
        for index, item in enumerate(value):
            found.extend(_slots(item, (*path, index)))
    return found


def _parent(root: Any, path: tuple[Any, ...]) -> Any:
    for step in path[:-1]:
        root = root[step]
    return root


def _break_bytes(rng: random.Random, data: bytes) -> bytes:
    where = rng.randrange(len(data) + 1)
    choice = rng.randrange(5)
    if choice == 0:
        return data[:where]  # truncated
    if choice == 1:
        return data[:where] + rng.choice(SPLICES) + data[where:]
    if choice == 2:
        return data[:where] + data[where + rng.randint(1, 20):]
    if choice == 3 and data:
        index = rng.randrange(len(data))
        return data[:index] + bytes([data[index] ^ (1 << rng.randrange(8))]) + data[index + 1:]
    number = data.find(b'"ts": ')  # a number the envelope needs, replaced by one JSON cannot hold
    return data if number < 0 else data[:number + 6] + b"1e400" + data[number + 6:].lstrip(b"0123456789")


def mutate(rng: random.Random, message: dict[str, Any]) -> bytes:
    """A broken copy of ``message`` (a fresh id unless the id itself is broken), encoded."""
    env = copy.deepcopy(message)
    env["id"] = _id()
    if env["type"] in ("call.request", "plan.propose"):  # a new task or plan each time, not repeats of one
        env["body"]["task" if env["type"] == "call.request" else "collaboration"] = _id()
    if rng.random() < 0.1:
        return json.dumps(env).encode()
    for _ in range(rng.randint(1, 3)):
        slots = _slots(env)[1:]
        op = rng.random()
        if op < 0.55 and slots:
            path = rng.choice(slots)
            _parent(env, path)[path[-1]] = copy.deepcopy(rng.choice(HOSTILE))
        elif op < 0.7 and slots:
            path = rng.choice(slots)
            parent = _parent(env, path)
            if isinstance(parent, dict):
                del parent[path[-1]]
            else:
                parent.pop(path[-1])
        elif op < 0.85:
            dicts = [d for d in (_parent(env, (*p, None)) for p in _slots(env)) if isinstance(d, dict)]
            target = rng.choice(dicts)
            target[rng.choice(["extra", "from", "body", "task", "__class__", "x" * 100])] = \
                copy.deepcopy(rng.choice(HOSTILE))
        else:
            env["body"] = copy.deepcopy(rng.choice(HOSTILE))
    data = json.dumps(env).encode()
    if rng.random() < 0.2:
        data = _break_bytes(rng, data)
    return data
