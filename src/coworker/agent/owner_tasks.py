"""The owner's tasks as an MCP host sees them: a peer's skill (the agent's durable task) or one of the agent's own
skills run as a local task; where each stands, its progress since report N, cancel.

One object serves both ways ``coworker mcp`` reaches an agent: in its own process (the bridge holds it) or in the
process that runs the agent (the control port holds it, and the bridge asks through the port). Every wait is
bounded by the caller; a long-poll for progress returns as soon as there is something new or the task ended.

A local task runs as a task of the agent's event loop, bound and run as the runtime runs a peer's call, the caller
being the owner at PRIVILEGED. It is stored as a served task whose caller is the agent itself, before it runs and
with its outcome, so that ``task`` finds it after the MCP process or the agent restarts (the latest
:data:`LOCAL_KEPT` are also kept in memory, with their progress); one the agent was running when it stopped is run
again when it starts (as any served task: ``ctx.attempt == 2``), and nothing of it is sent anywhere. It ends when
:meth:`OwnerTasks.close` cancels it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from coworker._errors import CoworkerError, error_from_wire
from coworker.core.skills import CallContext, Skill
from coworker.core.tasks import LIVE, Progress, TaskState
from coworker.core.trust import TrustTier
from coworker.store.records import Store, TaskRecord

LOCAL_KEPT = 1000  # local tasks remembered (the oldest ended ones are forgotten first)
REPORTS_KEPT = 1000  # progress reports kept per local task (the latest)


class TaskAgent(Protocol):
    """What :class:`OwnerTasks` needs of an agent (:class:`~coworker.agent.agent.AsyncAgent` is one)."""

    wallet: str

    @property
    def store(self) -> Store: ...

    @property
    def skills(self) -> Mapping[str, Skill]: ...
    async def request(self, wallet: str, skill: str, input: dict[str, Any] | None = None) -> str: ...
    async def wait(self, task_id: str, timeout: float | None = None) -> Any: ...
    def get_result(self, task_id: str) -> dict[str, Any]: ...
    async def cancel(self, task_id: str) -> bool: ...
    def watch(self, task_id: str) -> AsyncGenerator[Progress, None]: ...


@dataclass
class _LocalTask:
    id: str
    skill: str
    runner: asyncio.Task[Any] | None = None
    reports: list[tuple[float | None, str]] = field(default_factory=list)
    dropped: int = 0  # reports forgotten from the front
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, progress: float | None, message: str) -> None:
        self.reports.append((progress, message))
        if len(self.reports) > REPORTS_KEPT:
            del self.reports[0]
            self.dropped += 1
        self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class OwnerTasks:
    """The tasks the owner starts through ``coworker mcp``, peer's and local."""

    def __init__(self, agent: TaskAgent) -> None:
        self.agent = agent
        self._local: dict[str, _LocalTask] = {}

    async def request(self, wallet: str, skill: str, input: dict[str, Any]) -> str:
        """A peer's skill as the agent's durable task; its id."""
        return await self.agent.request(wallet, skill, input)

    def run_skill(self, name: str, input: dict[str, Any]) -> str:
        """One of the agent's own skills as a local task; its id. InvalidInput before anything runs."""
        skill = self.agent.skills.get(name)
        if skill is None:
            raise error_from_wire("SKILL_NOT_FOUND", f"this agent has no skill named {name!r}")
        loop = asyncio.get_running_loop()
        task = _LocalTask(id=uuid.uuid4().hex, skill=name)

        def report(progress: float | None, message: str) -> None:  # from a sync skill's worker thread too
            loop.call_soon_threadsafe(task.add, progress, message)

        ctx = CallContext(caller=self.agent.wallet, trust_tier=TrustTier.PRIVILEGED, call_id=task.id, skill=name,
                          _reporter=report)
        kwargs = skill.bind(input, ctx)
        store, now = self.agent.store, time.time()
        record = TaskRecord(task.id, "in", self.agent.wallet, name, TaskState.WORKING, input, now,
                            version=skill.version, updated_at=now, last_activity=now, attempts=1)
        store.add_task(record)
        store.flush()  # stored before it runs: after a restart the agent runs it again, and `task` finds it
        task.runner = loop.create_task(_run(skill, kwargs), name=f"coworker-local-{task.id}")
        task.runner.add_done_callback(lambda done: _store_outcome(store, record, done))
        task.runner.add_done_callback(lambda _: loop.call_soon(task._wake))  # after the reports queued before
        self._local[task.id] = task
        self._forget_oldest()
        return task.id

    def _forget_oldest(self) -> None:
        for task_id in list(self._local):
            if len(self._local) <= LOCAL_KEPT:
                return
            runner = self._local[task_id].runner
            if runner is not None and runner.done():
                del self._local[task_id]

    def is_local(self, task_id: str) -> bool:
        return task_id in self._local

    async def state(self, task_id: str, wait: float = 0.0) -> dict[str, Any]:
        """Where a task stands once it ended or ``wait`` seconds passed (``get_result``'s dict)."""
        local = self._local.get(task_id)
        if local is not None:
            assert local.runner is not None
            if wait > 0:
                with contextlib.suppress(TimeoutError, CoworkerError):
                    await asyncio.wait_for(asyncio.shield(local.runner), wait)
            return _local_state(local)
        if wait > 0:
            with contextlib.suppress(CoworkerError):  # CallTimeout, or the task's own error: read below
                await self.agent.wait(task_id, wait)
        return self.agent.get_result(task_id)

    async def progress(self, task_id: str, since: int, wait: float) -> dict[str, Any]:
        """The task's progress reports after the first ``since``, waiting up to ``wait`` seconds for one:
        ``{"reports": [[progress, message], ...], "next": n, "done": bool}`` (``next``: ``since`` for the next
        ask; ``done``: no more will come)."""
        local = self._local.get(task_id)
        if local is not None:
            runner = local.runner
            assert runner is not None
            if local.dropped + len(local.reports) <= since and not runner.done() and wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(local.changed.wait(), wait)
            total = local.dropped + len(local.reports)
            new = local.reports[max(0, since - local.dropped):]
            return {"reports": [list(r) for r in new], "next": total, "done": runner.done()}
        reports: list[list[Any]] = []
        seen, done = 0, False
        loop = asyncio.get_running_loop()
        # The watch starts from the reports kept so far: skip the first ``since``; those queued already come
        # without waiting, so once one is new the deadline moves to now and the rest of the queue still comes.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(wait, 0.0)) as deadline, \
                    contextlib.aclosing(self.agent.watch(task_id)) as feed:
                async for event in feed:
                    seen += 1
                    if seen > since:
                        reports.append([event.progress, event.message])
                        deadline.reschedule(loop.time())
                done = True
        if not done and self.agent.get_result(task_id)["state"] not in LIVE:
            done = True
        return {"reports": reports, "next": max(seen, since), "done": done}

    async def cancel(self, task_id: str) -> bool:
        """Cancel a task (at the peer too); False when it had ended."""
        local = self._local.get(task_id)
        if local is not None:
            assert local.runner is not None
            return local.runner.cancel()
        return await self.agent.cancel(task_id)

    async def close(self) -> None:
        """Cancel the local tasks still running and wait (bounded) for them to end."""
        runners = [t.runner for t in self._local.values() if t.runner is not None and not t.runner.done()]
        for runner in runners:
            runner.cancel()
        if runners:
            await asyncio.wait(runners, timeout=5)


def _store_outcome(store: Store, record: TaskRecord, runner: asyncio.Task[Any]) -> None:
    """A local task's outcome, as its record in the store (a canceled one stays canceled after a restart)."""
    if store.closed:
        return  # the agent stopped first: the task runs again when it starts
    now = time.time()
    if runner.cancelled():
        store.update_task(record, state=TaskState.CANCELED, updated_at=now, error_code="CANCELED",
                          error_message="canceled by the owner")
    elif (exc := runner.exception()) is not None:
        store.update_task(record, state=TaskState.FAILED, updated_at=now,
                          error_code=getattr(exc, "code", "SKILL_FAILED"), error_message=str(exc))
    else:
        store.update_task(record, state=TaskState.COMPLETED, updated_at=now, output=runner.result())
    store.flush()


async def _run(skill: Skill, kwargs: dict[str, Any]) -> Any:
    return await skill.run(kwargs)


def _local_state(task: _LocalTask) -> dict[str, Any]:
    runner = task.runner
    assert runner is not None
    base = {"task_id": task.id, "skill": task.skill, "direction": "local"}
    if not runner.done():
        return {**base, "state": str(TaskState.WORKING)}
    if runner.cancelled():
        return {**base, "state": str(TaskState.CANCELED),
                "error": {"code": "CANCELED", "message": "canceled", "path": ""}}
    exc = runner.exception()
    if exc is not None:
        return {**base, "state": str(TaskState.FAILED),
                "error": {"code": getattr(exc, "code", "SKILL_FAILED"), "message": str(exc),
                          "path": getattr(exc, "path", "")}}
    return {**base, "state": str(TaskState.COMPLETED), "result": runner.result()}
