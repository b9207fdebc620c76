"""``coworker devnet start|stop|status|run``: the local XMTP node from the shell.

``run`` serves in the foreground until SIGINT/SIGTERM. ``start`` runs the same command as a
detached child (``python -m coworker.devnet run``) with its output in ``devnet.log`` and returns once
the child reports, through an inherited pipe, that it is listening. Both write ``devnet.pid`` (JSON:
pid, port, start time, where the data lives) in the data directory; ``stop`` and ``status`` read it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from coworker import _paths
from coworker._process import NotReady, spawn_ready, wait_exit
from coworker.devnet._server import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_PORT,
    DevnetConfig,
    DevnetError,
    DevnetServer,
    PortInUseError,
)
from coworker.devnet._store import DB_FILENAME, Store

PID_FILENAME = "devnet.pid"
LOG_FILENAME = "devnet.log"
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 10.0
_PROBE_TIMEOUT_S = 5.0  # a devnet answers in milliseconds; only a program that accepts and stays silent waits this
# One RPC every XMTP node serves, cheap with an empty request: the probe that tells a node from another program.
_PROBE_METHOD = "/xmtp.identity.api.v1.IdentityApi/GetInboxIds"
_NOT_RUNNING = 3  # the LSB status code for "not running"


def register(subparsers: Any) -> None:
    """Add the ``devnet`` command and its subcommands to a CLI's subparsers."""
    parser = subparsers.add_parser(
        "devnet",
        help="a local XMTP-compatible node (port 5556) for offline use, tests and benchmarks",
        description="A local XMTP-compatible node that the official XMTP clients (env 'local') talk to.",
    )
    add_commands(parser)


def add_commands(parser: argparse.ArgumentParser) -> None:
    """Add ``start``, ``stop``, ``status`` and ``run`` to ``parser`` (also used by ``python -m``)."""
    parser.set_defaults(func=lambda args: _usage(parser))
    commands = parser.add_subparsers(title="commands", metavar="{start,stop,status,run}")

    def common(sub: argparse.ArgumentParser, serving: bool) -> None:
        sub.add_argument(
            "--data-dir",
            type=Path,
            default=None,
            help="state directory: database, pidfile, log (default: $COWORKER_HOME/devnet)",
        )
        if not serving:
            return
        sub.add_argument("--port", type=int, default=DEFAULT_PORT, help="port on 127.0.0.1 and ::1 (default 5556)")
        sub.add_argument("--memory", action="store_true", help="keep messages in memory only (nothing survives)")
        sub.add_argument(
            "--max-message-bytes",
            type=int,
            default=DEFAULT_MAX_MESSAGE_BYTES,
            help="largest group message accepted (default 1 MB, the hosted network's limit)",
        )
        sub.add_argument(
            "--rate-limit", type=float, default=None, help="requests per second allowed per client (default: none)"
        )
        sub.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    run = commands.add_parser("run", help="serve in the foreground until Ctrl-C")
    common(run, serving=True)
    run.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    run.set_defaults(func=run_command)

    start = commands.add_parser("start", help="start in the background; returns once it is ready")
    common(start, serving=True)
    start.set_defaults(func=start_command)

    stop = commands.add_parser("stop", help="stop the background devnet")
    common(stop, serving=False)
    stop.set_defaults(func=stop_command)

    status = commands.add_parser("status", help="is it running; inboxes, installations, conversations, messages")
    common(status, serving=False)
    status.set_defaults(func=status_command)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir) if args.data_dir is not None else _paths.devnet_dir()


@dataclass(frozen=True)
class _PidFile:
    pid: int
    port: int
    started_at: float
    data_dir: str
    memory: bool

    @classmethod
    def read(cls, data_dir: Path) -> _PidFile | None:
        try:
            raw = json.loads((data_dir / PID_FILENAME).read_text())
            return cls(
                int(raw["pid"]), int(raw["port"]), float(raw["started_at"]), str(raw["data_dir"]), bool(raw["memory"])
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, data_dir: Path) -> None:
        path = data_dir / PID_FILENAME
        path.write_text(json.dumps(self.__dict__) + "\n")
        os.chmod(path, 0o600)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _running(data_dir: Path) -> _PidFile | None:
    """The pidfile of a live devnet in ``data_dir``; a stale pidfile is removed."""
    info = _PidFile.read(data_dir)
    if info is None:
        return None
    if not _alive(info.pid):
        with contextlib.suppress(FileNotFoundError):
            (data_dir / PID_FILENAME).unlink()
        return None
    return info


# --- run ----------------------------------------------------------------------------------------


def run_command(args: argparse.Namespace) -> int:
    """``devnet run``: serve in the foreground until SIGINT or SIGTERM."""
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    data_dir = _paths.ensure_private_dir(_data_dir(args))
    other = _running(data_dir)
    if other is not None and other.pid != os.getpid():
        print(f"error: a devnet is already running from {data_dir} (pid {other.pid})", file=sys.stderr)
        return 1
    problem = _port_problem(args.port)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    config = DevnetConfig(
        port=args.port,
        data_dir=None if args.memory else data_dir,
        max_message_bytes=args.max_message_bytes,
        rate_limit=args.rate_limit,
    )
    try:
        return asyncio.run(_serve(config, data_dir, args.memory, args.ready_fd))
    except DevnetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


async def _serve(config: DevnetConfig, data_dir: Path, memory: bool, ready_fd: int | None) -> int:
    server = DevnetServer(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    pidfile = _PidFile(os.getpid(), server.port, time.time(), str(data_dir), memory)
    pidfile.write(data_dir)
    try:
        if ready_fd is not None:
            with os.fdopen(ready_fd, "w") as ready:
                ready.write(f"ready {server.port}\n")
        print(f"devnet listening on 127.0.0.1 and ::1, port {server.port}; Ctrl-C stops it", file=sys.stderr)
        await stop.wait()
    finally:
        await server.stop()
        if _PidFile.read(data_dir) == pidfile:
            (data_dir / PID_FILENAME).unlink()
    return 0


# --- start / stop / status ----------------------------------------------------------------------


def start_command(args: argparse.Namespace) -> int:
    """``devnet start``: run the devnet as a detached child; return once it listens."""
    data_dir = _paths.ensure_private_dir(_data_dir(args))
    other = _running(data_dir)
    if other is not None:
        print(f"a devnet is already running (pid {other.pid}, port {other.port})", file=sys.stderr)
        return 1
    problem = _port_problem(args.port)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    try:
        pid, port = start_background(data_dir, port=args.port, memory=args.memory,
                                     max_message_bytes=args.max_message_bytes, rate_limit=args.rate_limit,
                                     log_level=args.log_level)
    except DevnetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    where = "memory" if args.memory else str(data_dir / DB_FILENAME)
    print(f"devnet started: pid {pid}, port {port} on 127.0.0.1 and ::1, data in {where}, "
          f"log {data_dir / LOG_FILENAME}")
    return 0


def _port_problem(port: int) -> str | None:
    """Why a devnet cannot listen on ``port`` (None when it is free, or 0: any free port)."""
    holder = port_user(port) if port else "nobody"
    if holder == "node":
        return (f"an XMTP node already answers on port {port} (a devnet started from another data directory?): "
                f"stop it first")
    return not_a_devnet(port) if holder == "other" else None


def start_background(data_dir: Path, *, port: int = DEFAULT_PORT, memory: bool = False,
                     max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, rate_limit: float | None = None,
                     log_level: str = "INFO") -> tuple[int, int]:
    """Run ``python -m coworker.devnet run`` as a detached child; return (pid, port) once it listens.

    Raises:
        DevnetError: the child did not report that it listens (the error quotes the end of its log).
    """
    data_dir = _paths.ensure_private_dir(data_dir)

    def command(ready_fd: int) -> list[str]:
        args = [sys.executable, "-m", "coworker.devnet", "run", "--data-dir", str(data_dir), "--port", str(port),
                "--max-message-bytes", str(max_message_bytes), "--log-level", log_level, "--ready-fd", str(ready_fd)]
        if memory:
            args.append("--memory")
        if rate_limit is not None:
            args += ["--rate-limit", str(rate_limit)]
        return args

    try:
        pid, line = spawn_ready(command, data_dir / LOG_FILENAME, _START_TIMEOUT_S)
    except NotReady as exc:
        raise DevnetError(f"the devnet did not start; {exc}") from None
    return pid, int(line.split()[1])


def listening(port: int = DEFAULT_PORT, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def node_answers(port: int = DEFAULT_PORT, host: str = "127.0.0.1", timeout: float = _PROBE_TIMEOUT_S) -> bool:
    """True when an XMTP node API (a devnet's) answers one cheap RPC on ``host:port``.

    ``listening`` only says that something accepts connections; a web server or a database on the port does too.
    """
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        rpc = channel.unary_unary(_PROBE_METHOD, request_serializer=bytes, response_deserializer=bytes)
        try:
            rpc(b"", timeout=timeout)  # an empty GetInboxIdsRequest
        except grpc.RpcError:
            return False
    return True


def port_user(port: int = DEFAULT_PORT) -> str:
    """Who holds ``port`` on 127.0.0.1: ``"nobody"``, ``"node"`` (an XMTP node answers: a devnet) or ``"other"``."""
    if not listening(port):
        return "nobody"
    return "node" if node_answers(port) else "other"


def not_a_devnet(port: int = DEFAULT_PORT) -> str:
    """The one line that says ``port`` is held by a program that does not speak the XMTP node API."""
    return (f"port {port} is in use by another program (not a CoWorker devnet): stop it or free the port "
            f"(`ss -ltnp 'sport = :{port}'` names the program)")


def ensure_running(data_dir: Path | None = None, port: int = DEFAULT_PORT) -> int | None:
    """Make sure a local node listens on ``port``: start one in the background (SQLite in ``data_dir``) if not.

    Returns the pid of the devnet started, or None when one was answering already. Safe to call from several
    processes at once: one of them starts it, the others wait for it.

    Raises:
        PortInUseError: a program that is not an XMTP node holds the port.
        DevnetError: it could not be started.
    """
    directory = data_dir if data_dir is not None else _paths.devnet_dir()
    if _check_port(directory, port):
        return None
    directory = _paths.ensure_private_dir(directory)
    fd = os.open(directory / "start.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when fd closes
        if _check_port(directory, port):
            return None
        pid, _ = start_background(directory, port=port)
        return pid
    finally:
        os.close(fd)


def _check_port(directory: Path, port: int) -> bool:
    """True when a node answers on ``port``, False when the port is free.

    Raises:
        PortInUseError: something else holds it (named as our devnet when its pidfile says so).
    """
    holder = port_user(port)
    if holder == "nobody":
        return False
    if holder == "node":
        return True
    info = _running(directory)
    if info is not None and info.port == port:
        raise PortInUseError(f"a devnet (pid {info.pid}) runs from {directory} but does not answer on port {port}; "
                             f"stop it with `coworker devnet stop`")
    raise PortInUseError(not_a_devnet(port))


def stop_command(args: argparse.Namespace) -> int:
    """``devnet stop``: SIGTERM the background devnet and wait (bounded) for it to exit."""
    data_dir = _data_dir(args)
    info = _running(data_dir)
    if info is None:
        print(f"no devnet is running from {data_dir}")
        return 0
    os.kill(info.pid, signal.SIGTERM)
    if not wait_exit(info.pid, _STOP_TIMEOUT_S):
        print(f"the devnet (pid {info.pid}) did not stop within {_STOP_TIMEOUT_S:g} s; killing it", file=sys.stderr)
        os.kill(info.pid, signal.SIGKILL)
        wait_exit(info.pid, _STOP_TIMEOUT_S)
    with contextlib.suppress(FileNotFoundError):
        (data_dir / PID_FILENAME).unlink()
    print(f"devnet stopped (pid {info.pid})")
    return 0


def status_command(args: argparse.Namespace) -> int:
    """``devnet status``: running or not, uptime, and what the database holds."""
    data_dir = _data_dir(args)
    info = _running(data_dir)
    if info is None:
        print(f"devnet: not running (data dir {data_dir})")
    else:
        uptime = _format_duration(time.time() - info.started_at)
        print(f"devnet: running, pid {info.pid}, port {info.port} on 127.0.0.1 and ::1, up {uptime}")
    if info is not None and info.memory:
        print("data: in memory (counts are not available from outside the process)")
    else:
        counts = Store.read_counts(data_dir / DB_FILENAME)
        if counts is None:
            print(f"data: none yet in {data_dir}")
        else:
            print(f"data: {data_dir / DB_FILENAME}")
            print(f"  inboxes:        {counts.inboxes}")
            print(f"  installations:  {counts.installations}")
            print(f"  conversations:  {counts.conversations}")
            print(f"  messages:       {counts.messages}")
            print(f"  welcomes:       {counts.welcomes}")
    return 0 if info is not None else _NOT_RUNNING


def _format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"
