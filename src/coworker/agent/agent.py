"""The public agent API: :class:`AsyncAgent`, the implementation (:class:`~coworker.agent.blocking.Agent` is its
blocking facade).

One piece: :class:`AsyncAgent` is the public surface, one class whose methods carry the documentation users read;
what they do lives elsewhere (settings in :mod:`.config`, peers in :mod:`.peer`, the control port in :mod:`.control`,
messages and tasks in :mod:`coworker.runtime`), so the length here is mostly docstrings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from coworker import _paths
from coworker._errors import (
    CallTimeout,
    ConfigurationError,
    CoworkerError,
    IdentityError,
    StoreError,
    TransportError,
    error_from_wire,
)
from coworker._version import __version__
from coworker.agent.config import LOCK_FILE, AgentLock, network_name, parse_tier, resolve_network, validate_agent_name
from coworker.agent.control import ControlServer
from coworker.agent.groups import AsyncGroup, check_members
from coworker.agent.peer import Peer, task_dict
from coworker.core.groups import app_data
from coworker.core.limits import RateLimiter, RateLimits
from coworker.core.protocol import ErrorBody, parse_body
from coworker.core.skills import (
    Skill,
    SkillFunction,
    VisibleSkills,
    build_skill,
    skill_overview,
    valid_skill_name,
)
from coworker.core.tasks import LIVE, Progress, RetryPolicy, TaskState
from coworker.core.trust import TrustTier
from coworker.core.wallets import checksum
from coworker.runtime.collaboration import Collaborations, Planner
from coworker.runtime.dispatch import Runtime, TrustPolicy
from coworker.runtime.groups import Groups
from coworker.runtime.journal import Journal, JournalEntry
from coworker.runtime.outbox import Outbox
from coworker.runtime.receipts import settle_receipt
from coworker.store.identity import KEYSTORE_FILE, Identity
from coworker.store.records import (
    CallRecord,
    GroupRecord,
    PeerRecord,
    TaskRecord,
    TrustAuditEntry,
    TrustRequest,
)
from coworker.store.sqlite import SQLiteStore
from coworker.transports.base import Network, Transport

if TYPE_CHECKING:
    from coworker.agent.mcp_client import McpServerLink, McpTool
    from coworker.dashboard import Dashboard

log = logging.getLogger("coworker.agent")

F = TypeVar("F", bound=SkillFunction)
T = TypeVar("T")

DB_FILE = "coworker.db"
DEFAULT_REQUEST_CAP = 24 * 3600.0  # seconds a request with no timeout may take
_TASK_ID = re.compile(r"^[0-9a-f]{32}$")


class AsyncAgent:
    """An agent for asyncio code. :class:`Agent` offers the same methods, blocking.

    Args:
        name: the agent's name; its files live in ``$COWORKER_HOME/agents/<name>/`` unless ``data_dir`` is given.
        network: ``"local"``, ``"dev"``, ``"production"``, or a network object such as :class:`MemoryNetwork`.
            None: ``COWORKER_NETWORK``, else what ``coworker init --network`` chose, else ``"local"``.
        data_dir: where the wallet, the database and the logs live.
        auto_accept_trust: grant trust requests automatically, up to ``max_auto_accept_tier``.
        max_auto_accept_tier: the highest tier granted without approval.
        passphrase: encrypts a new wallet (V3 keystore) or decrypts an existing one; default
            ``COWORKER_PASSPHRASE``.
        retry: when unanswered requests are sent again (default: 2 s, doubling, at most 30 s).
        rate_limits: what each peer may send, by trust tier (:class:`RateLimits`; default: a stranger 2
            messages/s, 10 at once, 4 KB each, all strangers 20/s; KNOWN 50/s, 200 at once; INTERNAL 500/s;
            PRIVILEGED no limit). More is dropped unanswered and counted in :meth:`stats`.

    Example::

        async with AsyncAgent("caller", network=net) as agent:
            peer = await agent.connect(wallet)
            result = await agent.call(wallet, "summarize", {"text": "..."})
    """

    def __init__(self, name: str, *, network: str | Network | None = None, data_dir: str | Path | None = None,
                 auto_accept_trust: bool = False, max_auto_accept_tier: TrustTier | int = TrustTier.KNOWN,
                 passphrase: str | None = None, retry: RetryPolicy | None = None,
                 clock: Callable[[], float] = time.time, rate_limits: RateLimits | None = None,
                 v1: bool = True) -> None:
        self.name = validate_agent_name(name)
        self.data_dir = Path(data_dir).expanduser() if data_dir is not None else _paths.agent_dir(name)
        self._network_spec = network
        self._passphrase = passphrase if passphrase is not None else os.environ.get("COWORKER_PASSPHRASE")
        max_tier = parse_tier(max_auto_accept_tier, "max_auto_accept_tier")
        _paths.ensure_private_dir(self.data_dir)
        self._identity: Identity | None = None
        if (self.data_dir / KEYSTORE_FILE).exists() and not self._passphrase:
            self.wallet = self._keystore_address()
        else:
            self._identity = Identity.load_or_create(self.data_dir, self._passphrase)
            self.wallet = self._identity.address
        self.store = SQLiteStore(self.data_dir / DB_FILE)
        self._skills: dict[str, Skill] = {}
        self._hidden: set[str] = self.store.hidden_skills()  # names the owner hid from every peer
        self._visible = VisibleSkills(self._skills, self._hidden)  # what the runtime answers peers from
        self._policy = TrustPolicy(bool(auto_accept_trust), max_tier)
        self._clock = clock
        self._retry = retry
        self._v1 = bool(v1)  # answer CoWorker 1.0 agents in 1.0, and speak it to peers that speak only that
        if rate_limits is not None and not isinstance(rate_limits, RateLimits):
            raise ConfigurationError(f"rate_limits is a RateLimits, got {type(rate_limits).__name__}")
        self._limiter = RateLimiter(rate_limits or RateLimits())
        self._runtime: Runtime | None = None
        self._outbox: Outbox | None = None  # the latest run's, kept for stats() after a stop
        self._journal: Journal | None = None  # the latest run's, kept for messages() after a stop
        self._lock = AgentLock(self.data_dir / LOCK_FILE)
        self._start_lock: asyncio.Lock | None = None
        self._stopped: asyncio.Event | None = None
        self._control: ControlServer | None = None
        self._dashboard: Dashboard | None = None  # serve()'s (or start_dashboard's), stopped with the agent
        self._stopping: asyncio.Task[None] | None = None
        self._on_stop: list[Callable[[], None]] = []  # called whenever the agent stops (the facade's serve)
        self._collaborations = Collaborations(self)
        self._mcp_links: list[McpServerLink] = []  # add_mcp_server's, started and stopped with the agent

    def __repr__(self) -> str:
        return f"<AsyncAgent {self.name} {self.wallet}>"

    def _keystore_address(self) -> str:
        try:
            data = json.loads((self.data_dir / KEYSTORE_FILE).read_text())
            return checksum("0x" + str(data["address"]).removeprefix("0x"))
        except (OSError, ValueError, KeyError, CoworkerError) as exc:
            raise IdentityError(f"cannot read the wallet address from {self.data_dir / KEYSTORE_FILE}: "
                                f"{type(exc).__name__}") from None

    @property
    def network_name(self) -> str:
        """The name of the network this agent uses (``"local"``, ``"memory"``, ...)."""
        return network_name(self._network_spec, self.data_dir)[0]

    @property
    def network_source(self) -> str:
        """Where the choice of network came from: ``"argument"``, ``"COWORKER_NETWORK"``, the agent's config file,
        or ``"default"`` (the local node)."""
        return network_name(self._network_spec, self.data_dir)[1]

    @property
    def running(self) -> bool:
        return self._runtime is not None

    @property
    def dashboard(self) -> Dashboard | None:
        """The dashboard this agent serves while it runs (:meth:`serve` starts it), or None."""
        return self._dashboard

    @property
    def transport(self) -> Transport | None:
        """The open transport while the agent runs (an ``XmtpTransport`` on XMTP networks)."""
        return self._runtime.transport if self._runtime is not None else None

    # ---- skills -------------------------------------------------------------------------------------------

    def skill(self, name: str | None = None, *, description: str | None = None, input_schema: Any = None,
              output_schema: Any = None, min_trust_tier: TrustTier | int = TrustTier.KNOWN,
              version: str = "1.0.0") -> Callable[[F], F]:
        """Register the decorated function as a skill; the function is returned unchanged.

        Example::

            @agent.skill("summarize", description="Summarize text")
            def summarize(text: str, max_words: int = 50) -> dict: ...
        """
        if callable(name):
            raise TypeError("use @agent.skill() with parentheses (optionally with a name and options)")

        def register(fn: F) -> F:
            self.add_skill(fn, name=name, description=description, input_schema=input_schema,
                           output_schema=output_schema, min_trust_tier=min_trust_tier, version=version)
            return fn

        return register

    def add_skill(self, fn: SkillFunction, *, name: str | None = None, description: str | None = None,
                  input_schema: Any = None, output_schema: Any = None,
                  min_trust_tier: TrustTier | int = TrustTier.KNOWN, version: str = "1.0.0") -> Skill:
        """Register ``fn`` as a skill (see :meth:`skill`) and return its description.

        Raises:
            ConfigurationError: a bad name, schema or tier, or a name already taken.
        """
        skill = build_skill(fn, name=name, description=description, input_schema=input_schema,
                            output_schema=output_schema, min_trust_tier=min_trust_tier, version=version)
        if skill.name in self._skills:
            raise ConfigurationError(f"a skill named {skill.name!r} is already registered")
        self._skills[skill.name] = skill
        if self._runtime is not None:
            self._publish_skills()
        return skill

    def add_skill_folders(self, *roots: str | Path, expose: bool = False) -> list[Skill]:
        """Register every loadable skill folder (a ``SKILL.md`` and its scripts) under each root and return them.

        With no root: ``~/.openclaw/workspace/skills``, ``~/.agents/skills``, ``~/.openclaw/skills`` and
        ``~/.nanobot/workspace/skills``, a name in an earlier root shadowing the same name later. A root that is
        itself a skill folder is loaded alone. Each call of a script skill runs its script in a subprocess (see
        :mod:`coworker.agent.folder_skills`); an instruction-only folder asks the configured LLM. A folder that
        cannot load (bad frontmatter, a missing binary, ...) is logged and skipped: ``coworker skills scan`` says
        why. A skill found for the first time stays hidden from peers until exposed (:meth:`expose_skill`,
        ``coworker skills expose``), unless ``expose`` is true; the owner's later choice is kept either way.

        Raises:
            ConfigurationError: a folder's skill has the name of a skill already registered.

        Example::

            agent.add_skill_folders("~/.openclaw/workspace/skills")
            agent.expose_skill("weather")
        """
        from coworker.agent.folder_skills import OUTPUT_SCHEMA, load  # subprocess and YAML code only when used

        found = load(roots, ())
        taken = sorted(spec.name for spec, _ in found if spec.name in self._skills)
        if taken:
            raise ConfigurationError(f"skill folders {', '.join(taken)} have the names of skills already registered")
        added: list[Skill] = []
        for spec, fn in found:
            self.set_default_visibility(spec.name, exposed=expose)
            added.append(self.add_skill(fn, name=spec.name, description=spec.description,
                                        input_schema=spec.input_schema, output_schema=OUTPUT_SCHEMA,
                                        min_trust_tier=spec.min_trust_tier))
        return added

    def add_mcp_server(self, command_or_url: str | Sequence[str], *, prefix: str | None = None,
                       min_trust_tier: TrustTier | int = TrustTier.INTERNAL) -> McpServerLink:
        """Serve an MCP server's tools as skills: each tool becomes the skill ``<prefix>__<tool>`` (the tool's
        name when ``prefix`` is None; characters a skill name may not hold become ``_``), its input schema the
        tool's, callable by peers trusted at ``min_trust_tier`` (INTERNAL by default: an MCP server often reaches
        files, shells or accounts). The owner added the server, so its tools are visible at once, like skills of
        code; :meth:`hide_skill` hides one.

        The server runs while the agent runs: started (its tools listed) by :meth:`start`, stopped by
        :meth:`stop`. A command runs with no shell and the MCP SDK's default environment (not the agent's
        secrets); a URL is a streamable-HTTP server, over ``https://`` unless it is on this machine. MCP
        progress reaches the caller as progress; a tool's error is :class:`SkillFailed` with its text; if the
        server dies, calls fail with "the MCP server ... is not running; restarting" and it is restarted,
        waiting 0.5 s, then twice as long each time up to 30 s. See :mod:`coworker.agent.mcp_client`.

        Args:
            command_or_url: ``"npx -y @modelcontextprotocol/server-everything"`` (split as a shell would, run
                without one), an argv list, or ``"http://127.0.0.1:8000/mcp"``.

        Returns:
            the server's link; its ``skill_names`` once the agent started.

        Raises:
            ConfigurationError: an empty command, a bad prefix or tier, a plain-HTTP URL of another machine, or
                the agent is running (add MCP servers before :meth:`start`). :meth:`start` raises it when the
                server does not start, or a tool's skill name is taken.

        Example::

            agent.add_mcp_server("python -m my_tools.server", prefix="tools")
            await agent.start()   # peers trusted at INTERNAL can call "tools__search"
        """
        from coworker.agent.mcp_client import McpServerLink  # the MCP SDK only when used

        tier = parse_tier(min_trust_tier, "min_trust_tier")
        if self._runtime is not None:
            raise ConfigurationError("add MCP servers before the agent starts (its tools are listed at start)")

        def register(link: McpServerLink, tools: list[McpTool]) -> None:
            self._add_mcp_tools(link, tools, tier)

        link = McpServerLink(command_or_url, prefix=prefix, register=register)
        self._mcp_links.append(link)
        return link

    def _add_mcp_tools(self, link: McpServerLink, tools: list[McpTool], tier: TrustTier) -> None:
        from coworker.agent.mcp_client import skill_name

        built: dict[str, Skill] = {}
        for tool in tools:
            name = skill_name(link.prefix, tool.name)
            if name in built:
                raise ConfigurationError(f"the MCP server {link.label} has two tools named {name!r} as skills: "
                                         f"give it a prefix, or fix its tool names")
            if name in self._skills and name not in link.skill_names:
                raise ConfigurationError(f"the MCP server {link.label}'s tool {tool.name!r} would be the skill "
                                         f"{name!r}, already registered: pass add_mcp_server(prefix=...)")
            built[name] = build_skill(link.skill_function(tool.name), name=name, description=tool.description,
                                      input_schema=tool.input_schema, output_schema=tool.output_schema,
                                      min_trust_tier=tier, version="1.0.0")
        for gone in link.skill_names - built.keys():  # a tool the server no longer has: SkillNotFound
            self._skills.pop(gone, None)
        self._skills.update(built)  # a tool listed again replaces its skill (its schema may have changed)
        link.skill_names = set(built)
        if self._runtime is not None:
            self._publish_skills()

    @property
    def skills(self) -> dict[str, Skill]:
        """The registered skills, by name (hidden ones too: see :meth:`hide_skill`)."""
        return dict(self._skills)

    def _publish_skills(self) -> None:
        self.store.set_setting("skills", json.dumps([s.card() for s in self._skills.values()]))

    # ---- skill visibility ---------------------------------------------------------------------------------

    def hide_skill(self, name: str) -> None:
        """Hide a skill from every peer: to each of them it is then exactly like a skill that does not exist
        (absent from discover, a call to it gets :class:`SkillNotFound`, a plan naming it is rejected).

        Recorded in the agent's store (durable when this returns) and kept across restarts; on a running agent
        it applies from the next message. A task the skill already took goes on running, after a restart too,
        and its caller gets its result: hiding stops new calls.

        Raises:
            ConfigurationError: the agent has no skill named ``name``.
        """
        self._set_hidden(name, True)

    def expose_skill(self, name: str) -> None:
        """Let peers see and call a hidden skill again (at the tier it needs), as :meth:`hide_skill` hid it.

        Raises:
            ConfigurationError: the agent has no skill named ``name``.
        """
        self._set_hidden(name, False)

    def _set_hidden(self, name: str, hidden: bool) -> None:
        if not isinstance(name, str) or name not in self._skills:
            raise ConfigurationError(f"{self.name} has no skill named {name!r} (skills: "
                                     f"{', '.join(sorted(self._skills)) or 'none'})")
        self.store.set_skill_visibility(name, hidden, self._clock())
        self.store.flush()  # durable when this returns, like every decision an owner makes
        if hidden:
            self._hidden.add(name)
        else:
            self._hidden.discard(name)

    def skill_hidden(self, name: str) -> bool:
        """Whether ``name`` is hidden from peers: recorded hidden by :meth:`hide_skill` or
        :meth:`set_default_visibility` (a name with no record is exposed; a name not registered may have one)."""
        return name in self._recorded_hidden()

    def _recorded_hidden(self) -> set[str]:
        """The hidden names; a stopped agent reads them again (the CLI records choices while it is stopped)."""
        if self._runtime is None:
            self._hidden.clear()
            self._hidden.update(self.store.hidden_skills())
        return self._hidden

    def set_default_visibility(self, name: str, *, exposed: bool) -> None:
        """Record whether ``name`` is exposed only when nothing is recorded for it yet (the owner's later
        :meth:`hide_skill` or :meth:`expose_skill` is never undone). A skill loader calls it for a skill found
        for the first time, before registering it, so that a new skill waits for the owner's review hidden.

        Raises:
            ConfigurationError: ``name`` is not a valid skill name.
        """
        if not valid_skill_name(name):
            raise ConfigurationError(f"invalid skill name {name!r}")
        if self.store.set_skill_visibility(name, not exposed, self._clock(), only_if_unset=True):
            self.store.flush()
            if not exposed:
                self._hidden.add(name)

    def skills_overview(self) -> list[dict[str, Any]]:
        """Each registered skill and whether peers may know of it, by name: ``{"name", "description",
        "version", "tier": "known", "min_trust_tier": 1, "hidden": False}``."""
        hidden = self._recorded_hidden()
        return [skill_overview(s.card(), s.name in hidden) for _, s in sorted(self._skills.items())]

    # ---- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Join the network and start answering peers. Idempotent."""
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._runtime is not None:
                return
            if self.store.closed:
                raise StoreError(f"agent {self.name} was closed: create a new Agent to start it again")
            network = resolve_network(self._network_spec, self.data_dir)
            if self._identity is None:
                self._identity = Identity.load_or_create(self.data_dir, self._passphrase)
            self._lock.acquire()
            self._recorded_hidden()  # as recorded now: the CLI records choices while the agent is stopped
            try:
                for link in self._mcp_links:  # their tools are skills before any peer asks
                    await link.start()
            except BaseException:
                await self._stop_mcp_links()
                self._lock.release()
                raise
            runtime = Runtime(identity=self._identity, name=self.name, store=self.store, skills=self._visible,
                              policy=self._policy, clock=self._clock, retry=self._retry, limiter=self._limiter,
                              v1=self._v1, registered=self._skills)
            self._journal = runtime.journal
            try:
                await runtime.open(network, self.data_dir)
            except BaseException:
                await self._stop_mcp_links()
                self._lock.release()
                raise
            control = ControlServer(self, on_stop=self._stop_soon)
            try:
                await control.start()
            except BaseException:
                await runtime.close()
                await self._stop_mcp_links()
                self._lock.release()
                raise
            self._runtime, self._control = runtime, control
            self._outbox = runtime._link.outbox  # Runtime has no public accessor for its link (yet)
            self._stopped = asyncio.Event()
            self.store.set_setting("network", network.name)
            self._publish_skills()
            log.info("agent %s (%s) started on %s with %d skills", self.name, self.wallet, network.name,
                     len(self._skills))

    async def stop(self) -> None:
        """Stop answering peers and leave the network; running calls get a few seconds to finish."""
        runtime, self._runtime = self._runtime, None
        if runtime is None:
            return
        control, self._control = self._control, None
        dashboard, self._dashboard = self._dashboard, None
        try:
            if dashboard is not None:
                await dashboard.stop()
            if control is not None:
                await control.close()
            await runtime.close()
        finally:
            await self._stop_mcp_links()  # after the runtime: running calls had their few seconds to finish
            self._lock.release()
            if self._stopped is not None:
                self._stopped.set()
            for listener in self._on_stop:
                listener()
            log.info("agent %s stopped", self.name)

    async def _stop_mcp_links(self) -> None:
        for link in self._mcp_links:
            await link.stop()

    def _stop_soon(self) -> None:
        """Stop from a callback (the control endpoint's ``stop``); serve() returns."""
        if self._stopping is None or self._stopping.done():
            self._stopping = asyncio.get_running_loop().create_task(self.stop(), name="coworker-stop")

    def close(self) -> None:
        """Close the database. The agent must be stopped."""
        if self._runtime is not None:
            raise RuntimeError("stop the agent before closing it")
        self.store.close()

    async def serve(self, *, dashboard: bool = True, dashboard_host: str = "127.0.0.1",
                    dashboard_port: int = 8090) -> None:
        """Start (if needed), serve the dashboard (unless ``dashboard=False``), say so on stdout (name, wallet,
        network, how to stop it) and answer peers until SIGINT or SIGTERM, or until :meth:`stop`.

        Args:
            dashboard: serve the owner's dashboard (:meth:`start_dashboard`); ``coworker dashboard`` logs in.
            dashboard_host: the address it listens on; anything but loopback must be asked for.
            dashboard_port: its port, or the next free one after it.
        """
        await self.start()
        if dashboard and self._dashboard is None:
            try:
                await self.start_dashboard(host=dashboard_host, port=dashboard_port)
            except ConfigurationError as exc:  # the agent serves peers without it
                log.warning("no dashboard: %s", exc)
                print(f"no dashboard: {exc}", file=sys.stderr, flush=True)
        loop = asyncio.get_running_loop()
        stopped = self._stopped
        assert stopped is not None
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stopped.set)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                pass
        try:
            print(self._banner(ctrl_c=bool(installed)), flush=True)
            await stopped.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            await self.stop()

    async def start_dashboard(self, *, host: str = "127.0.0.1", port: int = 8090) -> Dashboard:
        """Serve the owner's dashboard while the agent runs: on ``host`` (loopback unless asked otherwise) at
        ``port`` or the next free port after it (0: any free port). The owner logs in with a one-time link
        (``coworker dashboard``, or ``agent.dashboard.login_link()``). Idempotent; :meth:`stop` stops it.

        Raises:
            ConfigurationError: the agent is not running, or no port is free.
        """
        if self._dashboard is not None:
            return self._dashboard
        control = self._control
        if control is None:
            raise ConfigurationError(f"start agent {self.name} before its dashboard")
        from coworker.dashboard import Dashboard  # Starlette, uvicorn and Jinja2 load only for a dashboard

        dashboard = Dashboard(self, control.tasks)
        await dashboard.start(host, port)
        self._dashboard = dashboard
        return dashboard

    def _banner(self, *, ctrl_c: bool) -> str:
        """What :meth:`serve` (and the blocking facade's) prints once the agent is on the network."""
        info = getattr(self.transport, "info", None)
        where = f", XMTP inbox {info.inbox_id[:16]}..., sidecar pid {info.pid}" if info is not None else ""
        logs = self.data_dir / "logs"
        hidden = sorted(self._hidden & self._skills.keys())
        skills = (f"skills: {', '.join(sorted(self._visible)) or 'none'}"
                  + (f" (hidden from peers: {', '.join(hidden)})" if hidden else "")
                  + (f"; logs in {logs}" if logs.is_dir() else ""))
        if self._dashboard is not None:
            skills += f"\ndashboard: {self._dashboard.url} (`coworker dashboard --agent {self.name}` logs in)"
        stop = "Ctrl-C stops it" if ctrl_c else "stop() stops it"
        if self.data_dir.resolve() == _paths.agent_dir(self.name).resolve():  # where the CLI finds it
            stop += f" (or `coworker bridge stop --agent {self.name}` from another shell)"
        return "\n".join((f"serving {self.name} ({self.wallet}) on {self.network_name}{where}", skills, stop))

    async def __aenter__(self) -> AsyncAgent:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    async def _live(self) -> Runtime:
        await self.start()
        assert self._runtime is not None
        return self._runtime

    # ---- talking to peers ---------------------------------------------------------------------------------

    async def ping(self, wallet: str, *, timeout: float = 30) -> float:
        """Round trip to a peer in milliseconds. Any peer answers, trusted or not."""
        runtime, peer = await self._live(), checksum(wallet)
        started = time.perf_counter()
        reply, _, _ = await runtime.request(peer, "ping", {}, timeout)
        self._raise_for_error(reply)
        return (time.perf_counter() - started) * 1000

    async def connect(self, wallet: str, *, timeout: float = 30) -> Peer:
        """Discover a peer: its name and the skills it lets us see.

        Example::

            peer = await agent.connect("0xB0B...")
            peer["skills"]  # ["summarize"] once the peer trusts us, [] before
        """
        runtime, peer = await self._live(), checksum(wallet)
        started = time.perf_counter()
        reply, _, _ = await runtime.request(peer, "discover", {}, timeout)
        rtt = (time.perf_counter() - started) * 1000
        self._raise_for_error(reply)
        body = parse_body(reply)
        cards = [card.model_dump() for card in body.skills]
        self.store.touch_peer(peer, self._clock(), name=body.name, card={"skills": cards})
        return Peer(name=body.name, wallet=peer, skills=[c["name"] for c in cards], skill_cards=cards,
                    trust_tier=self.store.trust_tier(peer), rtt_ms=rtt,
                    protocol="1.0" if reply.dialect is not None else "2")

    async def call(self, wallet: str, skill: str, input: dict[str, Any] | None = None, *,
                   timeout: float = 30, max_duration: float | None = None,
                   on_progress: Callable[[Progress], None] | None = None, version: str | None = None) -> Any:
        """Run a peer's skill and return its output: a task (see :meth:`request`) awaited to its end.

        Args:
            timeout: seconds the peer may stay silent: no answer to the request, or no progress from a
                running skill. Each progress report starts the count again.
            max_duration: the absolute cap in seconds, however much progress is reported (default 10x
                ``timeout``).
            on_progress: called on the agent's event loop with each :class:`Progress` report.
            version: ask for this version of the skill.

        Raises:
            AccessDenied: the peer does not trust us enough to take calls.
            SkillNotFound: no such skill, or one we may not see.
            InvalidInput: the input breaks the skill's schema (``.path`` names the field).
            SkillFailed: the skill raised (the peer's message only).
            CallTimeout: no answer, or no progress, within ``timeout`` seconds (or past ``max_duration``).
            TaskCanceled: the task was canceled.
            ProtocolError: a message was refused as breaking the protocol.
        """
        task_id = await self.request(wallet, skill, input, timeout=timeout, max_duration=max_duration,
                                     on_progress=on_progress, version=version)
        try:
            return await self.wait(task_id)
        except asyncio.CancelledError:
            if self._runtime is not None:  # the caller gave up: so does the peer
                with contextlib.suppress(CoworkerError):
                    self._runtime.cancel(task_id)
            raise

    async def request(self, wallet: str, skill: str, input: dict[str, Any] | None = None, *,
                      timeout: float | None = None, max_duration: float | None = None,
                      on_progress: Callable[[Progress], None] | None = None, version: str | None = None,
                      task_id: str | None = None) -> str:
        """Ask a peer to run a skill and return the task id at once; the task is stored before anything is
        sent, delivered (and re-sent) in the background, and picked up again after a restart.

        Follow it with :meth:`wait`, :meth:`get_result`, :meth:`watch` or :meth:`cancel`.

        Args:
            timeout: seconds the peer may stay silent before the task expires (None: no limit).
            max_duration: the absolute cap in seconds (default 10x ``timeout``, or 24 hours without one).
            task_id: choose the id (32 lower-case hex digits), e.g. one stored beforehand: it is the
                idempotency key, so an id already used is refused rather than sent twice.

        Raises:
            ConfigurationError: the input is not a JSON object, or ``task_id`` is malformed or taken.
            LocalProtocolError: the request is over the network's message size limit.

        Example::

            task_id = await agent.request(wallet, "research", {"topic": "XMTP"})
            ...
            report = await agent.wait(task_id)
        """
        if input is None:
            input = {}
        if not isinstance(input, dict):
            raise ConfigurationError(f"a skill's input is a JSON object (a dict), got {type(input).__name__}")
        for name, value in (("timeout", timeout), ("max_duration", max_duration)):
            if value is not None and not value > 0:
                raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")
        if task_id is not None and not (isinstance(task_id, str) and _TASK_ID.match(task_id)):
            raise ConfigurationError(f"a task id is 32 lower-case hex digits, got {task_id!r}")
        runtime, peer = await self._live(), checksum(wallet)
        cap = max_duration if max_duration is not None else (None if timeout is not None else DEFAULT_REQUEST_CAP)
        task_id = runtime.submit(peer, skill, input, version=version, timeout=timeout, cap=cap,
                                 on_progress=on_progress, task_id=task_id)
        await self.store.sync()  # stored (committed) before this returns, with whatever else waits for a commit
        return task_id

    async def wait(self, task_id: str, timeout: float | None = None) -> Any:
        """Wait for one of our tasks to end and return its output, or raise as :meth:`call` does.

        Args:
            timeout: seconds to wait (None: until the task ends); the task itself goes on after a timeout here.

        Raises:
            ConfigurationError: no task of ours has that id.
            CallTimeout: ``timeout`` passed first (or the task itself expired).
        """
        runtime = await self._live()
        task = self._own_task(task_id)
        watch = runtime.watch(task_id)
        if task.state in LIVE and watch is not None:
            try:
                async with asyncio.timeout(timeout):
                    await watch.done.wait()
            except TimeoutError:
                raise CallTimeout(f"task {task_id} is still {watch.task.state} after {timeout:g} s") from None
            task = watch.task
        if task.state == TaskState.COMPLETED:
            return task.output
        if task.state in LIVE:
            raise TransportError(f"the agent stopped before task {task_id} ended (it is {task.state}; it goes on "
                                 f"when the agent starts again)")
        raise error_from_wire(task.error_code or "CALL_ERROR", task.error_message or task.state,
                              task.error_path or "")

    def get_result(self, task_id: str) -> dict[str, Any]:
        """Where a task stands, ours or one we served: a dict with ``task_id``, ``state``, ``result`` (the
        output once completed), ``error`` (``{"code", "message", "path"}`` once it failed), and ``direction``,
        ``peer``, ``skill``, ``created_at``, ``updated_at``, ``duration_ms``, ``attempts``, ``receipt``,
        ``receipt_valid``.

        Raises:
            ConfigurationError: no task has that id.
        """
        task = self._task(task_id)
        if task is None:
            raise ConfigurationError(f"no task {task_id}")
        settle_receipt(self.store, task, self.wallet)
        return task_dict(task)

    def list_tasks(self, state: str | None = None, limit: int = 20, *,
                   direction: str | None = None) -> list[dict[str, Any]]:
        """The latest tasks (as :meth:`get_result` describes them), newest first; optionally only those in
        ``state`` and of one ``direction`` (``"out"``: ours, ``"in"``: served)."""
        if state is not None and state not in {str(s) for s in TaskState}:
            raise ConfigurationError(f"not a task state: {state!r} (use one of {', '.join(TaskState)})")
        if direction not in (None, "in", "out"):
            raise ConfigurationError(f"direction is 'in' or 'out', not {direction!r}")
        tasks = self.store.tasks(direction, state, limit)
        for task in tasks:
            settle_receipt(self.store, task, self.wallet)
        return [task_dict(t) for t in tasks]

    async def cancel(self, task_id: str) -> bool:
        """Cancel one of our tasks and tell the peer; False when it had ended already.

        Raises:
            ConfigurationError: no task of ours has that id.
        """
        runtime = await self._live()
        return runtime.cancel(task_id)

    async def watch(self, task_id: str) -> AsyncGenerator[Progress, None]:
        """The progress reports of one of our tasks, from its start, until it ends.

        What is kept for a watcher is bounded (the latest 1,000 reports, 4 MB): a watcher that falls further
        behind misses the oldest of them (logged once per task); the task's output is complete all the same.

        Example::

            task_id = await agent.request(wallet, "draft", {"topic": "MLS"})
            async for update in agent.watch(task_id):
                print(update.progress, update.message, update.partials)
        """
        runtime = await self._live()
        self._own_task(task_id)
        watch = runtime.watch(task_id)
        if watch is None:
            return
        feed = watch.subscribe()
        try:
            while True:
                event = await feed.get()
                if event is None:
                    return
                yield event
        finally:
            watch.unsubscribe(feed)

    def _task(self, task_id: str) -> TaskRecord | None:
        if not isinstance(task_id, str):
            raise ConfigurationError(f"a task id is a string, got {type(task_id).__name__}")
        runtime = self._runtime
        watch = runtime.watch(task_id) if runtime is not None else None
        if watch is not None:
            return watch.task
        return self.store.task("out", task_id) or self.store.task("in", task_id)

    def _own_task(self, task_id: str) -> TaskRecord:
        task = self._task(task_id)
        if task is None or task.direction != "out":
            raise ConfigurationError(f"no task {task_id} of ours")
        return task

    @staticmethod
    def _raise_for_error(reply: Any) -> None:
        if reply.type in ("error", "call.error"):
            body = parse_body(reply)
            assert isinstance(body, ErrorBody)
            raise error_from_wire(body.code, body.message, body.path)

    # ---- collaborations -----------------------------------------------------------------------------------

    async def collaborate(self, wallet: str, goal: str, *, plan: Any = None, planner: Planner | None = None,
                          timeout: float = 300, collaboration_id: str | None = None) -> dict[str, Any]:
        """Work towards ``goal`` with a peer: plan steps across both agents, propose the plan to the peer, run
        the steps in order (the peer's as tasks, ours locally), each fed with earlier steps' outputs.

        The plan comes from ``plan`` when given, else from ``planner``, else from the LLM planner when
        ``COWORKER_LLM_BASE_URL`` is set, else from the keyword planner. The collaboration is stored before
        the proposal leaves and after every step; :meth:`resume_collaboration` continues it after a stop.

        Once the peer accepted the plan, nothing is raised: a failed step ends the plan with state
        ``"failed"`` (the outputs of the steps before it are in the result; ``error`` names the step), and an
        agent stopped mid-plan leaves it ``"running"``.

        Args:
            plan: the steps, ``[{"id", "skill", "agent": "self" | "peer" | wallet, "input"}, ...]``, or
                ``{"steps": [...], "key_results": [...]}``. A string in an input may be
                ``"{{<step id>.output}}"`` or ``"{{<step id>.output.<field>}}"``, the output of an earlier step.
            planner: any object whose ``plan(goal, own_skill_cards, peer_skill_cards)`` returns such a plan
                (or an awaitable of one), e.g. :class:`KeywordPlanner` or :class:`LLMPlanner`.
            timeout: seconds the peer has to answer the proposal, and each step to finish (a step on the
                peer: without progress).
            collaboration_id: 32 hex digits to name it; an existing one (same peer and goal) is resumed.

        Returns:
            ``{"collaboration_id", "goal", "peer", "state": "completed" | "failed" | "running", "steps":
            [{"id", "skill", "agent", "side", "status", "duration_ms", "template", "input", "inputs_from",
            "output", "error", "task_id", "attempts"}], "key_results": [{"description", "step", "done"}],
            "progress": "2/2", "error", ...}``

        Raises:
            ConfigurationError: the plan cannot run (an unknown skill for its side, a reference to a later
                step, ...), or the planner failed; nothing was sent.
            PlanRejected: the peer refused the plan (its reason is the message).
            AccessDenied: the peer does not trust us to propose plans.
            CallTimeout: the peer did not answer the proposal.

        Example::

            result = await agent.collaborate(wallet, "Research AI agents and write a report")
            result["progress"], result["steps"][1]["output"]
        """
        return await self._collaborations.start(wallet, goal, plan=plan, planner=planner, timeout=timeout,
                                                collaboration_id=collaboration_id)

    async def resume_collaboration(self, collaboration_id: str) -> dict[str, Any]:
        """Continue a stored collaboration: completed steps are not run again, a step on the peer waits for the
        task it already sent, a failed step is tried again; returns as :meth:`collaborate` does.

        Raises:
            ConfigurationError: no such collaboration, or it is running already.
            PlanRejected: the peer had rejected its plan.
        """
        return await self._collaborations.resume(collaboration_id)

    def collaborations(self, limit: int = 20) -> list[dict[str, Any]]:
        """The latest collaborations we started (as :meth:`collaborate` returns them), newest first."""
        return self._collaborations.latest(limit)

    # ---- groups -------------------------------------------------------------------------------------------

    async def create_group(self, name: str, members: Sequence[str], *, description: str = "") -> AsyncGroup:
        """Make a group with ``members`` (wallets), where we are the only admin (admin-only permissions: only we
        add and remove members). Its purpose (``description``) and the CoWorker version are kept in its metadata.
        Membership grants no trust: each member shows and runs for us what its trust of us allows.

        Raises:
            ConfigurationError: no other member, or one that is not a wallet.
            PeerUnreachable: a member has no inbox on this network.

        Example::

            group = await agent.create_group("research", [bob, carol], description="papers on MLS")
            peers = await group.discover()
        """
        wallets = check_members(list(members), self.wallet)
        runtime = await self._live()
        record = await runtime.groups.create(str(name), str(description), app_data(__version__), wallets)
        return AsyncGroup(self, record)

    def groups(self) -> list[GroupRecord]:
        """Every group we made or were invited to, newest first, with our ``state`` in it (``joined``,
        ``ignored``: an invitation from a peer held below KNOWN, ``left``, ``removed``)."""
        return self.store.groups()

    def group(self, group_id: str) -> AsyncGroup:
        """A group from :meth:`groups`.

        Raises:
            ConfigurationError: no such group.
        """
        record = self.store.group(group_id)
        if record is None:
            raise ConfigurationError(f"no group {group_id!r}: see groups()")
        return AsyncGroup(self, record)

    async def _group_runtime(self) -> Groups:
        return (await self._live()).groups

    # ---- trust --------------------------------------------------------------------------------------------

    async def request_trust(self, wallet: str, tier: TrustTier | int = TrustTier.KNOWN, reason: str = "", *,
                            timeout: float = 30) -> str:
        """Ask a peer to trust us at ``tier``: returns ``"granted"``, ``"pending"`` or ``"denied"``.

        Raises:
            ConfigurationError: a bad tier, or ``wallet`` is our own (nothing is sent).
        """
        wanted, peer = parse_tier(tier), checksum(wallet)
        if peer.lower() == self.wallet.lower():
            raise ConfigurationError(f"{peer} is this agent's own wallet: an agent does not ask itself for trust")
        runtime = await self._live()
        reply, _, _ = await runtime.request(peer, "trust.request", {"tier": int(wanted), "reason": reason}, timeout)
        self._raise_for_error(reply)
        state = {"trust.grant": "granted", "trust.pending": "pending", "trust.deny": "denied"}.get(reply.type)
        if state is None:
            raise error_from_wire("PROTOCOL_ERROR", f"unexpected answer {reply.type!r} to a trust request")
        granted = TrustTier.parse(parse_body(reply).tier) if state == "granted" else wanted
        self.store.set_standing(peer, state, granted, self._clock())
        return state

    def trust_requests(self) -> list[TrustRequest]:
        """Trust requests waiting for approval, oldest first."""
        return self.store.trust_requests()

    def trust_tier(self, wallet: str) -> TrustTier:
        """The tier we hold for ``wallet`` (UNTRUSTED when unknown)."""
        return self.store.trust_tier(checksum(wallet))

    def set_trust(self, wallet: str, tier: TrustTier | int) -> None:
        """Set the tier we hold for ``wallet``, up or down, and drop any pending request of its."""
        peer, new = checksum(wallet), parse_tier(tier)
        self.store.set_trust(peer, new, self._clock(), by="owner")
        self.store.pop_trust_request(peer)
        self.store.flush()  # durable when this returns, like every decision an owner makes

    async def approve_trust(self, wallet: str, tier: TrustTier | int | None = None) -> TrustTier:
        """Grant a pending trust request (at the tier asked for, or ``tier``); tell the peer if we are running.

        Without ``tier`` the grant is the tier :meth:`trust_requests` lists, never more: a peer that asks again
        for a higher tier while its request waits leaves the waiting one as it is (asking again for the same
        tier or a lower one replaces it), so a request cannot be raised between the owner's look and the
        approval. A grant never lowers the tier already held. Returns the tier now held.

        Raises:
            ConfigurationError: no pending request from ``wallet``.
        """
        peer = checksum(wallet)
        chosen = None if tier is None else parse_tier(tier)  # before the request is taken off the list
        request = self.store.pop_trust_request(peer)
        if request is None:
            raise ConfigurationError(f"no pending trust request from {peer} (set_trust sets a tier without one)")
        new = max(chosen or request.tier, self.store.trust_tier(peer))
        self.store.set_trust(peer, new, self._clock(), by="owner")
        self.store.flush()
        await self._tell(peer, "trust.grant", {"tier": int(new)}, request.request_id)
        return new

    async def deny_trust(self, wallet: str) -> None:
        """Refuse a pending trust request; tell the peer if we are running.

        Raises:
            ConfigurationError: no pending request from ``wallet``.
        """
        peer = checksum(wallet)
        request = self.store.pop_trust_request(peer, denied_at=self._clock(), by="owner")
        if request is None:
            raise ConfigurationError(f"no pending trust request from {peer}")
        self.store.flush()
        await self._tell(peer, "trust.deny", {"tier": int(self.store.trust_tier(peer))}, request.request_id)

    def trust_audit(self, limit: int = 100, wallet: str | None = None) -> list[TrustAuditEntry]:
        """The trust audit trail, newest first (of every peer, or of ``wallet``): our tier for a peer set (by the
        owner or the auto-accept policy), requests peers made of us, the owner's denials, and the answers peers
        gave to our requests (see :class:`~coworker.store.records.TrustAuditEntry`). Kept in the database: the
        newest 10,000 entries."""
        return self.store.trust_audit(limit, None if wallet is None else checksum(wallet))

    async def _tell(self, peer: str, kind: str, body: dict[str, Any], corr: str) -> None:
        if self._runtime is None:
            return  # the peer learns the outcome from its next request
        try:
            await self._runtime.notify(peer, kind, body, corr)
        except CoworkerError as exc:
            log.warning("could not tell %s about %s: %s", peer, kind, exc)

    # ---- what we remember ---------------------------------------------------------------------------------

    def peers(self) -> list[PeerRecord]:
        """Peers we have exchanged messages with, most recent first."""
        return self.store.peers()

    def stats(self) -> dict[str, Any]:
        """What the rate limits dropped since the agent was created, and what it sent on its latest run:
        ``{"dropped": {"too_large": n, "over_budget": n, "strangers": n}, "tracked_peers": n, "outbox": {...}}``
        (see :class:`RateLimits`). ``outbox`` (None before the first start): ``frames_sent`` (messages on the
        wire), ``payloads_sent`` (protocol messages in them), ``payloads_per_frame``, ``frames_failed``,
        ``queued``, the write budget (``write_limit``, ``write_window_s``, ``writes_in_window``; limit and use
        None without a limit), ``budget_waits`` and ``budget_wait_s`` (time frames waited for the budget), and
        ``batch`` (whether batching is on). ``away``: the peers presumed away while it runs (they answered nothing
        since our last request; probed, not sent to again), with our live tasks there."""
        return {**self._limiter.stats(), "outbox": self._outbox.stats() if self._outbox is not None else None,
                "away": self._runtime.away() if self._runtime is not None else {}}

    def calls(self, limit: int = 50) -> list[CallRecord]:
        """The latest calls made and served, newest first."""
        return self.store.calls(limit)

    @property
    def journal(self) -> Journal | None:
        """The journal of the protocol messages in and out of the latest run (None before the first start): its
        ``seq`` is the latest entry's, and ``add_listener`` hears of each new one."""
        return self._journal

    def messages(self, *, after: int = 0, limit: int = 200, peer: str | None = None,
                 task_id: str | None = None) -> list[JournalEntry]:
        """The latest protocol messages in and out (the last 2,000 of the latest run, kept in memory), newest
        first: those after the entry numbered ``after``, of one peer, or about one task. Each says what became of
        it: handled, refused (and why), dropped (and why), sent or failed (see
        :class:`~coworker.runtime.journal.JournalEntry`); what the messages carried (inputs, outputs) is not kept.

        Example::

            for m in agent.messages(peer=wallet, limit=10):
                print(m.direction, m.kind, m.verdict, m.reason)
        """
        if self._journal is None:
            return []
        return self._journal.entries(after=after, limit=limit, peer=None if peer is None else checksum(peer),
                                     task_id=task_id)


