"""Serving the dashboard: uvicorn on the agent's own event loop, on 127.0.0.1:8090 or the next free port."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from typing import TYPE_CHECKING

import uvicorn

from coworker._errors import ConfigurationError
from coworker.dashboard.app import DashboardApp
from coworker.dashboard.security import Gate, Sessions, allowed_hosts

if TYPE_CHECKING:
    from coworker.agent.owner_tasks import OwnerTasks
    from coworker.dashboard.views import DashboardAgent

log = logging.getLogger("coworker.dashboard")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8090
PORTS_TRIED = 50  # 8090 taken: 8091, ... up to 50 ports on
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class Dashboard:
    """One running agent's dashboard. Started by :meth:`AsyncAgent.start_dashboard
    <coworker.agent.agent.AsyncAgent.start_dashboard>` (``serve()`` does it), stopped with the agent."""

    def __init__(self, agent: DashboardAgent, owner_tasks: OwnerTasks) -> None:
        self.sessions = Sessions()
        self.app = DashboardApp(agent, owner_tasks, self.sessions)
        self.host = DEFAULT_HOST
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"

    def login_link(self) -> str:
        """A link that logs a browser in, once, within a few minutes (see :mod:`coworker.dashboard.security`)."""
        return f"{self.url}/login?t={self.sessions.link_token()}"

    async def start(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
        """Listen on ``host``:``port``, or the next free port of the :data:`PORTS_TRIED` after it (``port`` 0: any
        free port). A host that is not loopback must be asked for (and is logged as a warning).

        Raises:
            ConfigurationError: no port free, or the host cannot be listened on.
        """
        if host not in LOOPBACK:
            log.warning("the dashboard listens on %s, beyond loopback: anyone who can reach it sees the login page "
                        "(logging in still takes a link from `coworker dashboard`)", host)
        self.host = host
        sock = _bind(host, port)
        self.port = sock.getsockname()[1]
        hosts = allowed_hosts(host, self.port)
        config = uvicorn.Config(Gate(self.app.app, lambda: hosts), log_level="warning", lifespan="off",
                                access_log=False, proxy_headers=False, server_header=False,
                                timeout_graceful_shutdown=2, ws="none")
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])  # listening when this returns; uvicorn.Server.serve would also
        # take SIGINT and SIGTERM, which belong to the agent's process (serve() stops the agent, and it this)
        self._server, self._socket = server, sock
        self._task = asyncio.get_running_loop().create_task(self._run(server, sock), name="coworker-dashboard")
        log.info("dashboard on %s", self.url)

    @staticmethod
    async def _run(server: uvicorn.Server, sock: socket.socket) -> None:
        await server.main_loop()
        await server.shutdown(sockets=[sock])

    async def stop(self) -> None:
        """Stop serving (event streams end, open requests get a moment)."""
        await self.app.close()
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 5)
        if self._socket is not None:
            self._socket.close()
        self._server = self._task = self._socket = None


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    last: OSError | None = None
    for candidate in [0] if port == 0 else range(port, port + PORTS_TRIED):
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio sets TCP_NODELAY only then
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, candidate))
            sock.listen(64)
            sock.setblocking(False)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
            if exc.errno != errno.EADDRINUSE:
                break
    raise ConfigurationError(f"the dashboard cannot listen on {host} from port {port}: {last}")

