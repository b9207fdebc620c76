"""A peer cannot write into its owner's terminal: what it chose is printed with control characters escaped.

The hostile peer runs on the in-memory network with the library, renamed after its name was checked (a hostile
peer need not use the library): its name, a skill's description, its output, its error message, a skill name it
calls and the reason of its trust request all carry an OSC 52 clipboard write, a C1 CSI and a bidi override. The
``coworker`` command then runs in-process, as in tests/test_cli.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from coworker import AsyncAgent, MemoryNetwork, SkillFailed, SkillNotFound, TrustTier
from coworker.cli.common import EscapingFormatter, json_text, shown
from coworker.cli.main import main

Capture = pytest.CaptureFixture[str]

HOSTILE = "evil\x1b]52;c;cHduZWQ=\x07\x9b31m\u202egnp.exe"
RAW = ("\x1b", "\x07", "\x9b", "\u202e")


def run(capsys: Capture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_no_raw_control(text: str) -> None:
    found = [repr(c) for c in RAW if c in text]
    assert not found, f"raw {', '.join(found)} in {text!r}"


def assert_shown_escaped(text: str) -> None:
    assert_no_raw_control(text)
    assert "evil\\x1b]52;c;cHduZWQ=\\x07\\x9b31m\\u202egnp.exe" in text


def hostile_bob(net: MemoryNetwork, home: Path) -> AsyncAgent:
    bob = AsyncAgent("bob", network=net, data_dir=home / "elsewhere" / "bob")
    bob.name = HOSTILE  # after the library checked it: what a peer that does not use the library may send

    @bob.skill(description=f"{HOSTILE}\nsecond line")
    def shout() -> str:
        return HOSTILE

    @bob.skill()
    def leak() -> str:
        raise RuntimeError(HOSTILE)

    return bob


@pytest.fixture
def history(home: Path) -> Iterator[dict[str, str]]:
    """Alice (the CLI's agent) after the hostile peer asked her for trust, called a skill it named, and served her
    two calls: one answered with its text, one failed with its message. Returns the ids of those tasks."""
    net = MemoryNetwork()
    alice = AsyncAgent("alice", network=net)
    bob = hostile_bob(net, home)

    async def meet() -> dict[str, str]:
        await alice.start()
        await bob.start()
        try:
            bob.set_trust(alice.wallet, TrustTier.KNOWN)
            alice.set_trust(bob.wallet, TrustTier.KNOWN)
            assert await bob.request_trust(alice.wallet, TrustTier.INTERNAL, HOSTILE) == "pending"
            await alice.connect(bob.wallet)
            with pytest.raises(SkillNotFound):
                await bob.call(alice.wallet, HOSTILE)
            assert await alice.call(bob.wallet, "shout") == HOSTILE
            with pytest.raises(SkillFailed):
                await alice.call(bob.wallet, "leak")
            tasks = {t["skill"] if t["direction"] == "out" else "in": t["task_id"] for t in alice.list_tasks()}
            return {"served": tasks["in"], "completed": tasks["shout"], "failed": tasks["leak"]}
        finally:
            await bob.stop()
            await alice.stop()

    try:
        yield asyncio.run(meet())
    finally:
        alice.close()
        bob.close()


def test_tasks_shows_the_skill_name_a_peer_called_escaped(history: dict[str, str], capsys: Capture) -> None:
    code, out, err = run(capsys, "tasks")
    assert code == 0, err
    assert_no_raw_control(out)
    assert "evil\\x1b]52;c;cHduZ" in out  # the column holds 20 characters of the escaped name


@pytest.mark.parametrize("which", ["served", "completed", "failed"])
def test_task_shows_a_peers_skill_output_and_error_escaped(history: dict[str, str], which: str,
                                                           capsys: Capture) -> None:
    code, out, err = run(capsys, "task", history[which])
    assert code == 0, err
    assert_no_raw_control(out)
    if which == "completed":  # the result is printed as JSON, its control characters as JSON escapes
        assert '"evil\\u001b]52;c;cHduZWQ=\\u0007\\u009b31m\\u202egnp.exe"' in out
    else:
        assert_shown_escaped(out)


def test_tasks_and_task_json_carry_no_raw_control_characters_and_decode_to_what_the_peer_sent(
        history: dict[str, str], capsys: Capture) -> None:
    code, out, err = run(capsys, "tasks", "--json")
    assert code == 0, err
    assert_no_raw_control(out)
    assert HOSTILE in {t["skill"] for t in json.loads(out)}
    code, out, err = run(capsys, "task", history["completed"], "--json")
    assert code == 0, err
    assert_no_raw_control(out)
    assert json.loads(out)["result"] == HOSTILE


def test_trust_list_shows_a_peers_name_and_reason_escaped(history: dict[str, str], capsys: Capture) -> None:
    code, out, err = run(capsys, "trust", "list")
    assert code == 0, err
    assert_no_raw_control(out)
    trusted, pending = out.split("pending trust requests")
    assert_shown_escaped(trusted)  # the name it gave itself
    assert_shown_escaped(pending)  # the reason of its request
    code, out, err = run(capsys, "trust", "list", "--json")
    assert code == 0, err
    assert_no_raw_control(out)
    listed = json.loads(out)
    assert (listed["trusted"][0]["name"], listed["pending"][0]["reason"]) == (HOSTILE, HOSTILE)


class LoopThread:
    """An event loop in a thread, where alice runs while the CLI (blocking) drives her through her control port."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="alice-loop")
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(60)
        self.loop.close()


def test_connect_and_call_show_a_hostile_peers_card_output_and_error_escaped(home: Path, capsys: Capture) -> None:
    net = MemoryNetwork()
    alice = AsyncAgent("alice", network=net)  # in COWORKER_HOME: the CLI finds her running, by her control port
    bob = hostile_bob(net, home)
    loop = LoopThread()
    try:
        loop.run(alice.start())
        loop.run(bob.start())
        try:
            bob.set_trust(alice.wallet, TrustTier.KNOWN)
            code, out, err = run(capsys, "connect", bob.wallet)
            assert code == 0, err
            assert_no_raw_control(out)
            peer_line, skills = out.split("skills:")
            assert_shown_escaped(peer_line)  # its name
            assert_shown_escaped(skills)  # the first line of a skill's description
            code, out, err = run(capsys, "connect", bob.wallet, "--json")
            assert code == 0, err
            assert_no_raw_control(out)
            assert json.loads(out)["name"] == HOSTILE

            code, out, err = run(capsys, "call", bob.wallet, "shout")
            assert code == 0, err
            assert_shown_escaped(out)
            code, out, err = run(capsys, "call", bob.wallet, "shout", "--json")
            assert code == 0, err
            assert_no_raw_control(out)
            assert json.loads(out) == HOSTILE

            code, out, err = run(capsys, "call", bob.wallet, "leak")
            assert code == 1
            assert err.startswith("coworker: error: ")
            assert_shown_escaped(err)
        finally:
            loop.run(bob.stop())
            loop.run(alice.stop())
    finally:
        loop.close()
        alice.close()
        bob.close()


# ---- the helpers ----------------------------------------------------------------------------------------------


def test_shown_escapes_c0_del_c1_bidi_and_lone_surrogates_and_keeps_the_rest() -> None:
    assert shown("a\x1bb\x7fc\x9bd\u202ee\u2066f\ud800") == "a\\x1bb\\x7fc\\x9bd\\u202ee\\u2066f\\ud800"
    assert shown("line\nnext\ttab\r") == "line\\x0anext\\x09tab\\x0d"
    assert shown("line\nnext\ttab\r", lines=True) == "line\nnext\ttab\\x0d"
    assert shown("caf\u00e9 \u65e5\u672c \U0001f600") == "caf\u00e9 \u65e5\u672c \U0001f600"


def test_json_text_keeps_non_ascii_readable_and_is_the_same_json_value() -> None:
    value = {"text": HOSTILE + "\x7f caf\u00e9"}
    text = json_text(value)
    assert_no_raw_control(text)
    assert "\x7f" not in text and "caf\u00e9" in text
    assert json.loads(text) == value


def test_log_lines_a_peer_can_reach_are_escaped() -> None:
    record = logging.LogRecord("coworker.runtime", logging.WARNING, __file__, 1, "refused %s", (HOSTILE,), None)
    assert_shown_escaped(EscapingFormatter("%(message)s").format(record))
