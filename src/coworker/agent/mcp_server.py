"""An agent as an MCP server: its skills, its pinned peers' skills and a few fixed tools, for MCP hosts
(Claude Desktop, Cursor, ...). ``coworker mcp`` runs it over stdio or streamable HTTP.

Theory of operation. :class:`McpBridge` turns what the agent knows into MCP tools and MCP calls into CoWorker
tasks, and nothing else: it never talks to a peer itself.

- Tools: each of the agent's own skills by name; for each pinned peer, each skill that peer lets us see
  (exactly what its last ``discover`` answer listed: a hidden or above-tier skill is never in that answer) as
  ``<peer name>__<skill>``; and the fixed tools ``peers``, ``connect``, ``call``, ``task``, ``cancel`` and
  ``request_trust``. Names are sanitised to what MCP hosts accept and made unique. The list is computed again
  after every tool call that may change it (connect, request_trust) and when it changed the server sends
  ``notifications/tools/list_changed``.
- A call is a task. A peer's skill is :meth:`AsyncAgent.request` (stored before it is sent: durable, found again
  after a restart); one of our own skills runs as a local task of this process (bound and run as the runtime
  runs a peer's call, the caller being the owner at PRIVILEGED). The tool waits up to ``wait`` seconds (MCP hosts
  give a tool call about a minute); past that it returns ``{"task_id", "state"}`` and the ``task`` tool fetches
  the result later. Progress reports become MCP progress notifications; an MCP cancellation cancels the task
  (at the peer too); errors are ``isError`` results carrying the CoWorker error code and message.

The ``mcp`` SDK is imported here only: ``import coworker`` never loads it (``coworker mcp`` imports this module).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import socket
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import mcp_types as types
from mcp.server.lowlevel.server import NotificationOptions, Server

from coworker._errors import ConfigurationError, CoworkerError, error_from_wire
from coworker.agent.agent import AsyncAgent
from coworker.agent.peer import peer_json
from coworker.core.skills import CallContext, Skill
from coworker.core.tasks import LIVE, TaskState
from coworker.core.trust import TrustTier
from coworker.core.wallets import checksum

log = logging.getLogger("coworker.mcp")

DEFAULT_WAIT = 50.0  # seconds a tool call waits for its task before returning the task id
CONNECT_TIMEOUT = 30.0
_NAME = re.compile(r"[^A-Za-z0-9_-]")
_FIXED = ("peers", "connect", "call", "task", "cancel", "request_trust")

_PENDING = {"type": "object", "properties": {"task_id": {"type": "string"}, "state": {"type": "string"}},
            "required": ["task_id", "state"]}


def tool_name(text: str) -> str:
    """``text`` as an MCP tool name: letters, digits, ``_`` and ``-`` only, at most 64 characters."""
    return _NAME.sub("_", text)[:64] or "_"


def _wrapped(schema: dict[str, Any] | None) -> tuple[dict[str, Any] | None, bool]:
    """The MCP output schema for a skill's output schema, and whether outputs are wrapped as ``{"result": ...}``
    (MCP structured content is an object). A result still running (``{"task_id", "state"}``) fits either way."""
    if not schema:
        return None, False
    if schema.get("type") == "object":
        return {"type": "object", "anyOf": [schema, _PENDING]}, False
    return {"type": "object", "anyOf": [{"type": "object", "properties": {"result": schema},
                                         "required": ["result"]}, _PENDING]}, True


@dataclass
class _Target:
    """What an MCP tool runs: one of our skills (wallet None) or a peer's."""

    skill: str
    wallet: str | None
    wrap: bool


@dataclass
class _LocalTask:
    """One of our own skills run for the MCP host, in this process."""

    id: str
    skill: str
    runner: asyncio.Task[Any] | None = None
    reports: asyncio.Queue[tuple[float | None, str]] = field(default_factory=asyncio.Queue)


class McpBridge:
    """The MCP server of one running agent.

    Args:
        agent: the agent, started by the caller.
        peers: the wallets whose skills are offered as tools.
        wait: seconds a tool call waits for its task before it returns the task id.

    Example::

        async with AsyncAgent("me") as agent:
            await McpBridge(agent, peers=[wallet]).run_stdio()
    """

    def __init__(self, agent: AsyncAgent, *, peers: Sequence[str] = (), wait: float = DEFAULT_WAIT) -> None:
        if not wait > 0:
            raise ConfigurationError(f"wait must be a positive number of seconds, got {wait!r}")
        self.agent = agent
        self.pinned = [checksum(w) for w in peers]
        self.wait = float(wait)
        self._local: dict[str, _LocalTask] = {}
        self._targets: dict[str, _Target] = {}
        self._tools: list[types.Tool] = []
        self._sessions: list[Any] = []  # sessions to tell when the tool list changes
        self.server: Server[Any] = Server("coworker-" + agent.name, version="1", on_list_tools=self._list_tools,
                                          on_call_tool=self._call_tool)
        self._fixed: dict[str, Callable[[Any, dict[str, Any]], Awaitable[Any]]] = {
            "peers": self._peers, "connect": self._connect, "task": self._task, "cancel": self._cancel_tool,
            "request_trust": self._request_trust}
        self.refresh()

    # ---- tools ----------------------------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Compute the tool list again from the agent's skills and the pinned peers' last known cards;
        True when it changed."""
        tools: list[types.Tool] = []
        targets: dict[str, _Target] = {}
        taken: set[str] = set()

        def unique(name: str) -> str:
            base, n = tool_name(name), 2
            name = base
            while name in taken:
                name, n = f"{base[:60]}_{n}", n + 1
            taken.add(name)
            return name

        for fixed in _FIXED:
            tools.append(_fixed_tool(unique(fixed)))
        for skill in self.agent.skills.values():
            tools.append(self._skill_tool(unique(skill.name), skill.card(), None, targets))
        for wallet in self.pinned:
            record = self.agent.store.peer(wallet)
            if record is None or not record.card:
                continue
            for card in record.card.get("skills") or []:
                if isinstance(card, dict) and isinstance(card.get("name"), str):
                    name = unique(f"{record.name}__{card['name']}")
                    tools.append(self._skill_tool(name, card, wallet, targets, peer=record.name))
        changed = [t.model_dump() for t in tools] != [t.model_dump() for t in self._tools]
        self._tools, self._targets = tools, targets
        return changed

    def _skill_tool(self, name: str, card: dict[str, Any], wallet: str | None, targets: dict[str, _Target],
                    peer: str = "") -> types.Tool:
        output, wrap = _wrapped(card.get("output_schema"))
        targets[name] = _Target(card["name"], wallet, wrap)
        where = f"Skill {card['name']!r} of peer {peer!r} ({wallet}). " if wallet else ""
        schema = card.get("input_schema") or {"type": "object"}
        return types.Tool(name=name, description=where + str(card.get("description") or card["name"]),
                          input_schema=schema if schema.get("type") == "object" else {"type": "object"},
                          output_schema=output)

    async def _changed(self) -> None:
        if not self.refresh():
            return
        for session in list(self._sessions):
            try:
                await session.send_tool_list_changed()
            except Exception:  # a session that went away
                self._sessions.remove(session)

    async def connect_pinned(self) -> None:
        """Discover every pinned peer (bounded), so that its skills become tools; a peer that does not answer
        keeps its last known skills."""
        async def one(wallet: str) -> None:
            try:
                await self.agent.connect(wallet, timeout=CONNECT_TIMEOUT)
            except CoworkerError as exc:
                log.warning("pinned peer %s: %s", wallet, exc)

        await asyncio.gather(*(one(w) for w in self.pinned))
        await self._changed()

    async def _list_tools(self, ctx: Any, params: Any) -> types.ListToolsResult:
        self._remember(ctx)
        return types.ListToolsResult(tools=list(self._tools))

    def _remember(self, ctx: Any) -> None:
        session = getattr(ctx, "session", None)
        if session is not None and session not in self._sessions:
            self._sessions.append(session)

    # ---- calls ----------------------------------------------------------------------------------------------

    async def _call_tool(self, ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        self._remember(ctx)
        args = dict(params.arguments or {})
        try:
            if params.name in self._targets:
                target = self._targets[params.name]
                return await self._run(ctx, target.wallet, target.skill, args, target.wrap)
            if params.name == "call":  # a task like a skill tool's, unwrapped
                return await self._run(ctx, checksum(args["wallet"]), str(args["skill"]), dict(args.get("input") or {}),
                                       False, structured=False)
            fixed = self._fixed.get(params.name)
            if fixed is None:
                raise ConfigurationError(f"no tool named {params.name!r}")
            result = await fixed(ctx, args)
            await self._changed()
            return _ok(result, structured=False)
        except CoworkerError as exc:
            return _error(exc)
        except (KeyError, TypeError, ValueError) as exc:
            return _error(ConfigurationError(f"bad arguments to {params.name}: {exc!r}"))

    async def _run(self, ctx: Any, wallet: str | None, skill: str, args: dict[str, Any], wrap: bool,
                   structured: bool = True) -> types.CallToolResult:
        """Start the task, forward its progress, wait up to ``self.wait``; cancel it when the host cancels."""
        session = getattr(ctx, "session", None)
        if wallet is None:
            local = self._start_local(skill, args)
            task_id, feed = local.id, local.reports
        else:
            task_id, feed = await self.agent.request(wallet, skill, args), asyncio.Queue()

        async def pump() -> None:  # a peer's reports, from the agent's watch
            async for update in self.agent.watch(task_id):
                feed.put_nowait((update.progress, update.message))

        count = 0

        async def send(progress: float | None, message: str) -> None:
            nonlocal count
            count += 1
            if session is not None:
                await session.report_progress(progress if progress is not None else count, None, message or None)

        async def forward() -> None:
            while True:
                await send(*await feed.get())

        try:
            async with asyncio.TaskGroup() as group:
                forwarder = group.create_task(forward())
                pumper = group.create_task(pump()) if wallet is not None else None
                try:
                    state = await self._wait(task_id, self.wait)
                finally:
                    forwarder.cancel()
                    if pumper is not None:
                        pumper.cancel()
        except asyncio.CancelledError:  # the host canceled the call: so does the task, at the peer too
            with contextlib.suppress(CoworkerError):
                await self._cancel(task_id)
            raise
        while not feed.empty():  # reports made before the task ended, not forwarded yet
            await send(*feed.get_nowait())
        if state["state"] in LIVE:
            return _ok({"task_id": task_id, "state": state["state"]}, structured=structured,
                       text=f"task {task_id} is still {state['state']}: fetch its result with the task tool")
        if state["state"] != TaskState.COMPLETED:
            error = state.get("error") or {}
            return _error(error_from_wire(error.get("code") or "CALL_ERROR", error.get("message") or state["state"],
                                          error.get("path") or ""))
        output = state.get("result")
        return _ok({"result": output} if wrap or not isinstance(output, dict) else output, structured=structured)

    async def _wait(self, task_id: str, timeout: float) -> dict[str, Any]:
        """Where the task stands after it ended or ``timeout`` passed."""
        local = self._local.get(task_id)
        if local is not None:
            assert local.runner is not None
            with contextlib.suppress(TimeoutError, CoworkerError):
                await asyncio.wait_for(asyncio.shield(local.runner), timeout)
            return self._local_state(local)
        with contextlib.suppress(CoworkerError):  # CallTimeout, or the task's own error: read below
            await self.agent.wait(task_id, timeout)
        return self.agent.get_result(task_id)

    async def _cancel(self, task_id: str) -> bool:
        local = self._local.get(task_id)
        if local is not None:
            assert local.runner is not None
            return local.runner.cancel()
        return await self.agent.cancel(task_id)

    # ---- our own skills, as local tasks ---------------------------------------------------------------------

    def _start_local(self, name: str, args: dict[str, Any]) -> _LocalTask:
        skill = self.agent.skills.get(name)
        if skill is None:
            raise error_from_wire("SKILL_NOT_FOUND", f"{self.agent.name} has no skill named {name!r}")
        loop = asyncio.get_running_loop()
        task = _LocalTask(id=uuid.uuid4().hex, skill=name)

        def report(progress: float | None, message: str) -> None:  # from a sync skill's worker thread too
            loop.call_soon_threadsafe(task.reports.put_nowait, (progress, message))

        ctx = CallContext(caller=self.agent.wallet, trust_tier=TrustTier.PRIVILEGED, call_id=task.id, skill=name,
                          _reporter=report)
        kwargs = skill.bind(args, ctx)  # InvalidInput before anything runs
        task.runner = loop.create_task(_run_skill(skill, kwargs), name=f"coworker-mcp-{task.id}")
        self._local[task.id] = task
        return task

    def _local_state(self, task: _LocalTask) -> dict[str, Any]:
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

    # ---- fixed tools ----------------------------------------------------------------------------------------

    async def _peers(self, ctx: Any, args: dict[str, Any]) -> Any:
        pinned = {w.lower() for w in self.pinned}
        return [{"wallet": p.wallet, "name": p.name, "pinned": p.wallet.lower() in pinned,
                 "skills": [c.get("name") for c in (p.card or {}).get("skills") or []],
                 "trust_tier": self.agent.trust_tier(p.wallet).name.lower()} for p in self.agent.peers()]

    async def _connect(self, ctx: Any, args: dict[str, Any]) -> Any:
        return peer_json(await self.agent.connect(args["wallet"], timeout=float(args.get("timeout", CONNECT_TIMEOUT))))

    async def _task(self, ctx: Any, args: dict[str, Any]) -> Any:
        task_id = str(args["task_id"])
        local = self._local.get(task_id)
        if local is not None:
            return self._local_state(local)
        wait = float(args.get("wait", 0))
        if wait > 0:
            return await self._wait(task_id, min(wait, self.wait))
        return self.agent.get_result(task_id)

    async def _cancel_tool(self, ctx: Any, args: dict[str, Any]) -> Any:
        return {"canceled": await self._cancel(str(args["task_id"]))}

    async def _request_trust(self, ctx: Any, args: dict[str, Any]) -> Any:
        state = await self.agent.request_trust(args["wallet"], args.get("tier", "known"), args.get("reason", ""))
        with contextlib.suppress(CoworkerError):
            await self.agent.connect(args["wallet"], timeout=CONNECT_TIMEOUT)  # what it lets us see now
        return {"state": state}

    # ---- transports -----------------------------------------------------------------------------------------

    def _options(self) -> Any:
        return self.server.create_initialization_options(NotificationOptions(tools_changed=True))

    async def run_stdio(self) -> None:
        """Serve MCP on stdin/stdout until the host closes stdin."""
        from mcp.server.stdio import stdio_server

        async with stdio_server() as (read, write):
            await self.server.run(read, write, self._options())

    async def run_http(self, port: int, token: str, ready: Callable[[int], None] | None = None) -> None:
        """Serve streamable HTTP on 127.0.0.1:``port`` (0: any free port), for requests that carry
        ``Authorization: Bearer <token>`` and a loopback Host/Origin (the SDK's DNS-rebinding protection)."""
        import uvicorn
        from mcp.server.transport_security import TransportSecuritySettings

        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True, allowed_hosts=["127.0.0.1:*", "localhost:*"],
            allowed_origins=["http://127.0.0.1:*", "http://localhost:*"])
        app = self.server.streamable_http_app(host="127.0.0.1", transport_security=security)
        config = uvicorn.Config(_BearerGate(app, token), log_level="warning", lifespan="on")
        # Bound and listening before uvicorn runs: the port is known (port 0 picks one) and a client that
        # connects at once waits in the backlog.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
        if ready is not None:
            ready(sock.getsockname()[1])
        with sock:
            await uvicorn.Server(config).serve(sockets=[sock])


class _BearerGate:
    """ASGI middleware: a request without the bearer token gets 401 before the MCP app sees it."""

    def __init__(self, app: Any, token: str) -> None:
        self.app, self._token = app, ("Bearer " + token).encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self._token):
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"text/plain"), (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body", "body": b"a bearer token is required\n"})
                return
        await self.app(scope, receive, send)


async def _run_skill(skill: Skill, kwargs: dict[str, Any]) -> Any:
    return await skill.run(kwargs)


def _ok(value: Any, *, structured: bool, text: str | None = None) -> types.CallToolResult:
    body = text if text is not None else json.dumps(value, ensure_ascii=False, default=str)
    return types.CallToolResult(content=[types.TextContent(type="text", text=body)],
                                structured_content=value if structured and isinstance(value, dict) else None)


def _error(exc: CoworkerError) -> types.CallToolResult:
    code = getattr(exc, "code", None) or type(exc).__name__
    return types.CallToolResult(content=[types.TextContent(type="text", text=f"{code}: {exc}")], is_error=True,
                                structured_content=None)


def _fixed_tool(name: str) -> types.Tool:
    wallet = {"type": "string", "description": "the peer's wallet address (0x...)"}
    task_id = {"type": "string", "description": "the task id a call returned"}
    specs: dict[str, tuple[str, dict[str, Any], list[str]]] = {
        "peers": ("The peers this agent knows: wallet, name, the skills they let us see, our trust in them.", {},
                  []),
        "connect": ("Discover a peer by wallet: its name and the skills it lets us see.", {"wallet": wallet},
                    ["wallet"]),
        "call": ("Run any skill of any peer (by wallet). Returns the skill's output, or a task_id and state "
                 "when it runs longer than the wait: then fetch the result with the task tool.",
                 {"wallet": wallet, "skill": {"type": "string"}, "input": {"type": "object"}}, ["wallet", "skill"]),
        "task": ("Where a task stands: its state, and its result or error once it ended. wait: seconds to wait "
                 "for its end first.", {"task_id": task_id, "wait": {"type": "number"}}, ["task_id"]),
        "cancel": ("Cancel a running task (at the peer too).", {"task_id": task_id}, ["task_id"]),
        "request_trust": ("Ask a peer to trust this agent (tier: known, internal or privileged).",
                          {"wallet": wallet, "tier": {"type": "string"}, "reason": {"type": "string"}}, ["wallet"]),
    }
    description, properties, required = specs[name]
    return types.Tool(name=name, description=description,
                      input_schema={"type": "object", "properties": properties, "required": required})
