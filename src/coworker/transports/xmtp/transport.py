"""The XMTP transport: each agent drives its own Node sidecar (``sidecar.mjs``, the official ``@xmtp/node-sdk``).

Theory of operation. :class:`XmtpNetwork` names an XMTP network (``local``, ``dev``, ``production``); for
``local`` it first makes sure a local node (``coworker devnet``) listens on port 5556, starting one in the
background if none does. :meth:`XmtpNetwork.open` starts the agent's sidecar: a child process that speaks JSON
lines on its stdin and stdout and listens on no port, so no other process can speak as the wallet. The wallet's
key goes to it once, in the ``start`` command on the pipe. The sidecar keeps its XMTP database in
``<agent dir>/xmtp/<network>.db3``, encrypted with the key in ``xmtp/db.key``; both are mode 0600 and reused on
every start, so a wallet keeps one XMTP installation however often its agent restarts.

Incoming messages come from the live stream and from syncs (at start, every ``sync_interval`` seconds, and after
any stream error); the sidecar reports each message id once, with the sender's inbox id and the Ethereum addresses
associated with that inbox, which is the identity the runtime checks. The newest reported timestamp is kept in
``xmtp/<network>.cursor``, and the sync at start re-reads from a minute before it: messages that arrived while the
agent was down are handled after it restarts; any that were handled already are dropped by the runtime's replay
defence.

If the sidecar dies it is restarted with backoff; sends made meanwhile wait for it (bounded by the caller's
timeout) and a send that was in flight is sent again, which is safe because peers drop repeated message ids.
On :meth:`XmtpTransport.close` the sidecar refuses new commands and finishes those in flight (bounded) before it
exits, so a send completes or fails, and a first DM is not left half made. One killed in the middle of making a DM
(SIGKILL) leaves a DM its peer never joined; the restarted sidecar finds it at first use and adds the peer again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coworker import _paths
from coworker._errors import ConfigurationError, PeerUnreachable, TransportError
from coworker.core.protocol import MAX_ENVELOPE_BYTES
from coworker.store.identity import Identity, write_private
from coworker.transports.base import Deliver, Incoming, Invitation, Network, Sender, SendPolicy, Transport
from coworker.transports.xmtp import node
from coworker.transports.xmtp.groups import GroupCommandError, GroupCommands
from coworker.transports.xmtp.node import SetupError

log = logging.getLogger("coworker.xmtp")

XMTP_NETWORKS = ("local", "dev", "production")
MAX_MESSAGE_BYTES = MAX_ENVELOPE_BYTES  # XMTP's documented limit is 1 MB per message
SIDECAR = "sidecar.mjs"
START_TIMEOUT = 60.0  # seconds for the sidecar to start and its client to open
CLOSE_TIMEOUT = 8.0  # the sidecar answers the commands in flight before it exits (for at most 5 s), then this
RESTART_BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
CURSOR_DELAY = 1.0  # seconds between cursor writes
_LINE_LIMIT = 16 * 1024 * 1024  # one JSON line carries at most a 1 MB message, escaped
WRITE_LIMIT = 3000  # XMTP's production network: writes per client in WRITE_WINDOW seconds
WRITE_WINDOW = 300.0


class _SidecarGone(Exception):
    """The sidecar exited before answering."""


class _SidecarError(Exception):
    """A command failed in the sidecar; ``name`` is the JavaScript error's name."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


@dataclass(frozen=True, slots=True)
class SidecarInfo:
    """Who the sidecar is on the network."""

    address: str
    inbox_id: str
    installation_id: str
    pid: int


def settle_reply(pending: dict[int, asyncio.Future[dict[str, Any]]], reply: dict[str, Any],
                 error: Callable[[str, str], Exception]) -> None:
    """Resolve the future of the command a JSON-lines reply answers (``error(name, message)`` when it failed)."""
    future = pending.pop(reply.get("id"), None)  # type: ignore[arg-type]
    if future is None or future.done():
        return
    if reply.get("ok"):
        future.set_result(reply.get("result") or {})
    else:
        failure = reply.get("error") or {}
        future.set_exception(error(str(failure.get("name", "Error")), str(failure.get("message", "failed"))))


def autostart_allowed() -> bool:
    """Whether agents may start the local node in the background: yes unless ``COWORKER_DEVNET_AUTOSTART=0``."""
    return os.environ.get("COWORKER_DEVNET_AUTOSTART", "1") != "0"


def ensure_local_node(start: bool = True) -> int | None:
    """Make sure the local XMTP node answers on port 5556, starting it in the background when ``start``.

    Returns the pid of the node started, or None when one was answering already.

    Raises:
        TransportError: none answers, and it may not or could not be started; or another program holds the port.
    """
    from coworker.devnet._cli import ensure_running, not_a_devnet, port_user
    from coworker.devnet._server import DevnetError, PortInUseError

    if not start:
        holder = port_user()
        if holder == "node":
            return None
        if holder == "other":
            raise TransportError(not_a_devnet())
        raise TransportError("the local XMTP node is not running: start it with `coworker devnet start` "
                             "(agents start it themselves unless COWORKER_DEVNET_AUTOSTART=0)")
    try:
        return ensure_running()
    except PortInUseError as exc:
        raise TransportError(str(exc)) from None
    except DevnetError as exc:
        raise TransportError(f"the local XMTP node is not running and could not be started: {exc}") from None


def _say_node_started(pid: int) -> None:
    """Tell the user, once, that an agent left a devnet running in the background (stderr: seen whatever the
    log level, and not mixed with a command's output)."""
    from coworker.devnet._cli import LOG_FILENAME

    log_path = _paths.devnet_dir() / LOG_FILENAME
    print(f"coworker: started the local XMTP node in the background (coworker devnet, pid {pid}, log {log_path}); "
          f"`coworker devnet stop` stops it", file=sys.stderr, flush=True)


class XmtpNetwork(Network):
    """An XMTP network: ``"local"`` (the local node on port 5556), ``"dev"`` or ``"production"``.

    Args:
        env: which network.
        start_devnet: for ``local``, start ``coworker devnet`` in the background if nothing listens on 5556
            (default: yes, unless ``COWORKER_DEVNET_AUTOSTART=0``).
        sync_interval: seconds between two safety syncs of all conversations (0: only at start and after errors).
        write_limit: at most this many messages sent per agent in any ``write_window`` seconds; more wait, and
            those for one peer go together (default: XMTP's production limit, 3,000 in 300 s; None: no limit).
        write_window: the write limit's window, in seconds.
        batch: messages that wait for a send to the same peer go as one batch frame (False: one message per
            send; a baseline for benchmarks).

    Example::

        agent = Agent("bot", network=XmtpNetwork("local"))   # the same as network="local"
    """

    def __init__(self, env: str = "local", *, start_devnet: bool | None = None, sync_interval: float = 30.0,
                 write_limit: int | None = WRITE_LIMIT, write_window: float = WRITE_WINDOW, batch: bool = True) -> None:
        if env not in XMTP_NETWORKS:
            raise ConfigurationError(f"unknown XMTP network {env!r}: use one of {', '.join(XMTP_NETWORKS)}")
        if env != "local" and os.environ.get("COWORKER_LOCAL_ONLY") == "1":
            raise ConfigurationError(f"the XMTP network {env!r} is refused: COWORKER_LOCAL_ONLY=1 allows only local")
        if sync_interval < 0:
            raise ConfigurationError(f"sync_interval must be >= 0 seconds, got {sync_interval}")
        self.name = env
        if start_devnet is None:
            start_devnet = autostart_allowed()
        self.start_devnet = start_devnet
        self.sync_interval = sync_interval
        self.send_policy = SendPolicy(batch, write_limit, write_window)

    def __repr__(self) -> str:
        return f"XmtpNetwork({self.name!r})"

    async def open(self, identity: Identity, data_dir: Path, deliver: Deliver) -> XmtpTransport:
        if self.name == "local":
            started = await asyncio.to_thread(ensure_local_node, self.start_devnet)
            if started is not None:
                _say_node_started(started)
        transport = XmtpTransport(self, identity, data_dir, deliver)
        await transport.start()
        return transport


class XmtpTransport(GroupCommands, Transport):
    """One wallet's XMTP client, in a supervised sidecar process (groups: :mod:`.groups`)."""

    def __init__(self, network: XmtpNetwork, identity: Identity, data_dir: Path, deliver: Deliver) -> None:
        self.network = network
        self.send_policy = network.send_policy
        self._identity = identity
        self._deliver = deliver
        state = _paths.ensure_private_dir(data_dir / "xmtp")
        self.db_path = state / f"{network.name}.db3"
        self._db_key = _database_key(state / "db.key")
        self._cursor_path = state / f"{network.name}.cursor"
        self.log_path = _paths.ensure_private_dir(data_dir / "logs") / "sidecar.log"
        self._high_ns = _read_cursor(self._cursor_path)
        self._written_ns = self._high_ns
        self._cursor_timer: asyncio.TimerHandle | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._live: asyncio.subprocess.Process | None = None  # the process that started and serves
        self._reader: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._up = asyncio.Event()
        self._closed = False
        self.info: SidecarInfo | None = None
        self.restarts = 0

    def __repr__(self) -> str:
        return f"<XmtpTransport {self.network.name} {self._identity.address} pid={self.pid}>"

    @property
    def pid(self) -> int | None:
        """The sidecar's process id (None while it is down)."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    # ---- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the sidecar and open the XMTP client.

        Raises:
            TransportError: Node or the SDK is missing, or the client could not be opened (the log is quoted).
        """
        await self._launch()

    async def _launch(self) -> None:
        try:
            directory = await asyncio.to_thread(node.ensure_installed)
        except SetupError as exc:
            raise TransportError(str(exc)) from None
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            process = await asyncio.create_subprocess_exec(
                "node", str(node.script(SIDECAR, directory)), cwd=directory, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=log_fd, env=_child_environment(), limit=_LINE_LIMIT)
        finally:
            os.close(log_fd)
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._process = process
        self._reader = asyncio.create_task(self._read(process, ready), name="coworker-xmtp-reader")
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await ready
                result = await self._command("start", privateKey=self._identity.private_key_hex(),
                                             env=self.network.name, dbPath=str(self.db_path),
                                             dbEncryptionKey=self._db_key, syncFromNs=str(self._high_ns),
                                             syncIntervalMs=int(self.network.sync_interval * 1000),
                                             maxBytes=MAX_MESSAGE_BYTES)
        except (TimeoutError, _SidecarGone, _SidecarError) as exc:
            await self._kill(process)
            reason = f"{exc.name}: {exc}" if isinstance(exc, _SidecarError) else str(exc) or "timed out"
            raise TransportError(f"the XMTP sidecar did not start on {self.network.name!r} ({reason}); "
                                 f"see {self.log_path}") from None
        except BaseException:
            await self._kill(process)
            raise
        if result.get("address", "").lower() != self._identity.address.lower():
            await self._kill(process)
            raise TransportError("the XMTP sidecar opened a client for another wallet")
        self.info = SidecarInfo(self._identity.address, result["inboxId"], result["installationId"], process.pid)
        log.info("XMTP %s: %s is inbox %s, installation %s (sidecar pid %d)", self.network.name,
                 self._identity.address, self.info.inbox_id, self.info.installation_id, process.pid)
        self._live = process
        self._up.set()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._up.set()  # wakes senders waiting for a restart; they see _closed
        if self._supervisor is not None:
            self._supervisor.cancel()
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(_SidecarGone, _SidecarError, TimeoutError, OSError):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self._command("close")
                    await process.wait()
            await self._kill(process)
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._reader, CLOSE_TIMEOUT)
        self._fail_pending(TransportError("transport is closed"))
        self._write_cursor()

    async def _kill(self, process: asyncio.subprocess.Process) -> None:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    async def _restart(self) -> None:
        for attempt in itertools.count():
            if self._closed:
                return
            await asyncio.sleep(RESTART_BACKOFF[min(attempt, len(RESTART_BACKOFF) - 1)])
            if self._closed:
                return
            try:
                await self._launch()
            except (TransportError, OSError) as exc:
                log.warning("restarting the XMTP sidecar failed (attempt %d): %s", attempt + 1, exc)
                continue
            self.restarts += 1
            log.warning("the XMTP sidecar is back (restart %d, pid %s)", self.restarts, self.pid)
            return

    # ---- commands -----------------------------------------------------------------------------------------

    async def _command(self, cmd: str, **args: Any) -> dict[str, Any]:
        process = self._process
        if process is None or process.returncode is not None or process.stdin is None:
            raise _SidecarGone("the sidecar is not running")
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            process.stdin.write(json.dumps({"id": request_id, "cmd": cmd, **args}).encode() + b"\n")
            return await future
        finally:
            self._pending.pop(request_id, None)

    async def _when_up(self) -> None:
        """Wait until the sidecar serves (it may be restarting). Raises TransportError once closed."""
        await self._up.wait()
        if self._closed:
            raise TransportError("transport is closed")

    async def status(self) -> dict[str, Any]:
        """The sidecar's own view: inbox, installation, whether the stream is up, when it last synced."""
        await self._when_up()
        return await self._command("status")

    async def _group_command(self, cmd: str, **args: Any) -> dict[str, Any]:
        await self._when_up()
        try:
            return await self._command(cmd, **args)
        except _SidecarGone:
            raise TransportError(f"the XMTP sidecar exited during {cmd}") from None
        except _SidecarError as exc:
            raise GroupCommandError(exc.name, str(exc)) from None

    async def send(self, recipient: str, data: bytes) -> None:
        if self._closed:
            raise TransportError("transport is closed")
        if len(data) > MAX_MESSAGE_BYTES:
            raise TransportError(f"message of {len(data)} bytes is over XMTP's limit of {MAX_MESSAGE_BYTES} bytes")
        text = bytes(data).decode("utf-8", "replace")  # XMTP carries text; protocol messages are UTF-8 JSON
        while True:
            await self._when_up()
            try:
                await self._command("send", to=recipient.lower(), text=text)
                return
            except _SidecarGone:
                continue  # sent again once the sidecar is back: peers drop repeated message ids
            except _SidecarError as exc:
                if exc.name == "PeerUnreachable":
                    raise PeerUnreachable(str(exc)) from None
                raise TransportError(f"XMTP could not send to {recipient}: {exc}") from None

    # ---- the sidecar's output -----------------------------------------------------------------------------

    async def _read(self, process: asyncio.subprocess.Process, ready: asyncio.Future[None]) -> None:
        assert process.stdout is not None
        try:
            while line := await process.stdout.readline():
                try:
                    message = json.loads(line)
                except ValueError:
                    log.warning("the XMTP sidecar wrote a line that is not JSON (%d bytes)", len(line))
                    continue
                if "event" in message:
                    self._event(message, ready)
                    continue
                settle_reply(self._pending, message, _SidecarError)
        except (ValueError, OSError) as exc:  # a line over the limit, or the pipe broke
            log.error("reading from the XMTP sidecar failed: %s", exc)
            await self._kill(process)
        code = await process.wait()
        if not ready.done():
            ready.set_exception(_SidecarGone(f"the sidecar exited with code {code}"))
        if self._process is process:
            self._process = None
            self._fail_pending(_SidecarGone(f"the sidecar exited with code {code}"))
        if self._live is not process:
            return  # it never started (the launch reports that) or it was replaced
        self._live = None
        self._up.clear()
        if self._closed:
            self._up.set()
            return
        log.error("the XMTP sidecar (pid %d) exited with code %s; restarting it; see %s", process.pid, code,
                  self.log_path)
        self._supervisor = asyncio.create_task(self._restart(), name="coworker-xmtp-restart")

    def _fail_pending(self, error: Exception) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)

    def _event(self, event: dict[str, Any], ready: asyncio.Future[None]) -> None:
        kind = event.get("event")
        if kind == "message":
            self._incoming(event)
        elif kind == "group":
            self._invited(event)
        elif kind == "ready":
            if not ready.done():
                ready.set_result(None)
        elif kind == "dropped":
            log.warning("dropped XMTP message %s from inbox %s: %s", event.get("id"), event.get("senderInboxId"),
                        event.get("reason"))
        elif kind == "stream":
            level = logging.INFO if event.get("state") == "up" else logging.WARNING
            log.log(level, "XMTP stream %s %s", event.get("state"), event.get("message") or "")
        elif kind == "sync_error":
            log.warning("XMTP sync failed: %s", event.get("message"))
        elif kind == "closing":
            log.debug("the XMTP sidecar is closing; %s command(s) in flight", event.get("pending"))

    def _incoming(self, event: dict[str, Any]) -> None:
        try:
            text = event["text"]
            sender = Sender(str(event["senderInboxId"]), frozenset(str(a).lower() for a in event["addresses"]))
            sent_ns = int(event["sentAtNs"])
        except (KeyError, TypeError, ValueError):
            log.warning("the XMTP sidecar reported a malformed message event")
            return
        if not isinstance(text, str) or not sender.addresses:
            log.warning("dropped XMTP message %s: no text or no address for inbox %s", event.get("id"),
                        sender.inbox_id)
            return
        if sent_ns > self._high_ns:
            self._high_ns = sent_ns
            if self._cursor_timer is None:
                self._cursor_timer = asyncio.get_running_loop().call_later(CURSOR_DELAY, self._write_cursor)
        group = event.get("group")
        self._deliver(Incoming(sender, text.encode("utf-8", "replace"), group if isinstance(group, str) else None))

    def _invited(self, event: dict[str, Any]) -> None:
        try:
            sender = Sender(str(event["addedByInboxId"]), frozenset(str(a).lower() for a in event["addresses"]))
            invitation = Invitation(sender, str(event["conversationId"]), str(event.get("name") or ""),
                                    str(event.get("description") or ""), str(event.get("appData") or ""))
        except (KeyError, TypeError):
            log.warning("the XMTP sidecar reported a malformed group event")
            return
        self._deliver(invitation)

    def _write_cursor(self) -> None:
        if self._cursor_timer is not None:
            self._cursor_timer.cancel()
            self._cursor_timer = None
        if self._high_ns == self._written_ns:
            return
        try:
            tmp = self._cursor_path.with_suffix(".tmp")
            tmp.unlink(missing_ok=True)
            write_private(tmp, json.dumps({"high_ns": str(self._high_ns)}).encode())
            tmp.replace(self._cursor_path)
            self._written_ns = self._high_ns
        except OSError as exc:
            log.warning("could not save the XMTP cursor %s: %s", self._cursor_path, exc)


def _child_environment() -> dict[str, str]:
    """The sidecar's environment: ours, minus secrets it does not need."""
    return {k: v for k, v in os.environ.items() if k != "COWORKER_PASSPHRASE"}


def _database_key(path: Path) -> str:
    """The XMTP database's encryption key (32 random bytes, hex), created on first use with mode 0600."""
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        key = secrets.token_hex(32)
        write_private(path, key.encode())
        return "0x" + key
    except OSError as exc:
        raise TransportError(f"cannot read the XMTP database key {path}: {exc.strerror}") from None
    if len(key) != 64 or any(c not in "0123456789abcdef" for c in key.lower()):
        raise TransportError(f"{path} does not hold a 32-byte hex key; the XMTP database cannot be opened")
    return "0x" + key


def _read_cursor(path: Path) -> int:
    try:
        return int(json.loads(path.read_text())["high_ns"])
    except FileNotFoundError:
        return 0
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("ignored the unreadable XMTP cursor %s: messages of the last day may be read again", path)
        return 0
