"""An agent as an MCP server: its skills, its pinned peers' skills and a few fixed tools, for MCP hosts
(Claude Desktop, Cursor, ...). ``coworker mcp`` runs it over stdio or streamable HTTP.

Theory of operation. :class:`McpBridge` turns what the agent knows into MCP tools and MCP calls into CoWorker
tasks, and nothing else: it never talks to a peer itself.

- The agent: an :class:`~coworker.agent.mcp_backends.McpBackend`. ``AgentBackend`` is an :class:`AsyncAgent`
  this process runs; ``ControlBackend`` is an agent another process runs (``coworker serve``), driven through
  its control port (one process owns an agent). Both hand tasks to
  :class:`~coworker.agent.owner_tasks.OwnerTasks`, in this process or in the agent's.
- Tools: each of the agent's own skills by name; for each pinned peer (given with ``peers``, or marked for MCP by
  the owner: ``coworker mcp pin``, kept in the agent's database), each skill that peer lets us see
  (exactly what its last ``discover`` answer listed: a hidden or above-tier skill is never in that answer) as
  ``<peer name>__<skill>``; and the fixed tools ``peers``, ``connect``, ``call``, ``task``, ``cancel`` and
  ``request_trust``. Names are sanitised to what MCP hosts accept and made unique. The list is computed again
  after every tool call that may change it (connect, request_trust), and :meth:`McpBridge.keep_fresh`
  discovers the pinned peers again every period and at once after a trust change the agent makes (our tier for a
  peer, a peer's answer to our trust request: the store counts them, the backend long-polls the count). When the
  list changed, and only then, the server sends ``notifications/tools/list_changed`` (to hosts of the legacy
  protocol era; those of the 2026-07-28 era get it on the ``subscriptions/listen`` stream they open).
- A call is a task. A peer's skill is :meth:`AsyncAgent.request` (stored before it is sent: durable, found again
  after a restart); one of our own skills runs as a local task of the agent's process (bound and run as the
  runtime runs a peer's call, the caller being the owner at PRIVILEGED). Progress is long-polled from the backend
  (reports since report N), so it flows the same through the control port. The tool waits up to ``wait``
  seconds (MCP hosts give a tool call about a minute); past that it returns ``{"task_id", "state"}`` and the
  ``task`` tool fetches the result later. Progress reports become MCP progress notifications; an MCP
  cancellation cancels the task (at the peer too); errors are ``isError`` results carrying the CoWorker error code
  and message.

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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import mcp_types as types
from mcp.server.lowlevel.server import NotificationOptions, Server
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged

from coworker._errors import ConfigurationError, CoworkerError, error_from_wire
from coworker.agent.agent import AsyncAgent
from coworker.agent.control import MAX_WAIT
from coworker.agent.mcp_backends import CONNECT_TIMEOUT, AgentBackend, McpBackend
from coworker.core.tasks import LIVE, TaskState
from coworker.core.wallets import checksum

log = logging.getLogger("coworker.mcp")

DEFAULT_WAIT = 50.0  # seconds a tool call waits for its task before returning the task id
DEFAULT_REFRESH = 60.0  # seconds between two discoveries of the pinned peers
PROGRESS_POLL = 20.0  # seconds one ask for progress waits for a new report
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


class McpBridge:
    """The MCP server of one running agent.

    Args:
        agent: the agent: an :class:`AsyncAgent` started by the caller, or a :class:`McpBackend`.
        peers: wallets whose skills are offered as tools, besides those the owner marked for MCP (``pins``).
        wait: seconds a tool call waits for its task before it returns the task id.

    Example::

        async with AsyncAgent("me") as agent:
            await McpBridge(agent, peers=[wallet]).run_stdio()
    """

    def __init__(self, agent: AsyncAgent | McpBackend, *, peers: Sequence[str] = (),
                 wait: float = DEFAULT_WAIT) -> None:
        if not wait > 0:
            raise ConfigurationError(f"wait must be a positive number of seconds, got {wait!r}")
        self.backend: McpBackend = AgentBackend(agent) if isinstance(agent, AsyncAgent) else agent
        self._given = [checksum(w) for w in peers]
        self.pinned = list(self._given)  # and the owner's pins, read again at each refresh
        self.wait = float(wait)
        self._targets: dict[str, _Target] = {}
        self._tools: list[types.Tool] = []
        self._sessions: list[Any] = []  # sessions to tell when the tool list changes (hosts of the legacy era)
        self._events = InMemorySubscriptionBus()  # and the hosts of the 2026-07-28 era, which listen for it
        self.server: Server[Any] = Server("coworker-" + self.backend.name, version="1",
                                          on_list_tools=self._list_tools, on_call_tool=self._call_tool,
                                          on_subscriptions_listen=ListenHandler(self._events))
        self._fixed: dict[str, Callable[[Any, dict[str, Any]], Awaitable[Any]]] = {
            "peers": self._peers, "connect": self._connect, "task": self._task, "cancel": self._cancel_tool,
            "request_trust": self._request_trust}

    # ---- tools ----------------------------------------------------------------------------------------------

    async def refresh(self) -> bool:
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

        await self._read_pins()
        cards = await self.backend.skill_cards()
        known = {p["wallet"].lower(): p for p in await self.backend.peers()}
        for fixed in _FIXED:
            tools.append(_fixed_tool(unique(fixed)))
        for card in cards:
            tools.append(self._skill_tool(unique(card["name"]), card, None, targets))
        for wallet in self.pinned:
            record = known.get(wallet.lower())
            if record is None or not record.get("card"):
                continue
            for card in record["card"].get("skills") or []:
                if isinstance(card, dict) and isinstance(card.get("name"), str):
                    name = unique(f"{record['name']}__{card['name']}")
                    tools.append(self._skill_tool(name, card, wallet, targets, peer=record["name"]))
        changed = [t.model_dump() for t in tools] != [t.model_dump() for t in self._tools]
        self._tools, self._targets = tools, targets
        return changed

    async def _read_pins(self) -> None:
        pinned = {w.lower(): w for w in self._given}
        for wallet in await self.backend.pins():
            pinned.setdefault(wallet.lower(), checksum(wallet))
        self.pinned = list(pinned.values())

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
        if not await self.refresh():
            return
        for session in list(self._sessions):
            try:
                await session.send_tool_list_changed()
            except Exception:  # a session that went away
                self._sessions.remove(session)
        await self._events.publish(ToolsListChanged())

    async def connect_pinned(self) -> None:
        """Discover every pinned peer (bounded), so that its skills become tools; a peer that does not answer
        keeps its last known skills."""
        async def one(wallet: str) -> None:
            try:
                await self.backend.connect(wallet, CONNECT_TIMEOUT)
            except CoworkerError as exc:
                log.warning("pinned peer %s: %s", wallet, exc)

        await self._read_pins()
        await asyncio.gather(*(one(w) for w in self.pinned))
        await self._changed()

    async def keep_fresh(self, period: float = DEFAULT_REFRESH) -> None:
        """Discover the pinned peers now, then every ``period`` seconds and at once after each trust change the
        agent makes (our tier for a peer, a peer's answer to our request); ``tools/list_changed`` goes out when the
        list changed. Runs until cancelled."""
        if not period > 0:
            raise ConfigurationError(f"the refresh period must be a positive number of seconds, got {period!r}")
        loop = asyncio.get_running_loop()
        seen = -1
        while True:
            try:
                seen = await self.backend.trust_changes(-1, 0)
                await self.connect_pinned()
                due = loop.time() + period
                while (left := due - loop.time()) > 0:  # woken by a trust change, or at the period's end
                    now = await self.backend.trust_changes(seen, min(left, MAX_WAIT))
                    if now != seen:
                        break
            except CoworkerError as exc:  # the running agent went away, say: try again next period
                log.warning("refreshing the MCP tools: %s", exc)
                await asyncio.sleep(period)

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
        backend = self.backend
        if wallet is None:
            task_id = await backend.run_skill(skill, args)
        else:
            task_id = await backend.request(wallet, skill, args)
        count = since = 0

        async def forward() -> None:  # long-polls the task's reports until it ends
            nonlocal count, since
            while True:
                answer = await backend.progress(task_id, since, PROGRESS_POLL)
                since = int(answer["next"])
                for progress, message in answer["reports"]:
                    count += 1
                    if session is not None:
                        await session.report_progress(progress if progress is not None else count, None,
                                                      message or None)
                if answer["done"]:
                    return

        try:
            async with asyncio.TaskGroup() as group:
                forwarder = group.create_task(forward())
                state = await backend.task(task_id, self.wait)
                if state["state"] in LIVE:
                    forwarder.cancel()
                else:  # the reports made before the end, not forwarded yet (bounded: the task has ended)
                    with contextlib.suppress(TimeoutError, CoworkerError):
                        await asyncio.wait_for(asyncio.shield(forwarder), 10)
                    forwarder.cancel()
        except asyncio.CancelledError:  # the host canceled the call: so does the task, at the peer too
            # The SDK cancels with an anyio scope, which cancels every await inside it again: shielded, bounded.
            with anyio.CancelScope(shield=True), contextlib.suppress(CoworkerError, TimeoutError):
                with anyio.fail_after(CONNECT_TIMEOUT):
                    await backend.cancel(task_id)
            raise
        if state["state"] in LIVE:
            return _ok({"task_id": task_id, "state": state["state"]}, structured=structured,
                       text=f"task {task_id} is still {state['state']}: fetch its result with the task tool")
        if state["state"] != TaskState.COMPLETED:
            error = state.get("error") or {}
            return _error(error_from_wire(error.get("code") or "CALL_ERROR", error.get("message") or state["state"],
                                          error.get("path") or ""))
        output = state.get("result")
        return _ok({"result": output} if wrap or not isinstance(output, dict) else output, structured=structured)

    # ---- fixed tools ----------------------------------------------------------------------------------------

    async def _peers(self, ctx: Any, args: dict[str, Any]) -> Any:
        pinned = {w.lower() for w in self.pinned}
        return [{"wallet": p["wallet"], "name": p["name"], "pinned": p["wallet"].lower() in pinned,
                 "skills": [c.get("name") for c in (p.get("card") or {}).get("skills") or []],
                 "trust_tier": p["trust_tier"]} for p in await self.backend.peers()]

    async def _connect(self, ctx: Any, args: dict[str, Any]) -> Any:
        return await self.backend.connect(args["wallet"], float(args.get("timeout", CONNECT_TIMEOUT)))

    async def _task(self, ctx: Any, args: dict[str, Any]) -> Any:
        return await self.backend.task(str(args["task_id"]), min(float(args.get("wait", 0)), self.wait))

    async def _cancel_tool(self, ctx: Any, args: dict[str, Any]) -> Any:
        return {"canceled": await self.backend.cancel(str(args["task_id"]))}

    async def _request_trust(self, ctx: Any, args: dict[str, Any]) -> Any:
        state = await self.backend.request_trust(args["wallet"], args.get("tier", "known"), args.get("reason", ""))
        with contextlib.suppress(CoworkerError):
            await self.backend.connect(args["wallet"], CONNECT_TIMEOUT)  # what it lets us see now
        return {"state": state}

    # ---- transports -----------------------------------------------------------------------------------------

    def _options(self) -> Any:
        return self.server.create_initialization_options(NotificationOptions(tools_changed=True))

    async def run_stdio(self) -> None:
        """Serve MCP on stdin/stdout until the host closes stdin."""
        from mcp.server.stdio import stdio_server

        await self.refresh()
        async with stdio_server() as (read, write):
            await self.server.run(read, write, self._options())

    async def run_http(self, port: int, token: str, ready: Callable[[int], None] | None = None) -> None:
        """Serve streamable HTTP on 127.0.0.1:``port`` (0: any free port), for requests that carry
        ``Authorization: Bearer <token>`` and a loopback Host/Origin (the SDK's DNS-rebinding protection)."""
        import uvicorn
        from mcp.server.transport_security import TransportSecuritySettings

        await self.refresh()
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True, allowed_hosts=["127.0.0.1:*", "localhost:*"],
            allowed_origins=["http://127.0.0.1:*", "http://localhost:*"])
        app = self.server.streamable_http_app(host="127.0.0.1", transport_security=security)
        config = uvicorn.Config(_BearerGate(app, token), log_level="warning", lifespan="on")
        # Bound and listening before uvicorn runs: the port is known (port 0 picks one) and a client that
        # connects at once waits in the backlog.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # then asyncio sets TCP_NODELAY
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
