"""The blocking facade: :class:`Agent` runs an :class:`~coworker.agent.agent.AsyncAgent` on one background loop."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from coworker._errors import ConfigurationError
from coworker.agent.agent import AsyncAgent
from coworker.agent.groups import Group
from coworker.agent.peer import Peer
from coworker.agent.portal import Portal
from coworker.core.skills import Skill, SkillFunction
from coworker.core.tasks import Progress
from coworker.core.trust import TrustTier
from coworker.runtime.collaboration import Planner
from coworker.runtime.journal import Journal, JournalEntry
from coworker.store.records import CallRecord, GroupRecord, PeerRecord, TrustAuditEntry, TrustRequest

if TYPE_CHECKING:
    from coworker.agent.mcp_client import McpServerLink
    from coworker.dashboard import Dashboard

F = TypeVar("F", bound=SkillFunction)

class Agent:
    """A CoWorker agent for ordinary (blocking) code; every method has an ``AsyncAgent`` twin.

    Network methods start the agent on first use; :meth:`serve` blocks and answers peers until interrupted.
    Takes the same arguments as :class:`AsyncAgent`.

    Example::

        agent = Agent("my-bot")

        @agent.skill("summarize", description="Summarize text")
        def summarize(text: str, max_words: int = 50) -> dict:
            return {"summary": text[:100], "word_count": len(text.split())}

        agent.serve()
    """

    def __init__(self, name: str, **options: Any) -> None:
        self._portal = Portal.shared()
        self._agent = AsyncAgent(name, **options)
        self._serving = threading.Event()
        self._agent._on_stop.append(self._serving.set)  # stopped from inside (the control endpoint's stop)

    def __repr__(self) -> str:
        return f"<Agent {self.name} {self.wallet}>"

    @property
    def aio(self) -> AsyncAgent:
        """The async agent behind this facade (for use on the facade's own loop only)."""
        return self._agent

    name = property(lambda self: self._agent.name)
    wallet = property(lambda self: self._agent.wallet)
    data_dir = property(lambda self: self._agent.data_dir)
    network_name = property(lambda self: self._agent.network_name)
    running = property(lambda self: self._agent.running)
    skills = property(lambda self: self._agent.skills)

    def skill(self, name: str | None = None, **options: Any) -> Callable[[F], F]:
        """Register the decorated function as a skill; see :meth:`AsyncAgent.skill`."""
        return self._agent.skill(name, **options)

    def add_skill(self, fn: SkillFunction, **options: Any) -> Skill:
        """Register ``fn`` as a skill; see :meth:`AsyncAgent.add_skill`."""
        return self._agent.add_skill(fn, **options)

    def add_skill_folders(self, *roots: str | Path, expose: bool = False) -> list[Skill]:
        """Register the skill folders under each root; see :meth:`AsyncAgent.add_skill_folders`."""
        return self._run(lambda: self._agent.add_skill_folders(*roots, expose=expose))  # type: ignore[no-any-return]

    def add_mcp_server(self, command_or_url: str | Sequence[str], *, prefix: str | None = None,
                       min_trust_tier: TrustTier | int = TrustTier.INTERNAL) -> McpServerLink:
        """Serve an MCP server's tools as skills while the agent runs; see :meth:`AsyncAgent.add_mcp_server`."""
        return self._run(lambda: self._agent.add_mcp_server(  # type: ignore[no-any-return]
            command_or_url, prefix=prefix, min_trust_tier=min_trust_tier))

    def hide_skill(self, name: str) -> None:
        """Hide a skill from every peer; see :meth:`AsyncAgent.hide_skill`."""
        self._run(lambda: self._agent.hide_skill(name))

    def expose_skill(self, name: str) -> None:
        """Let peers see a hidden skill again; see :meth:`AsyncAgent.expose_skill`."""
        self._run(lambda: self._agent.expose_skill(name))

    def skill_hidden(self, name: str) -> bool:
        """See :meth:`AsyncAgent.skill_hidden`."""
        return self._run(lambda: self._agent.skill_hidden(name))  # type: ignore[no-any-return]

    def set_default_visibility(self, name: str, *, exposed: bool) -> None:
        """See :meth:`AsyncAgent.set_default_visibility`."""
        self._run(lambda: self._agent.set_default_visibility(name, exposed=exposed))

    def skills_overview(self) -> list[dict[str, Any]]:
        """See :meth:`AsyncAgent.skills_overview`."""
        return self._run(self._agent.skills_overview)  # type: ignore[no-any-return]

    def _run(self, fn: Callable[[], Any]) -> Any:
        async def call() -> Any:
            result = fn()
            return await result if asyncio.iscoroutine(result) else result

        return self._portal.run(call())

    def start(self) -> None:
        """Join the network and answer peers in the background."""
        self._run(self._agent.start)
        _started.add(self)

    def stop(self) -> None:
        """Leave the network (bounded: running calls get a few seconds)."""
        self._run(self._agent.stop)
        _started.discard(self)
        self._serving.set()

    def close(self) -> None:
        """Stop and close the database."""
        self.stop()
        self._run(self._agent.close)

    def serve(self, *, dashboard: bool = True, dashboard_host: str = "127.0.0.1", dashboard_port: int = 8090) -> None:
        """Start, serve the dashboard (unless ``dashboard=False``), say so on stdout (name, wallet, network, how
        to stop it) and answer peers until SIGINT or SIGTERM (or :meth:`stop` from another thread). See
        :meth:`AsyncAgent.serve`."""
        self._serving.clear()  # before start: a stop() from another thread as soon as it runs is not missed
        self.start()
        if dashboard and self._agent.dashboard is None:
            try:
                self.start_dashboard(host=dashboard_host, port=dashboard_port)
            except ConfigurationError as exc:  # the agent serves peers without it
                print(f"no dashboard: {exc}", file=sys.stderr, flush=True)
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda *_: self._serving.set())
        try:
            print(self._agent._banner(ctrl_c=bool(previous)), flush=True)
            self._serving.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stop()

    def start_dashboard(self, *, host: str = "127.0.0.1", port: int = 8090) -> Dashboard:
        """See :meth:`AsyncAgent.start_dashboard`."""
        return self._portal.run(self._agent.start_dashboard(host=host, port=port))

    @property
    def dashboard(self) -> Dashboard | None:
        """See :attr:`AsyncAgent.dashboard`."""
        return self._agent.dashboard

    def __enter__(self) -> Agent:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def ping(self, wallet: str, *, timeout: float = 30) -> float:
        """See :meth:`AsyncAgent.ping`."""
        return self._portal.run(self._agent.ping(wallet, timeout=timeout))

    def connect(self, wallet: str, *, timeout: float = 30) -> Peer:
        """See :meth:`AsyncAgent.connect`."""
        _started.add(self)
        return self._portal.run(self._agent.connect(wallet, timeout=timeout))

    def call(self, wallet: str, skill: str, input: dict[str, Any] | None = None, *, timeout: float = 30,
             max_duration: float | None = None, on_progress: Callable[[Progress], None] | None = None,
             version: str | None = None) -> Any:
        """See :meth:`AsyncAgent.call` (``on_progress`` runs on the agent's event loop thread)."""
        _started.add(self)
        return self._portal.run(self._agent.call(wallet, skill, input, timeout=timeout, max_duration=max_duration,
                                                 on_progress=on_progress, version=version))

    def request(self, wallet: str, skill: str, input: dict[str, Any] | None = None, *,
                timeout: float | None = None, max_duration: float | None = None,
                on_progress: Callable[[Progress], None] | None = None, version: str | None = None,
                task_id: str | None = None) -> str:
        """See :meth:`AsyncAgent.request`."""
        _started.add(self)
        return self._portal.run(self._agent.request(wallet, skill, input, timeout=timeout,
                                                    max_duration=max_duration, on_progress=on_progress,
                                                    version=version, task_id=task_id))

    def wait(self, task_id: str, timeout: float | None = None) -> Any:
        """See :meth:`AsyncAgent.wait`."""
        _started.add(self)
        return self._portal.run(self._agent.wait(task_id, timeout))

    def get_result(self, task_id: str) -> dict[str, Any]:
        """See :meth:`AsyncAgent.get_result`."""
        return self._run(lambda: self._agent.get_result(task_id))  # type: ignore[no-any-return]

    def list_tasks(self, state: str | None = None, limit: int = 20, *,
                   direction: str | None = None) -> list[dict[str, Any]]:
        """See :meth:`AsyncAgent.list_tasks`."""
        return self._run(lambda: self._agent.list_tasks(state, limit, direction=direction))  # type: ignore[no-any-return]

    def cancel(self, task_id: str) -> bool:
        """See :meth:`AsyncAgent.cancel`."""
        _started.add(self)
        return self._portal.run(self._agent.cancel(task_id))

    def watch(self, task_id: str) -> Iterator[Progress]:
        """See :meth:`AsyncAgent.watch`."""
        _started.add(self)
        updates = self._agent.watch(task_id)

        async def step() -> Progress:
            return await anext(updates)

        try:
            while True:
                try:
                    yield self._portal.run(step())
                except StopAsyncIteration:
                    return
        finally:
            self._portal.run(updates.aclose())

    def request_trust(self, wallet: str, tier: TrustTier | int = TrustTier.KNOWN, reason: str = "", *,
                      timeout: float = 30) -> str:
        """See :meth:`AsyncAgent.request_trust`."""
        _started.add(self)
        return self._portal.run(self._agent.request_trust(wallet, tier, reason, timeout=timeout))

    def trust_requests(self) -> list[TrustRequest]:
        """See :meth:`AsyncAgent.trust_requests`."""
        return self._run(self._agent.trust_requests)  # type: ignore[no-any-return]

    def trust_tier(self, wallet: str) -> TrustTier:
        """See :meth:`AsyncAgent.trust_tier`."""
        return self._run(lambda: self._agent.trust_tier(wallet))  # type: ignore[no-any-return]

    def set_trust(self, wallet: str, tier: TrustTier | int) -> None:
        """See :meth:`AsyncAgent.set_trust`."""
        self._run(lambda: self._agent.set_trust(wallet, tier))

    def approve_trust(self, wallet: str, tier: TrustTier | int | None = None) -> TrustTier:
        """See :meth:`AsyncAgent.approve_trust`."""
        return self._portal.run(self._agent.approve_trust(wallet, tier))

    def deny_trust(self, wallet: str) -> None:
        """See :meth:`AsyncAgent.deny_trust`."""
        self._portal.run(self._agent.deny_trust(wallet))

    def trust_audit(self, limit: int = 100, wallet: str | None = None) -> list[TrustAuditEntry]:
        """See :meth:`AsyncAgent.trust_audit`."""
        return self._run(lambda: self._agent.trust_audit(limit, wallet))  # type: ignore[no-any-return]

    def peers(self) -> list[PeerRecord]:
        """See :meth:`AsyncAgent.peers`."""
        return self._run(self._agent.peers)  # type: ignore[no-any-return]

    def stats(self) -> dict[str, Any]:
        """See :meth:`AsyncAgent.stats`."""
        return self._run(self._agent.stats)  # type: ignore[no-any-return]

    def calls(self, limit: int = 50) -> list[CallRecord]:
        """See :meth:`AsyncAgent.calls`."""
        return self._run(lambda: self._agent.calls(limit))  # type: ignore[no-any-return]

    @property
    def journal(self) -> Journal | None:
        """See :attr:`AsyncAgent.journal`."""
        return self._agent.journal

    def messages(self, *, after: int = 0, limit: int = 200, peer: str | None = None,
                 task_id: str | None = None) -> list[JournalEntry]:
        """See :meth:`AsyncAgent.messages`."""
        return self._run(lambda: self._agent.messages(after=after, limit=limit, peer=peer,  # type: ignore[no-any-return]
                                                      task_id=task_id))

    def collaborate(self, wallet: str, goal: str, *, plan: Any = None, planner: Planner | None = None,
                    timeout: float = 300, collaboration_id: str | None = None) -> dict[str, Any]:
        """See :meth:`AsyncAgent.collaborate`."""
        _started.add(self)
        return self._portal.run(self._agent.collaborate(wallet, goal, plan=plan, planner=planner, timeout=timeout,
                                                        collaboration_id=collaboration_id))

    def resume_collaboration(self, collaboration_id: str) -> dict[str, Any]:
        """See :meth:`AsyncAgent.resume_collaboration`."""
        _started.add(self)
        return self._portal.run(self._agent.resume_collaboration(collaboration_id))

    def create_group(self, name: str, members: Sequence[str], *, description: str = "") -> Group:
        """Make a group with ``members``; see :meth:`AsyncAgent.create_group`."""
        return Group(self._portal, self._portal.run(self._agent.create_group(name, members,
                                                                             description=description)))

    def groups(self) -> list[GroupRecord]:
        """Every group we made or were invited to; see :meth:`AsyncAgent.groups`."""
        return self._run(self._agent.groups)  # type: ignore[no-any-return]

    def group(self, group_id: str) -> Group:
        """A group from :meth:`groups`; see :meth:`AsyncAgent.group`."""
        return Group(self._portal, self._run(lambda: self._agent.group(group_id)))

    def collaborations(self, limit: int = 20) -> list[dict[str, Any]]:
        """See :meth:`AsyncAgent.collaborations`."""
        return self._run(lambda: self._agent.collaborations(limit))  # type: ignore[no-any-return]


# Blocking agents that may be running; stopped at interpreter exit so that locks and databases close cleanly.
_started: set[Agent] = set()


@atexit.register
def _stop_all() -> None:
    for agent in list(_started):
        with contextlib.suppress(Exception):
            agent.stop()
