"""A running agent's local control endpoint: how the CLI and the demo drive an agent that another process runs.

A started agent listens on a random loopback TCP port and writes the port, a random token and its pid to
``<agent dir>/control.json`` (mode 0600, in a 0700 directory): only a process that can read the agent's directory
can drive it, and every request must carry the token. The protocol is one JSON object per line:

    request:  {"token": "...", "cmd": "call", "args": {"wallet": "0x..", "skill": "echo", "input": {...}}}
    reply:    {"ok": true, "result": ...}
              {"ok": false, "error": {"type": "SkillNotFound", "message": "...", "code": "...", "path": "..."}}

Commands: status, ping, connect, call, request_trust, trust_requests, approve, deny, set_trust, skills, hide_skill,
expose_skill, stop. ``status`` lists only the skills peers may know of; ``skills`` lists every skill with its
visibility. For ``coworker mcp`` through a running agent (:class:`~coworker.agent.owner_tasks.OwnerTasks` does the
work): request (a peer's skill: the task id), run_skill (one of our own skills as a local task: its id), task
(where a task stands, after a wait of at most :data:`MAX_WAIT` seconds), progress (reports since report N,
long-polled for at most :data:`MAX_WAIT` seconds), cancel, skill_cards (our skills' cards) and peers (with their
cards and our trust in them); mcp_pins, mcp_pin and mcp_unpin list, mark and unmark the peers whose skills
``coworker mcp`` offers; trust_changes answers how many trust changes the agent made (our tier for a peer, a peer's
answer to our request) once the count differs from ``since`` (long-polled, bounded). dashboard_link makes a
one-time login link to the agent's dashboard (``coworker dashboard``). Groups (``coworker group``, see
:func:`~coworker.agent.groups.run_group_command`): group_create, groups, group_members, group_add, group_remove,
group_discover, group_leave; a group is named by its id or the start of it.
:class:`ControlClient` raises the same :class:`CoworkerError` subclasses the agent raised.

Any local process can connect before it shows a token, so what one connection may cost is bounded: a request line
holds at most :data:`MAX_REQUEST_BYTES` (a longer one closes the connection), at most :data:`MAX_CONNECTIONS` are
served at once (more are told so and closed at once), a connection that sends no whole line for
:data:`READ_TIMEOUT` seconds is closed, a line is parsed by a parser with a fixed depth limit (not ``json.loads``,
which a deeply nested line drives past the C stack once py_ecc has raised the recursion limit), and tokens are
compared as bytes in constant time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from coworker import _errors
from coworker._errors import (
    ConfigurationError,
    CoworkerError,
    InvalidInput,
    LocalProtocolError,
    RemoteProtocolError,
    TransportError,
)
from coworker.agent.groups import GROUP_COMMANDS, GroupAgent, run_group_command
from coworker.agent.owner_tasks import OwnerTasks, TaskAgent
from coworker.agent.peer import Peer, peer_json
from coworker.core.protocol import MAX_ENVELOPE_BYTES, parse_json
from coworker.core.trust import TrustTier
from coworker.core.wallets import checksum
from coworker.store.identity import write_private
from coworker.store.records import PeerRecord, Store, TrustRequest


class DashboardLinks(Protocol):
    """What the control port needs of a running dashboard (:class:`coworker.dashboard.Dashboard` is one)."""

    @property
    def url(self) -> str: ...
    def login_link(self) -> str: ...


class ControlledAgent(TaskAgent, GroupAgent, Protocol):
    """What the control port needs of an agent (:class:`~coworker.agent.agent.AsyncAgent` is one): what the owner's
    tasks need (:class:`~coworker.agent.owner_tasks.TaskAgent`) and the group commands
    (:class:`~coworker.agent.groups.GroupAgent`), and more."""

    name: str
    wallet: str
    data_dir: Path

    @property
    def network_name(self) -> str: ...
    @property
    def transport(self) -> Any: ...
    def stats(self) -> dict[str, Any]: ...
    async def ping(self, wallet: str, *, timeout: float = 30) -> float: ...
    async def connect(self, wallet: str, *, timeout: float = 30) -> Peer: ...
    async def call(self, wallet: str, skill: str, input: dict[str, Any] | None = None, *,
                   timeout: float = 30) -> Any: ...
    async def request_trust(self, wallet: str, tier: TrustTier | int = TrustTier.KNOWN, reason: str = "", *,
                            timeout: float = 30) -> str: ...
    async def collaborate(self, wallet: str, goal: str, *, plan: Any = None,
                          timeout: float = 300) -> dict[str, Any]: ...
    def trust_requests(self) -> list[TrustRequest]: ...
    async def approve_trust(self, wallet: str, tier: TrustTier | int | None = None) -> TrustTier: ...
    async def deny_trust(self, wallet: str) -> None: ...
    def set_trust(self, wallet: str, tier: TrustTier | int) -> None: ...
    def skills_overview(self) -> list[dict[str, Any]]: ...
    def hide_skill(self, name: str) -> None: ...
    def expose_skill(self, name: str) -> None: ...
    def peers(self) -> list[PeerRecord]: ...
    def trust_tier(self, wallet: str) -> TrustTier: ...
    @property
    def store(self) -> Store: ...
    @property
    def dashboard(self) -> DashboardLinks | None: ...

log = logging.getLogger("coworker.control")

CONTROL_FILE = "control.json"
# The largest request the CLI sends is a call whose input fits in one network message (1,000,000 bytes of compact
# UTF-8 JSON, protocol.MAX_ENVELOPE_BYTES). ControlClient encodes it the same way, so its line is that input plus
# the token, wallet, skill and timeout: 1 MiB leaves 48 KiB for those. A trust request's reason and a
# collaboration's plan travel in one network message too.
MAX_REQUEST_BYTES = 1024 * 1024
MAX_REPLY_BYTES = 8 * 1024 * 1024  # what the client reads of the agent's own answer (escaped JSON, 1 MB results)
MAX_CONNECTIONS = 16  # the CLI opens one connection per command
READ_TIMEOUT = 30.0  # seconds a connection may take to send a whole line (the CLI sends its line at once)
MAX_WAIT = 60.0  # seconds a task or progress command may wait before it answers


class ControlServer:
    """Serves one agent's control endpoint while the agent runs."""

    def __init__(self, agent: ControlledAgent, on_stop: Callable[[], None], *,
                 max_connections: int = MAX_CONNECTIONS, read_timeout: float = READ_TIMEOUT) -> None:
        self._agent = agent
        self._on_stop = on_stop
        self._token = secrets.token_urlsafe(32)
        self._token_bytes = self._token.encode()
        self._max_connections = max_connections
        self._read_timeout = read_timeout
        self._connections = 0
        self._server: asyncio.Server | None = None
        self._path = agent.data_dir / CONTROL_FILE
        self.tasks = OwnerTasks(agent)  # the owner's tasks: the dashboard runs skills and calls through it too
        self._commands: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "status": self._status,
            "ping": lambda a: agent.ping(a["wallet"], timeout=float(a.get("timeout", 30))),
            "connect": self._connect,
            "call": lambda a: agent.call(a["wallet"], a["skill"], a.get("input") or {},
                                         timeout=float(a.get("timeout", 30))),
            "request_trust": lambda a: agent.request_trust(a["wallet"], a.get("tier", 1), a.get("reason", ""),
                                                           timeout=float(a.get("timeout", 30))),
            "collaborate": lambda a: agent.collaborate(a["wallet"], a["goal"], plan=a.get("plan"),
                                                       timeout=float(a.get("timeout", 300))),
            "trust_requests": self._trust_requests,
            "approve": self._approve,
            "deny": self._deny,
            "set_trust": self._set_trust,
            "skills": self._skills,
            "hide_skill": self._hide_skill,
            "expose_skill": self._expose_skill,
            "stop": self._stop,
            "request": lambda a: self.tasks.request(a["wallet"], str(a["skill"]), _object(a.get("input"))),
            "run_skill": self._run_skill,
            "task": lambda a: self.tasks.state(str(a["task_id"]), _bounded(a.get("wait", 0))),
            "progress": lambda a: self.tasks.progress(str(a["task_id"]), int(a.get("since", 0)),
                                                       _bounded(a.get("wait", 0))),
            "cancel": lambda a: self.tasks.cancel(str(a["task_id"])),
            "skill_cards": self._skill_cards,
            "peers": self._peers,
            "mcp_pins": self._pins,
            "mcp_pin": self._pin,
            "mcp_unpin": self._unpin,
            "trust_changes": lambda a: trust_changes(agent.store, int(a.get("since", -1)), _bounded(a.get("wait", 0))),
            "dashboard_link": self._dashboard_link,
        }
        for cmd in GROUP_COMMANDS:
            self._commands[cmd] = functools.partial(run_group_command, agent, cmd)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=MAX_REQUEST_BYTES)
        port = self._server.sockets[0].getsockname()[1]
        tmp = self._path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        write_private(tmp, json.dumps({"port": port, "token": self._token, "pid": os.getpid()}).encode())
        tmp.replace(self._path)

    async def close(self) -> None:
        await self.tasks.close()
        with contextlib.suppress(FileNotFoundError):
            if json.loads(self._path.read_text()).get("token") == self._token:
                self._path.unlink()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._connections >= self._max_connections:
            busy = TransportError(f"the agent's control port is busy ({self._max_connections} connections)")
            writer.write(json.dumps(_failure(busy)).encode() + b"\n")
            writer.close()
            return
        self._connections += 1
        try:
            while line := await asyncio.wait_for(reader.readline(), self._read_timeout):
                writer.write(json.dumps(await self._handle(line)).encode() + b"\n")
                await asyncio.wait_for(writer.drain(), self._read_timeout)
        except (ValueError, ConnectionError, TimeoutError) as exc:  # a line over the limit, silence, client gone
            log.info("control connection closed: %s", str(exc) or type(exc).__name__)
        finally:
            self._connections -= 1
            writer.close()

    async def _handle(self, line: bytes) -> dict[str, Any]:
        try:
            request = parse_json(line)  # depth-limited, unlike json.loads
            token, cmd, args = request["token"], request["cmd"], request.get("args") or {}
        except (ValueError, KeyError, TypeError):
            return _failure(CoworkerError("a control request is a JSON object with token, cmd and args"))
        if not self._token_ok(token):
            return _failure(CoworkerError("wrong control token"))
        command = self._commands.get(cmd) if isinstance(cmd, str) else None
        if command is None or not isinstance(args, dict):
            return _failure(CoworkerError(f"unknown control command {cmd!r}"))
        try:
            return {"ok": True, "result": await command(args)}
        except CoworkerError as exc:
            return _failure(exc)
        except (KeyError, TypeError, ValueError) as exc:
            return _failure(CoworkerError(f"bad arguments to {cmd}: {exc!r}"))

    def _token_ok(self, token: object) -> bool:
        """Constant-time comparison of bytes: compare_digest refuses a str with non-ASCII characters."""
        if not isinstance(token, str):
            return False
        return hmac.compare_digest(token.encode("utf-8", "surrogatepass"), self._token_bytes)

    async def _status(self, _: dict[str, Any]) -> dict[str, Any]:
        agent = self._agent
        stats = agent.stats()
        outbox, away = stats.pop("outbox", None), stats.pop("away", {})
        visible = [s["name"] for s in agent.skills_overview() if not s["hidden"]]
        status: dict[str, Any] = {"name": agent.name, "wallet": agent.wallet, "network": agent.network_name,
                                  "pid": os.getpid(), "skills": visible, "rate_limits": stats,
                                  "outbox": outbox, "away": away,
                                  "dashboard": agent.dashboard.url if agent.dashboard is not None else None}
        transport = agent.transport
        if transport is not None and hasattr(transport, "status"):
            try:
                status["xmtp"] = await asyncio.wait_for(transport.status(), 10)
            except Exception as exc:  # the sidecar may be restarting
                status["xmtp"] = {"error": str(exc) or type(exc).__name__}
        return status

    async def _connect(self, args: dict[str, Any]) -> dict[str, Any]:
        return peer_json(await self._agent.connect(args["wallet"], timeout=float(args.get("timeout", 30))))

    async def _trust_requests(self, _: dict[str, Any]) -> list[dict[str, Any]]:
        return [{**asdict(r), "tier": r.tier.name.lower()} for r in self._agent.trust_requests()]

    async def _approve(self, args: dict[str, Any]) -> str:
        return (await self._agent.approve_trust(args["wallet"], args.get("tier"))).name.lower()

    async def _deny(self, args: dict[str, Any]) -> None:
        await self._agent.deny_trust(args["wallet"])

    async def _set_trust(self, args: dict[str, Any]) -> None:
        self._agent.set_trust(args["wallet"], args["tier"])

    async def _skills(self, _: dict[str, Any]) -> list[dict[str, Any]]:
        return self._agent.skills_overview()

    async def _hide_skill(self, args: dict[str, Any]) -> None:
        self._agent.hide_skill(args["name"])

    async def _expose_skill(self, args: dict[str, Any]) -> None:
        self._agent.expose_skill(args["name"])

    async def _stop(self, _: dict[str, Any]) -> None:
        asyncio.get_running_loop().call_soon(self._on_stop)

    async def _run_skill(self, args: dict[str, Any]) -> str:
        return self.tasks.run_skill(str(args["skill"]), _object(args.get("input")))

    async def _skill_cards(self, _: dict[str, Any]) -> list[dict[str, Any]]:
        return [skill.card() for _, skill in sorted(self._agent.skills.items())]

    async def _peers(self, _: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"wallet": p.wallet, "name": p.name, "card": p.card,
                 "trust_tier": self._agent.trust_tier(p.wallet).name.lower()} for p in self._agent.peers()]

    async def _dashboard_link(self, _: dict[str, Any]) -> dict[str, Any]:
        dashboard = self._agent.dashboard
        if dashboard is None:
            raise ConfigurationError(f"agent {self._agent.name} serves no dashboard (it was started with "
                                     f"--no-dashboard or dashboard=False, or with start() rather than serve())")
        return {"url": dashboard.url, "login": dashboard.login_link()}

    async def _pins(self, _: dict[str, Any]) -> list[str]:
        return self._agent.store.pinned_peers()

    async def _pin(self, args: dict[str, Any]) -> bool:
        return pin(self._agent.store, args["wallet"])

    async def _unpin(self, args: dict[str, Any]) -> bool:
        return unpin(self._agent.store, args["wallet"])


async def trust_changes(store: Store, since: int, wait: float) -> int:
    """The store's count of trust changes, once it differs from ``since`` or ``wait`` seconds passed."""
    if store.trust_changes != since or wait <= 0:
        return store.trust_changes
    loop, changed = asyncio.get_running_loop(), asyncio.Event()

    def listener() -> None:  # on whichever thread wrote
        loop.call_soon_threadsafe(changed.set)

    store.add_trust_listener(listener)
    try:
        if store.trust_changes == since:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), wait)
    finally:
        store.remove_trust_listener(listener)
    return store.trust_changes


def pin(store: Store, wallet: str) -> bool:
    """Mark a peer for ``coworker mcp`` (durable when this returns); False when it was marked already."""
    done = store.pin_peer(checksum(wallet), time.time())
    store.flush()
    return done


def unpin(store: Store, wallet: str) -> bool:
    """Unmark a peer (durable when this returns); False when it was not marked."""
    done = store.unpin_peer(checksum(wallet))
    store.flush()
    return done


def _bounded(wait: object) -> float:
    """A wait asked for, as seconds between 0 and :data:`MAX_WAIT`."""
    if not isinstance(wait, int | float) or isinstance(wait, bool):
        raise TypeError(f"wait is a number of seconds, got {wait!r}")
    return min(max(float(wait), 0.0), MAX_WAIT)


def _object(value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"a skill's input is a JSON object, got {type(value).__name__}")
    return value


def _failure(exc: CoworkerError) -> dict[str, Any]:
    return {"ok": False, "error": {"type": type(exc).__name__, "message": str(exc),
                                   "code": getattr(exc, "code", None), "path": getattr(exc, "path", "")}}


def _rebuild(error: dict[str, Any]) -> CoworkerError:
    """The exception the agent raised, from its description."""
    name, message = str(error.get("type")), str(error.get("message"))
    cls = getattr(_errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, CoworkerError)):
        cls = CoworkerError
    if cls is InvalidInput:
        return InvalidInput(message, path=str(error.get("path") or ""))
    if cls is RemoteProtocolError:
        return RemoteProtocolError(message, code=str(error.get("code") or "PROTOCOL_ERROR"))
    return cls(message)


class ControlClient:
    """Drives a running agent through its control endpoint (blocking).

    Example::

        client = ControlClient.find(agent_dir)   # None when the agent is not running
        client.request("call", wallet="0x...", skill="echo", input={"text": "hi"})
    """

    def __init__(self, port: int, token: str, pid: int) -> None:
        self.port, self.pid = port, pid
        self._token = token

    @classmethod
    def find(cls, data_dir: Path) -> ControlClient | None:
        """The control endpoint of the agent in ``data_dir``, or None when it is not running."""
        try:
            info = json.loads((data_dir / CONTROL_FILE).read_text())
            client = cls(int(info["port"]), str(info["token"]), int(info["pid"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        try:
            os.kill(client.pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return client

    def request(self, cmd: str, wait: float = 60.0, **args: Any) -> Any:
        """Run one command in the agent (waiting ``wait`` seconds at most) and return its result.

        Raises what the agent raised, and:
            TransportError: the agent cannot be reached (it stopped?).
            ConfigurationError: the arguments cannot be sent as UTF-8 JSON (a lone surrogate).
            LocalProtocolError: the request is over :data:`MAX_REQUEST_BYTES` (it would not fit in one network
                message either).
        """
        line = self._line(cmd, args)
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=wait) as sock:
                sock.sendall(line)
                with sock.makefile("rb") as stream:
                    answer = stream.readline(MAX_REPLY_BYTES)
        except OSError as exc:
            raise TransportError(f"cannot reach the running agent (pid {self.pid}) on its control port: "
                                 f"{exc}") from None
        return self._result(answer)

    async def ask(self, cmd: str, args: dict[str, Any] | None = None, *, timeout: float = 60.0) -> Any:
        """:meth:`request` for an event loop (``args`` as a dict: a command may take an argument named ``wait``);
        cancelling it closes the connection."""
        line = self._line(cmd, args or {})
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port, limit=MAX_REPLY_BYTES)
                try:
                    writer.write(line)
                    await writer.drain()
                    answer = await reader.readline()
                finally:
                    writer.close()
        except (OSError, TimeoutError, ValueError) as exc:
            raise TransportError(f"cannot reach the running agent (pid {self.pid}) on its control port: "
                                 f"{str(exc) or type(exc).__name__}") from None
        return self._result(answer)

    def _line(self, cmd: str, args: dict[str, Any]) -> bytes:
        request = {"token": self._token, "cmd": cmd, "args": args}
        try:  # compact UTF-8, as on the network, so that what fits in a network message fits here
            line = json.dumps(request, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        except UnicodeEncodeError as exc:  # a lone surrogate: the network could not carry it either
            raise ConfigurationError(f"the request cannot be sent as UTF-8 JSON: {exc}") from None
        if len(line) > MAX_REQUEST_BYTES:
            raise LocalProtocolError(f"the request to the running agent is {len(line)} bytes, over its control "
                                     f"port's limit of {MAX_REQUEST_BYTES} bytes (a call's input must fit in one "
                                     f"network message of {MAX_ENVELOPE_BYTES} bytes)")
        return line

    def _result(self, answer: bytes) -> Any:
        if not answer:
            raise TransportError(f"the running agent (pid {self.pid}) closed the control connection")
        reply = json.loads(answer)
        if reply.get("ok"):
            return reply.get("result")
        raise _rebuild(reply.get("error") or {})
