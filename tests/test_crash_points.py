"""Real crashes at each commit point of a task: a process killed with SIGKILL, then started again from the same data
directories, loses nothing and runs nothing twice.

The commit points (group commit, see :mod:`coworker.store.sqlite`): the caller's task is committed before
``request()`` returns, the callee's task key before the skill runs, the callee's outcome before its answer leaves.

Both agents run in ONE child process on a :class:`MemoryNetwork` (the memory network lives in one process), and the
whole process is killed: what the network held dies with it, so only what the two stores hold survives - the
durability under test. The kill lands exactly at the point. The child wraps ``SQLiteStore.sync``: when the given
agent's store is synced from the given function (``request``, ``serve``, ``execute``: the places that await a
commit before going on), it kills the process either right after that commit (before the function goes on) or in
the commit itself, just before the ``COMMIT`` (as late as possible: whatever the loop runs until then has run);
a third point kills it as soon as ``request()`` has returned. Before the kill the child notes, in a file, the
point, whether writes were pending, the messages handed to the network so far and the skill's runs. A self-SIGKILL
is a real crash: no cleanup, no commit, no ``finally``. The skill notes each run in a file (O_APPEND, fsync'd),
the count of record across both processes. A second child process starts both agents again (no hook) and
reports, as JSON, what each store held before the start and where the task ended.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .apps import APPEND_LINE

PAIR = '''
import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from coworker import AsyncAgent, CallContext, ConfigurationError, MemoryNetwork, RetryPolicy, TrustTier
from coworker.runtime.link import Link
from coworker.store.sqlite import SQLiteStore

# crash: "none", "agent:function:before|after" or "bob:request:returned"
root, task_id, crash = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
RUNS, MARKER = root / "runs", root / "marker"
''' + APPEND_LINE + '''

SENT: list[str] = []  # "type task" of each message handed to the network, in this process
original_send = Link.send_data


async def send_data(self: Link, recipient: str, data: bytes, **options: Any) -> None:
    env = json.loads(data)
    SENT.append(f"{env['type']} {env['body'].get('task', '')}".strip())
    await original_send(self, recipient, data, **options)


Link.send_data = send_data  # type: ignore[method-assign]


def kill(point: str, store: SQLiteStore) -> None:
    runs = RUNS.read_text().splitlines() if RUNS.exists() else []
    append(MARKER, json.dumps({"point": point, "pending": store._db.in_transaction, "sent": SENT,
                               "runs": len(runs)}))
    os.kill(os.getpid(), signal.SIGKILL)  # a real crash: no cleanup, no commit, no finally


if crash != "none":
    agent_name, function, when = crash.split(":")
    original_sync, original_flush = SQLiteStore.sync, SQLiteStore.flush
    doomed: list[SQLiteStore] = []  # a store whose next commit is the one to die before

    async def sync(self: SQLiteStore) -> None:
        # the coroutine that awaits this one: request (AsyncAgent), serve or execute (Callee), _drive (Caller)...
        hit = Path(self.path).parent.name == agent_name and sys._getframe(1).f_code.co_name == function
        if hit and when == "before":
            doomed.append(self)  # killed in flush, as late as possible: whatever runs until the commit has run
        await original_sync(self)
        if hit and when == "after":
            kill(f"after {function}", self)

    def flush(self: SQLiteStore) -> None:
        if self in doomed and self._db.in_transaction:
            kill(f"before {function}", self)
        original_flush(self)

    SQLiteStore.sync = sync  # type: ignore[method-assign]
    SQLiteStore.flush = flush  # type: ignore[method-assign]


async def main() -> None:
    net = MemoryNetwork()
    retry = RetryPolicy(first=0.05, factor=2.0, maximum=0.4)
    alice = AsyncAgent("alice", network=net, data_dir=root / "alice", retry=retry)
    bob = AsyncAgent("bob", network=net, data_dir=root / "bob", retry=retry)
    alice.set_trust(bob.wallet, TrustTier.KNOWN)

    @alice.skill()
    def work(text: str, ctx: CallContext) -> dict:
        append(RUNS, f"{ctx.call_id} {ctx.attempt} {os.getpid()}")
        return {"text": text.upper(), "attempt": ctx.attempt}

    def stored(agent: AsyncAgent) -> dict | None:
        try:
            return agent.get_result(task_id)
        except ConfigurationError:
            return None

    report: dict = {"stored": {"caller": stored(bob), "callee": stored(alice)}}
    async with alice, bob:
        if crash != "none":
            await bob.request(alice.wallet, "work", {"text": "once"}, task_id=task_id)
            if crash == "bob:request:returned":
                kill("request returned", bob.store)
            report["output"] = await bob.wait(task_id, timeout=10)
        elif report["stored"]["caller"] is not None:
            report["output"] = await bob.wait(task_id, timeout=10)
        report["end"] = {"caller": stored(bob), "callee": stored(alice)}
    for agent in (alice, bob):
        agent.close()
    print(json.dumps(report), flush=True)


asyncio.run(main())
'''

LIVE = ("submitted", "working")  # a caller's task not answered yet (an acknowledgement may have come)
BOUND = 60  # seconds a child process may take before the test fails (it takes well under one)


@dataclass
class Kill:
    """Where the first process died, as it noted just before its SIGKILL."""

    point: str  # "before request", "after serve", ...
    pending: bool  # the store had uncommitted writes
    sent: list[str]  # "type task" of each message handed to the network before the kill
    runs: int  # the skill's runs so far


@dataclass
class Outcome:
    """What a crash and a restart left: the kill, the skill's runs (attempt numbers, across both processes), each
    side's task as stored before the restart began and once the restarted caller had its answer (None: not
    stored), and the output the caller got."""

    kill: Kill
    runs: list[int]
    before: dict[str, Any]
    end: dict[str, Any]
    output: Any


def crash_then_restart(tmp_path: Path, crash: str) -> tuple[str, Outcome]:
    """Run both agents, kill their process at ``crash`` (``agent:function:before|after``, or
    ``bob:request:returned``), start them again;
    the task id and what came of it."""
    script = tmp_path / "pair.py"
    script.write_text(PAIR)
    task_id = uuid.uuid4().hex
    killed = subprocess.run([sys.executable, str(script), str(tmp_path), task_id, crash], capture_output=True,
                            text=True, timeout=BOUND)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr  # the hook fired, and killed it
    (note,) = (tmp_path / "marker").read_text().splitlines()
    restarted = subprocess.run([sys.executable, str(script), str(tmp_path), task_id, "none"], capture_output=True,
                               text=True, timeout=BOUND)
    assert restarted.returncode == 0, restarted.stderr
    report = json.loads(restarted.stdout.splitlines()[-1])
    runs_file = tmp_path / "runs"
    runs = [line.split() for line in (runs_file.read_text().splitlines() if runs_file.exists() else [])]
    assert all(run[0] == task_id for run in runs)
    return task_id, Outcome(Kill(**json.loads(note)), [int(run[1]) for run in runs], report["stored"],
                            report.get("end", {}), report.get("output"))


def state(task: dict[str, Any] | None) -> str | None:
    return None if task is None else str(task["state"])


def assert_completed_once(outcome: Outcome, attempt: int) -> None:
    """The caller ended with the result of the one run that counted, completed on both sides, its receipt valid."""
    assert outcome.output == {"text": "ONCE", "attempt": attempt}
    caller, callee = outcome.end["caller"], outcome.end["callee"]
    assert (state(caller), caller["result"], caller["receipt_valid"]) == ("completed", outcome.output, True)
    assert (state(callee), callee["result"], callee["attempts"]) == ("completed", outcome.output, attempt)


# ---- before request() returns: the caller's task ----------------------------------------------------------

def test_a_caller_killed_as_soon_as_request_returns_keeps_the_task_and_completes_it_once(
        tmp_path: Path) -> None:
    _, outcome = crash_then_restart(tmp_path, "bob:request:returned")
    assert (outcome.kill.point, outcome.kill.runs) == ("request returned", 0)
    assert state(outcome.before["caller"]) in LIVE  # request() had returned: the task is kept
    assert state(outcome.before["callee"]) is None  # whatever was sent died with the process (memory network)
    assert outcome.runs == [1]  # the restarted caller sends it again, and it runs once
    assert_completed_once(outcome, attempt=1)


def test_a_caller_killed_before_its_task_is_committed_loses_it_whole_and_nothing_was_sent_or_runs(
        tmp_path: Path) -> None:
    _, outcome = crash_then_restart(tmp_path, "bob:request:before")
    assert (outcome.kill.point, outcome.kill.pending) == ("before request", True)  # written, not yet committed
    assert outcome.kill.sent == []  # nothing left before the commit: never half-sent
    assert outcome.before == {"caller": None, "callee": None}  # request() never returned: the task is lost...
    assert outcome.runs == []  # ...whole: it never ran, before or after the restart
    assert outcome.end == {"caller": None, "callee": None}


# ---- before the skill runs: the callee's task key ---------------------------------------------------------

def test_a_callee_killed_after_the_task_key_is_committed_just_before_the_skill_runs_runs_it_once_after_restart(
        tmp_path: Path) -> None:
    task_id, outcome = crash_then_restart(tmp_path, "alice:serve:after")
    assert (outcome.kill.point, outcome.kill.runs) == ("after serve", 0)
    assert f"call.request {task_id}" in outcome.kill.sent and f"call.result {task_id}" not in outcome.kill.sent
    assert state(outcome.before["caller"]) in LIVE
    assert (state(outcome.before["callee"]), outcome.before["callee"]["attempts"]) == ("working", 1)
    assert outcome.runs == [2]  # run by the restarted callee (its second attempt) and by no one before the kill
    assert_completed_once(outcome, attempt=2)


def test_a_callee_killed_before_the_task_key_is_committed_gets_the_request_again_and_runs_it_once(
        tmp_path: Path) -> None:
    task_id, outcome = crash_then_restart(tmp_path, "alice:serve:before")
    assert (outcome.kill.point, outcome.kill.pending, outcome.kill.runs) == ("before serve", True, 0)
    assert f"call.request {task_id}" in outcome.kill.sent
    assert state(outcome.before["caller"]) in LIVE
    assert state(outcome.before["callee"]) is None  # the key was not durable: the callee forgot the task...
    assert outcome.runs == [1]  # ...which had not run, and runs once when the restarted caller sends it again
    assert_completed_once(outcome, attempt=1)


# ---- before the answer leaves: the callee's outcome -------------------------------------------------------

def test_a_callee_killed_after_the_outcome_is_committed_just_before_the_answer_leaves_answers_from_the_store(
        tmp_path: Path) -> None:
    task_id, outcome = crash_then_restart(tmp_path, "alice:execute:after")
    assert (outcome.kill.point, outcome.kill.runs) == ("after execute", 1)
    assert f"call.result {task_id}" not in outcome.kill.sent  # the answer had not left
    assert state(outcome.before["caller"]) in LIVE  # perhaps acknowledged (working), not answered
    assert state(outcome.before["callee"]) == "completed"
    assert outcome.runs == [1]  # the request, sent again by the restarted caller, is answered from the store
    assert_completed_once(outcome, attempt=1)


def test_a_callee_killed_after_the_skill_ran_but_before_its_outcome_is_committed_runs_it_again_as_attempt_2(
        tmp_path: Path) -> None:
    # The window before the third commit: to the store, a skill whose outcome was not committed is a skill still
    # running, and a callee runs again a task that was running when it crashed (README, "Restarts": the skill sees
    # ctx.attempt == 2; side effects must be idempotent or check it). The caller gets one answer: the second run's.
    task_id, outcome = crash_then_restart(tmp_path, "alice:execute:before")
    assert (outcome.kill.point, outcome.kill.pending, outcome.kill.runs) == ("before execute", True, 1)
    assert f"call.result {task_id}" not in outcome.kill.sent  # no answer left before the commit
    assert state(outcome.before["caller"]) in LIVE
    assert (state(outcome.before["callee"]), outcome.before["callee"]["result"]) == ("working", None)
    assert outcome.runs == [1, 2]
    assert_completed_once(outcome, attempt=2)
