"""The runtime's background tasks, owned in one place: spawned with a name, errors logged, closed with a bound."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("coworker.runtime")

SHUTDOWN_GRACE = 5.0  # seconds running handlers get on close before they are cancelled


class TaskSet:
    """The runtime's background tasks: every task is tracked, errors are logged, close cancels and awaits."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    def __len__(self) -> int:
        return len(self._tasks)

    async def idle(self, timeout: float) -> None:
        """Wait until no task is left, also those spawned meanwhile (tests and benchmarks use it to know that every
        message received so far has been handled).

        Raises:
            TimeoutError: tasks were still running after ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            while self._tasks:
                await asyncio.wait(set(self._tasks))

    async def close(self, grace: float) -> None:
        """Let the tasks finish for ``grace`` seconds, then cancel them and wait for them (as long again)."""
        if self._tasks and grace > 0:
            await asyncio.wait(set(self._tasks), timeout=grace)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=max(grace, SHUTDOWN_GRACE))
