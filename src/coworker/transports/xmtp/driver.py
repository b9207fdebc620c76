"""A Python handle on ``sidecar/driver.mjs``: one XMTP Node SDK client in its own process.

The driver speaks JSON lines (its header documents the commands and events). This class writes
commands, matches replies by id and buffers events so a caller can wait for one with a bound. One
reader task owns stdout and one drains stderr (kept in :attr:`NodeDriver.stderr_tail` for error
messages); :meth:`close` ends both, closes stdin, waits for the process with a bound, then kills it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from coworker.transports.xmtp import node
from coworker.transports.xmtp.transport import settle_reply

_LINE_LIMIT = 64 * 1024 * 1024

Event = dict[str, Any]


class NodeDriverError(Exception):
    """The driver process failed, or a command it ran failed (``name`` is the JS error's name)."""

    def __init__(self, message: str, name: str = "DriverError") -> None:
        super().__init__(message)
        self.name = name


def default_node_dir() -> Path:
    """The installed Node side holding ``driver.mjs`` (see :func:`coworker.transports.xmtp.node.install_dir`)."""
    return node.install_dir()


def node_sdk_available(node_dir: Path | None = None) -> bool:
    """True when ``node`` is on PATH and the Node package's dependencies are installed."""
    return node.node_available(node_dir)


class NodeDriver:
    """One ``driver.mjs`` process. Create with :meth:`start`; always :meth:`close`.

    Example::

        alice = await NodeDriver.start()
        me = await alice.request("create", dbPath=str(tmp / "alice.db3"))
        await alice.request("stream")
        event = await alice.wait_event(lambda e: e["event"] == "message" and not e["isSelf"])
        await alice.close()
    """

    def __init__(self, process: asyncio.subprocess.Process, name: str) -> None:
        self.name = name
        self._process = process
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: list[Event] = []
        self._taken: set[int] = set()
        self._new_event = asyncio.Condition()
        self._ready: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=50)
        self._tasks = [
            asyncio.create_task(self._read_stdout(), name=f"{name}-stdout"),
            asyncio.create_task(self._read_stderr(), name=f"{name}-stderr"),
        ]

    @classmethod
    async def start(
        cls,
        name: str = "driver",
        *,
        node_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
        ready_timeout: float = 30.0,
    ) -> NodeDriver:
        """Start ``node driver.mjs`` and wait (bounded) for its ``ready`` event.

        Raises:
            NodeDriverError: Node or the package's dependencies are missing, or it did not start.
        """
        directory = node_dir or default_node_dir()
        if not node_sdk_available(directory):
            raise NodeDriverError(f"the Node SDK is not installed in {directory}: run `coworker setup`")
        process = await asyncio.create_subprocess_exec(
            "node",
            str(node.script("driver.mjs", directory)),
            cwd=directory,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **(env or {})},
            limit=_LINE_LIMIT,
        )
        driver = cls(process, name)
        try:
            await asyncio.wait_for(asyncio.shield(driver._ready), ready_timeout)
        except BaseException:
            await driver.close()
            raise
        return driver

    @property
    def pid(self) -> int:
        """The driver's process id."""
        return self._process.pid

    @property
    def events(self) -> list[Event]:
        """Every event received so far, in order (including ones already waited for)."""
        return list(self._events)

    async def request(self, cmd: str, timeout: float = 60.0, **args: Any) -> dict[str, Any]:
        """Run one command and return its result.

        Raises:
            NodeDriverError: the command failed (the message is the SDK's) or the driver died.
            TimeoutError: no reply within ``timeout`` seconds.
        """
        future = self.submit(cmd, **args)
        return await asyncio.wait_for(future, timeout)

    def submit(self, cmd: str, **args: Any) -> asyncio.Future[dict[str, Any]]:
        """Send a command without waiting; the future resolves to its result (for pipelining)."""
        if self._process.returncode is not None or self._process.stdin is None:
            raise NodeDriverError(f"{self.name}: the driver has exited ({self._describe_exit()})")
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        line = json.dumps({"id": request_id, "cmd": cmd, **args}) + "\n"
        self._process.stdin.write(line.encode())
        return future

    async def wait_event(self, predicate: Callable[[Event], bool], timeout: float = 30.0) -> Event:
        """Return the first event not returned before that satisfies ``predicate``.

        Raises:
            TimeoutError: none arrived within ``timeout`` seconds.
        """

        def find() -> Event | None:
            for index, event in enumerate(self._events):
                if index not in self._taken and predicate(event):
                    self._taken.add(index)
                    return event
            return None

        async def wait() -> Event:
            async with self._new_event:
                while True:
                    found = find()
                    if found is not None:
                        return found
                    if self._process.returncode is not None and self._tasks[0].done():
                        raise NodeDriverError(f"{self.name}: the driver has exited ({self._describe_exit()})")
                    await self._new_event.wait()

        try:
            return await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            raise TimeoutError(f"{self.name}: no matching event within {timeout:g} s") from None

    async def wait_message(self, predicate: Callable[[Event], bool] | None = None, timeout: float = 30.0) -> Event:
        """Wait for an application message from someone else (and matching ``predicate``)."""

        def match(event: Event) -> bool:
            if event.get("event") != "message" or event.get("isSelf") or event.get("kind") != "application":
                return False
            return predicate is None or predicate(event)

        return await self.wait_event(match, timeout)

    async def close(self, timeout: float = 5.0) -> None:
        """Ask the driver to exit, wait up to ``timeout`` seconds, then kill it."""
        process = self._process
        if process.returncode is None and process.stdin is not None:
            with contextlib.suppress(Exception):
                process.stdin.write(b'{"cmd": "close"}\n')
                process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fail_pending()

    async def kill(self) -> None:
        """Kill the driver at once (a crash, for tests)."""
        if self._process.returncode is None:
            self._process.kill()
        await self.close()

    def _describe_exit(self) -> str:
        tail = " | ".join(list(self.stderr_tail)[-5:])
        return f"exit code {self._process.returncode}; stderr: {tail or '(empty)'}"

    def _fail_pending(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(NodeDriverError(f"{self.name}: the driver has exited ({self._describe_exit()})"))
        self._pending.clear()
        if not self._ready.done():
            self._ready.set_exception(
                NodeDriverError(f"{self.name}: the driver did not start ({self._describe_exit()})")
            )

    async def _read_stdout(self) -> None:
        assert self._process.stdout is not None
        try:
            async for raw in self._process.stdout:
                try:
                    message = json.loads(raw)
                except json.JSONDecodeError:
                    self.stderr_tail.append(f"(stdout, not JSON) {raw[:200]!r}")
                    continue
                if "event" in message:
                    if message["event"] == "ready" and not self._ready.done():
                        self._ready.set_result(message)
                    async with self._new_event:
                        self._events.append(message)
                        self._new_event.notify_all()
                    continue
                settle_reply(self._pending, message, lambda name, text: NodeDriverError(f"{self.name}: {text}", name))
        finally:
            await self._process.wait()
            self._fail_pending()
            async with self._new_event:
                self._new_event.notify_all()

    async def _read_stderr(self) -> None:
        assert self._process.stderr is not None
        async for raw in self._process.stderr:
            self.stderr_tail.append(raw.decode(errors="replace").rstrip())
