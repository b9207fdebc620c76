"""An MCP server's tools as skills (:meth:`AsyncAgent.add_mcp_server <coworker.agent.agent.AsyncAgent.add_mcp_server>`).

Theory of operation. One :class:`McpServerLink` supervises one MCP server for the agent: it is started when the
agent starts (before the agent answers peers) and stopped after the agent stopped answering them. A command is
split with :func:`shlex.split` and run with no shell over stdio (the MCP SDK's ``stdio_client``: the server gets
the SDK's default environment - PATH, HOME, LANG and the like - not the agent's secrets); an ``http(s)://`` URL is
reached over streamable HTTP. A plain ``http://`` URL must name this machine (``localhost``, ``127.0.0.1``,
``::1``): peers' inputs would cross the network in clear otherwise; a remote server needs ``https://``.

The link owns one asyncio task that holds the connection: it connects, lists the tools, hands them to the agent
(each becomes a skill, see :func:`skill_name`) and then waits until the server's output ends (the process died,
the HTTP session closed) or the agent stops. A pump between the transport and the session notices the end
before any pending request learns of it, so a call that fails because the server went away says so ("the MCP
server X is not running; restarting") rather than the SDK's connection error. The task then reconnects after a
pause that doubles from :data:`RESTART_DELAY` up to :data:`RESTART_DELAY_MAX`. A call made while the server is
down fails at once with that clear error: it does not wait for the restart.

The tools are listed again after each restart and whenever the server sends ``notifications/tools/list_changed``
(the notification only flags them stale and wakes the link's task, which lists them: a request awaited inside
the session's notification callback would stall the session's reader). Each listing is handed to the agent
whole: a new tool becomes a skill, a changed one replaces its skill, and a tool the server no longer has loses
its skill, so a call to it is :class:`SkillNotFound` like any missing skill. A later listing the agent refuses (a
new tool named like a registered skill) is logged and the previous skills stay; at start it fails :meth:`start`.

A call forwards the validated input as the tool's arguments, passes each MCP progress notification to
``ctx.progress`` (``progress / total`` when the server gives a total), and returns the result's
``structuredContent`` when present, else its text blocks joined by newlines: an image, an audio clip or a binary
resource is not forwarded, only named (``[image/png image omitted]``). A result with ``isError`` becomes
:class:`SkillFailed` with its text, file paths blanked as in every error a peer sees. Cancelling the call cancels
the MCP request (the SDK sends ``notifications/cancelled``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import shlex
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from coworker._errors import ConfigurationError, SkillFailed
from coworker.core.skills import CallContext, SkillFunction, public_message, valid_skill_name

log = logging.getLogger("coworker.mcp")

START_TIMEOUT = 30.0  # seconds to start a server, initialize the session and list its tools
STOP_TIMEOUT = 10.0  # seconds the connection gets to close before its task is cancelled
RESTART_DELAY = 0.5  # seconds before the first restart of a server that died; doubles each time
RESTART_DELAY_MAX = 30.0
STABLE_AFTER = 30.0  # seconds up after which a death counts as the first again (the delay starts over)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


@dataclass(frozen=True)
class McpTool:
    """One tool as the server listed it: its name, description and JSON Schemas (``{}``: none given)."""

    name: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]


def parse_target(command_or_url: str | Sequence[str]) -> tuple[str, list[str]]:
    """``("http", [url])`` for an ``http(s)://`` URL, else ``("stdio", argv)``.

    Raises:
        ConfigurationError: an empty command, unbalanced quotes, or a plain-HTTP URL of another machine.
    """
    if isinstance(command_or_url, str):
        text = command_or_url.strip()
        if text.lower().startswith(("http://", "https://")):
            return "http", [_checked_url(text)]
        try:
            argv = shlex.split(text)
        except ValueError as exc:
            raise ConfigurationError(f"cannot split the MCP server command {command_or_url!r}: {exc}") from None
    else:
        argv = [str(part) for part in command_or_url]
    if not argv or not argv[0]:
        raise ConfigurationError("an MCP server is a command (\"npx -y @scope/server\") or an http(s):// URL")
    return "stdio", argv


def _checked_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").lower()
    if not host:
        raise ConfigurationError(f"the MCP server URL {url!r} names no host")
    if parts.scheme == "https" or host in _LOOPBACK_NAMES:
        return url
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).is_loopback:
            return url
    raise ConfigurationError(f"the MCP server URL {url!r} is plain HTTP to another machine: peers' inputs would "
                             f"travel in clear (use https://, or a server on this machine)")


def skill_name(prefix: str | None, tool: str) -> str:
    """The skill a tool becomes: ``<prefix>__<tool>``, or the tool's name without a prefix, with every character
    a skill name may not hold replaced by ``_`` (and a leading ``_`` where it must start with a letter).

    Raises:
        ConfigurationError: the prefix itself is not usable in a skill name.
    """
    if prefix is not None and not valid_skill_name(prefix):
        raise ConfigurationError(f"invalid MCP tool prefix {prefix!r}: use letters, digits, '_', '.', '-'")
    name = _UNSAFE.sub("_", tool) or "_"
    if not (name[0].isascii() and (name[0].isalpha() or name[0] == "_")):
        name = "_" + name
    full = f"{prefix}__{name}" if prefix is not None else name
    return full[:100]


def tool_output(result: dict[str, Any]) -> Any:
    """A ``tools/call`` result (as JSON, camelCase keys) as a skill's output; an ``isError`` one raised.

    Raises:
        SkillFailed: the result has ``isError``.
    """
    parts: list[str] = []
    for block in result.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            parts.append(str(block.get("text", "")))
        elif kind == "resource" and isinstance(block.get("resource"), dict) and "text" in block["resource"]:
            parts.append(str(block["resource"]["text"]))
        elif kind == "resource_link":
            parts.append(f"[resource {block.get('uri', '')}]")
        else:
            mime = block.get("mimeType") or (block.get("resource") or {}).get("mimeType") or "binary"
            parts.append(f"[{mime} {kind} omitted]")
    text = "\n".join(parts)
    if result.get("isError"):
        raise SkillFailed(public_message(Exception(text or "the MCP tool reported an error")))
    structured = result.get("structuredContent")
    return structured if structured is not None else text


def _short_name(kind: str, argv: list[str]) -> str:
    if kind == "http":
        return urllib.parse.urlsplit(argv[0]).netloc
    return argv[0].replace("\\", "/").rsplit("/", 1)[-1]


def _leaf(exc: BaseException) -> BaseException:
    """The first error inside the task groups' exception groups (the one that says what went wrong)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _tools_from(listing: dict[str, Any]) -> list[McpTool]:
    tools = []
    for raw in listing.get("tools") or []:
        schema = raw.get("inputSchema") or {}
        tools.append(McpTool(name=str(raw.get("name", "")),
                             description=str(raw.get("description") or raw.get("title") or ""),
                             input_schema=dict(schema) if schema else {"type": "object"},
                             output_schema=dict(raw.get("outputSchema") or {})))
    return tools


def _dump(model: Any) -> dict[str, Any]:
    data: dict[str, Any] = model.model_dump(by_alias=True, mode="json", exclude_none=True)
    return data


class _Connection:
    """One live session with the server; ``alive`` turns false as soon as the server's output ends."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.alive = True


class McpServerLink:
    """Supervises one MCP server for an agent: connects at :meth:`start`, restarts it when it dies, closes it at
    :meth:`stop`, and runs the calls of the skills its tools became.

    Args:
        command_or_url: a command line (split with :func:`shlex.split`, run with no shell), an argv list, or an
            ``http(s)://`` URL of a streamable-HTTP MCP server.
        prefix: skills are named ``<prefix>__<tool>`` (the tool's name alone when None).
        register: called with all the tools each time they are listed (at start, after a restart, after
            ``tools/list_changed``): the skills become exactly those; raises :class:`ConfigurationError` for a
            tool it cannot take, changing nothing.
    """

    def __init__(self, command_or_url: str | Sequence[str], *, prefix: str | None,
                 register: Callable[[McpServerLink, list[McpTool]], None]) -> None:
        self.kind, self.argv = parse_target(command_or_url)
        if prefix is not None:
            skill_name(prefix, "x")  # a bad prefix is refused when the server is added, not at start
        self.prefix = prefix
        self.label = self.argv[0] if self.kind == "http" else shlex.join(self.argv)  # for the owner's log
        self.name = prefix or _short_name(self.kind, self.argv)  # for peers: no path, argument or token
        self.skill_names: set[str] = set()  # the skills its tools became
        self._register = register
        self._conn: _Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._pause: Callable[[float], Awaitable[None]] = self._sleep  # tests replace it to hold a restart
        self.ready = asyncio.Event()  # set while a session is up
        self.listed = asyncio.Event()  # set each time a listing was handed to register (tests clear it to wait)
        self._tools_stale = False  # the server said its tools changed since they were listed
        self.restarts = 0
        self._up_since: float | None = None

    def __repr__(self) -> str:
        return f"<McpServerLink {self.label!r} {'up' if self.ready.is_set() else 'down'}>"

    # ---- lifecycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, list the tools and register them; the supervision goes on in the background.

        Raises:
            ConfigurationError: the server did not start or answer within :data:`START_TIMEOUT` seconds, or
                ``register`` refused a tool (the server is stopped again).
        """
        if self._task is not None:
            return
        self._stopping = False
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._supervise(started), name=f"coworker-mcp {self.label}")
        try:
            await started
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Close the session and stop the server (bounded: after :data:`STOP_TIMEOUT` seconds it is cancelled)."""
        task, self._task = self._task, None
        self._stopping = True
        self._wake.set()
        if task is None:
            return
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await asyncio.shield(task)
        except TimeoutError:
            log.warning("the MCP server %s did not close within %g s: cancelled", self.label, STOP_TIMEOUT)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        except Exception:  # reported by the task itself
            pass

    async def _sleep(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()  # only stop() sets it while the link pauses

    async def _supervise(self, started: asyncio.Future[None]) -> None:
        delay = RESTART_DELAY
        while not self._stopping:
            self._up_since = None
            try:
                await self._session(started)
            except Exception as caught:
                exc = _leaf(caught)
                if not started.done():
                    why = f"no answer within {START_TIMEOUT:g} s" if isinstance(exc, TimeoutError) \
                        else public_message(exc)
                    started.set_exception(exc if isinstance(exc, ConfigurationError) else ConfigurationError(
                        f"the MCP server {self.label} did not start: {why}"))
                    return
                log.warning("the MCP server %s failed: %s", self.label, public_message(exc))
            if self._stopping:
                return
            if self._up_since is not None and time.monotonic() - self._up_since > STABLE_AFTER:
                delay = RESTART_DELAY
            log.warning("the MCP server %s is not running; restarting in %g s", self.label, delay)
            await self._pause(delay)
            delay = min(delay * 2, RESTART_DELAY_MAX)
            self.restarts += 1

    async def _session(self, started: asyncio.Future[None]) -> None:
        """Connect once and serve calls; return when the server's output ended or stop() was called.

        The pump between the transport's stream and the session's is what notices the end first (see the module
        docstring); its task group is cancelled before the transport closes, which is what lets the pump end.
        """
        import anyio
        from mcp import ClientSession

        self._wake.clear()
        self._tools_stale = False

        async def on_message(message: Any) -> None:
            from mcp import types

            if isinstance(message, types.ToolListChangedNotification):
                self._tools_stale = True
                self._wake.set()

        async with contextlib.AsyncExitStack() as stack:
            async with asyncio.timeout(START_TIMEOUT):
                streams = await stack.enter_async_context(self._transport(stack))
                read, write = streams[0], streams[1]
                send_in, receive_in = anyio.create_memory_object_stream[Any](0)
                group = await stack.enter_async_context(anyio.create_task_group())
                stack.callback(group.cancel_scope.cancel)
                session = await stack.enter_async_context(ClientSession(receive_in, write,
                                                                      message_handler=on_message))
                conn = _Connection(session)

                async def pump() -> None:
                    try:
                        async with read:
                            async for item in read:
                                await send_in.send(item)
                    except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream):
                        pass
                    finally:
                        conn.alive = False  # before the session sees the end: calls then say what happened
                        self._wake.set()
                        await send_in.aclose()

                group.start_soon(pump)
                await session.initialize()
                tools = await self._list_tools(session)
            if started.done():  # a restart: a listing the agent refuses leaves the skills as they were
                self._hand_over(tools)
            else:
                self._register(self, tools)
                self.listed.set()
            self._conn = conn
            self.ready.set()
            if not started.done():
                started.set_result(None)
            log.info("MCP server %s: %d tools (%s)", self.label, len(tools), ", ".join(t.name for t in tools))
            self._up_since = time.monotonic()
            try:
                await self._wake.wait()
                while self._tools_stale and conn.alive and not self._stopping:
                    self._wake.clear()
                    self._tools_stale = False
                    await self._relist(session)
                    await self._wake.wait()
            finally:
                conn.alive = False
                self._conn = None
                self.ready.clear()

    async def _relist(self, session: Any) -> None:
        """List the tools again after ``tools/list_changed`` and hand them to the agent (see the module docstring)."""
        async with asyncio.timeout(START_TIMEOUT):
            tools = await self._list_tools(session)
        if self._hand_over(tools):
            log.info("MCP server %s changed its tools: %d (%s)", self.label, len(tools),
                     ", ".join(t.name for t in tools))

    def _hand_over(self, tools: list[McpTool]) -> bool:
        try:
            self._register(self, tools)
        except ConfigurationError as exc:
            log.warning("the MCP server %s's new list of tools is refused (the skills stay as they were): %s",
                        self.label, exc)
            return False
        self.listed.set()
        return True

    def _transport(self, stack: contextlib.AsyncExitStack) -> contextlib.AbstractAsyncContextManager[Any]:
        if self.kind == "http":
            from mcp.client.streamable_http import streamable_http_client

            return streamable_http_client(self.argv[0])
        from mcp.client.stdio import StdioServerParameters, stdio_client

        errlog: TextIO = sys.stderr  # the server's stderr: the agent's, where its own log lines go
        try:
            errlog.fileno()
        except (AttributeError, OSError, ValueError):  # replaced by an object with no file (captured output)
            errlog = stack.enter_context(open(os.devnull, "w"))  # noqa: SIM115 - closed by the stack
        return stdio_client(StdioServerParameters(command=self.argv[0], args=self.argv[1:]), errlog=errlog)

    @staticmethod
    async def _list_tools(session: Any) -> list[McpTool]:
        from mcp import types

        tools: list[McpTool] = []
        cursor: str | None = None
        for _ in range(100):  # pages; a server that never stops paging is cut there
            params = types.PaginatedRequestParams(cursor=cursor) if cursor is not None else None
            listing = _dump(await session.list_tools(params=params))
            tools.extend(_tools_from(listing))
            cursor = listing.get("nextCursor")
            if not cursor:
                break
        return tools

    # ---- calls ----------------------------------------------------------------------------------------------

    def skill_function(self, tool: str) -> SkillFunction:
        """The function behind the skill ``tool`` becomes (for ``add_skill`` with the tool's input schema)."""

        async def call_mcp_tool(_call_context: CallContext, **data: Any) -> Any:
            return await self.call(tool, data, _call_context)

        call_mcp_tool.__name__ = "call_mcp_tool"
        return call_mcp_tool

    def _down(self) -> SkillFailed:
        if self._stopping:
            return SkillFailed(f"the MCP server {self.name} is not running (the agent is stopping)")
        return SkillFailed(f"the MCP server {self.name} is not running; restarting")

    async def call(self, tool: str, arguments: dict[str, Any], ctx: CallContext) -> Any:
        """Call ``tool`` with ``arguments``, its progress passed to ``ctx``; its output as :func:`tool_output` says.

        Raises:
            SkillFailed: the server is down (being restarted), the tool failed, or the server refused the call.
        """
        conn = self._conn
        if conn is None or not conn.alive:
            raise self._down()

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            fraction = progress / total if total else None
            ctx.progress(None if fraction is None else min(1.0, max(0.0, fraction)),
                         message or ("" if total else f"{progress:g}"))

        try:
            result = await conn.session.call_tool(tool, arguments, progress_callback=on_progress)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not conn.alive:
                raise self._down() from None
            raise SkillFailed(f"the MCP server {self.name}: {public_message(exc)}") from None
        return tool_output(_dump(result))
