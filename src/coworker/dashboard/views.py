"""What each dashboard page shows, as JSON-able values: the JSON API returns them as they are and the pages render
them. Read through the agent and its store's API (never SQL), bounded: a page is at most :data:`PAGE` rows, so
that it costs the same with ten tasks or a million."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, Protocol

from coworker._errors import ConfigurationError, CoworkerError
from coworker.agent.control import ControlledAgent
from coworker.agent.groups import GroupAgent
from coworker.agent.peer import task_dict
from coworker.core.tasks import LIVE, TaskState, receipt_problem
from coworker.core.trust import TrustTier
from coworker.core.wallets import checksum
from coworker.runtime.journal import Journal, JournalEntry
from coworker.store.records import TaskRecord, TrustAuditEntry


class DashboardAgent(ControlledAgent, GroupAgent, Protocol):
    """What the dashboard needs of an agent (:class:`~coworker.agent.agent.DashboardAgent` is one): what the control
    port needs, and the journal, the trust audit and the rest below. A protocol, so that the dashboard does not
    import the agent that starts it."""

    @property
    def running(self) -> bool: ...
    @property
    def network_source(self) -> str: ...
    @property
    def journal(self) -> Journal | None: ...
    def messages(self, *, after: int = 0, limit: int = 200, peer: str | None = None,
                 task_id: str | None = None) -> Sequence[JournalEntry]: ...
    def trust_audit(self, limit: int = 100, wallet: str | None = None) -> Sequence[TrustAuditEntry]: ...
    def skill_hidden(self, name: str) -> bool: ...
    def collaborations(self, limit: int = 20) -> list[dict[str, Any]]: ...
    async def resume_collaboration(self, collaboration_id: str) -> dict[str, Any]: ...
    async def cancel(self, task_id: str) -> bool: ...

LOCAL_NODE_PORT = 5556  # where the local network's node (coworker devnet) listens
PAGE = 50  # rows on a page of tasks, messages or receipts
TIERS = [t.name.lower() for t in TrustTier]
STATES = [str(s) for s in TaskState]


async def overview(agent: DashboardAgent) -> dict[str, Any]:
    """Name, wallet, network and why, the XMTP inbox and sidecar, the devnet, throughput and errors, budget."""
    source = agent.network_source
    why = {"argument": "given to Agent(network=...)", "COWORKER_NETWORK": "from the COWORKER_NETWORK variable",
           "default": "the default: the local XMTP node (coworker devnet)"}.get(source, f"from {source}")
    stats = agent.stats()
    outbox = stats.pop("outbox", None) or {}
    away = stats.pop("away", {})
    xmtp: dict[str, Any] | None = None
    transport = agent.transport
    if transport is not None and hasattr(transport, "status"):
        try:
            xmtp = await asyncio.wait_for(transport.status(), 3.0)
        except Exception as exc:  # the sidecar may be restarting: say so, the page still loads
            xmtp = {"error": str(exc) or type(exc).__name__}
    tasks = agent.store.task_stats(limit=1000, now=time.time())
    return {
        "name": agent.name, "wallet": agent.wallet, "pid": os.getpid(), "running": agent.running,
        "network": agent.network_name, "network_why": why,
        "xmtp": xmtp, "devnet": await _devnet_health(agent.network_name),
        "tasks": tasks, "rate_limits": stats, "away": away,
        "writes": {"used": outbox.get("writes_in_window"), "limit": outbox.get("write_limit"),
                   "window_s": outbox.get("write_window_s"), "frames_sent": outbox.get("frames_sent"),
                   "payloads_sent": outbox.get("payloads_sent"), "queued": outbox.get("queued")},
        "skills": len(agent.skills), "peers": len(agent.peers()),
        "pending_trust": len(agent.trust_requests()),
    }


async def _devnet_health(network: str) -> dict[str, Any] | None:
    """For the local network: whether the devnet answers on its port (None on other networks)."""
    port = LOCAL_NODE_PORT
    if network != "local":
        return None
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
    except (OSError, TimeoutError) as exc:
        return {"port": port, "up": False, "error": str(exc) or type(exc).__name__}
    writer.close()
    return {"port": port, "up": True}


def trust(agent: DashboardAgent) -> dict[str, Any]:
    """Pending requests, every peer we have a tier for or have met, and the latest changes."""
    pending = [{"wallet": r.wallet, "tier": r.tier.name.lower(), "reason": r.reason, "received_at": r.received_at,
                "name": _name(agent, r.wallet)} for r in agent.trust_requests()]
    tiers = {checksum(w): t for w, t in agent.store.trusted_peers()}
    peers = []
    for p in agent.peers():
        peers.append({"wallet": p.wallet, "name": p.name, "tier": tiers.pop(p.wallet, TrustTier.UNTRUSTED).name.lower(),
                      "last_seen": p.last_seen})
    peers += [{"wallet": w, "name": "", "tier": t.name.lower(), "last_seen": None} for w, t in tiers.items()]
    audit = [{**asdict(e), "old_tier": _tier(e.old_tier), "new_tier": _tier(e.new_tier), "name": _name(agent, e.wallet)}
             for e in agent.trust_audit(limit=PAGE)]
    return {"pending": pending, "peers": peers, "audit": audit, "tiers": TIERS}


def _tier_name(value: Any) -> str:
    """A tier as a peer's card gave it (a number), by name; as it came when it is no tier."""
    try:
        return TrustTier.parse(value).name.lower()
    except (ValueError, TypeError):
        return str(value)


def _tier(tier: TrustTier | None) -> str | None:
    return tier.name.lower() if tier is not None else None


def _name(agent: DashboardAgent, wallet: str, names: dict[str, str] | None = None) -> str:
    """The name a peer gave itself ("" when unknown); ``names`` keeps those looked up for one page."""
    if names is not None and wallet in names:
        return names[wallet]
    record = agent.store.peer(wallet)
    name = record.name if record is not None else ""
    if names is not None:
        names[wallet] = name
    return name


def tasks(agent: DashboardAgent, *, direction: str | None = None, state: str | None = None, peer: str | None = None,
          skill: str | None = None, before: float | None = None) -> dict[str, Any]:
    """One page of tasks, newest first, with the filters that chose it."""
    if direction not in (None, "in", "out"):
        raise ConfigurationError(f"direction is 'in' or 'out', not {direction!r}")
    if state is not None and state not in STATES:
        raise ConfigurationError(f"not a task state: {state!r}")
    wallet = checksum(peer) if peer else None
    rows = agent.store.task_page(direction=direction, state=state, peer=wallet, skill=skill or None, limit=PAGE + 1,
                                 before=before)
    more = len(rows) > PAGE
    rows = rows[:PAGE]
    names: dict[str, str] = {}
    return {"tasks": [_row(agent, t, names) for t in rows],
            "filters": {"direction": direction or "", "state": state or "", "peer": peer or "", "skill": skill or ""},
            "next_before": rows[-1].created_at if more and rows else None, "states": STATES}


def _row(agent: DashboardAgent, task: TaskRecord, names: dict[str, str]) -> dict[str, Any]:
    return {"task_id": task.id, "direction": task.direction, "peer": task.peer,
            "peer_name": _name(agent, task.peer, names),
            "local": task.peer.lower() == agent.wallet.lower(), "skill": task.skill, "state": str(task.state),
            "created_at": task.created_at, "updated_at": task.updated_at, "duration_ms": task.duration_ms,
            "attempts": task.attempts, "error_code": task.error_code, "live": task.state in LIVE}


def find_task(agent: DashboardAgent, direction: str, task_id: str, peer: str | None) -> TaskRecord:
    """A task by its direction, id and (for a served task, whose id is the caller's) the peer."""
    if direction not in ("in", "out"):
        raise ConfigurationError(f"direction is 'in' or 'out', not {direction!r}")
    task = agent.store.task(direction, task_id, checksum(peer) if peer else None)
    if task is None:
        raise ConfigurationError(f"no task {task_id}")
    return task


def task(agent: DashboardAgent, direction: str, task_id: str, peer: str | None,
         progress: list[dict[str, Any]]) -> dict[str, Any]:
    """One task in full: its record, its timeline (stored times and the messages this run saw), its progress
    reports and its receipt with the verdict."""
    record = find_task(agent, direction, task_id, peer)
    if direction == "out":
        from coworker.runtime.receipts import settle_receipt

        settle_receipt(agent.store, record, agent.wallet)
    timeline: list[dict[str, Any]] = [{"at": record.created_at, "what": "created", "detail": ""}]
    for m in reversed(agent.messages(task_id=task_id, limit=200)):
        if m.peer.lower() != record.peer.lower():
            continue
        what = f"{'sent' if m.direction == 'out' else 'received'} {m.kind}"
        detail = m.reason or _progress_text(m.detail)
        timeline.append({"at": m.at, "what": what, "detail": detail, "verdict": m.verdict})
    if record.state not in LIVE:
        timeline.append({"at": record.updated_at, "what": str(record.state),
                         "detail": f"{record.error_code}: {record.error_message}" if record.error_code else ""})
    timeline.sort(key=lambda e: e["at"])
    return {**task_dict(record), "peer_name": _name(agent, record.peer), "input": record.input,
            "local": record.peer.lower() == agent.wallet.lower(), "live": record.state in LIVE,
            "timeline": timeline, "progress": progress, "receipt_check": receipt_check(agent, record)}


def _progress_text(detail: dict[str, Any]) -> str:
    if not detail:
        return ""
    parts = []
    if detail.get("progress") is not None:
        parts.append(f"{float(detail['progress']) * 100:.0f}%")
    if detail.get("message"):
        parts.append(str(detail["message"]))
    return " ".join(parts)


def receipt_check(agent: DashboardAgent, task: TaskRecord) -> dict[str, Any] | None:
    """Check a task's receipt now: ``{"valid": bool, "problem": str | None, "signer": wallet}``; None without one."""
    if task.receipt is None:
        return None
    caller, provider = (agent.wallet, task.peer) if task.direction == "out" else (task.peer, agent.wallet)
    status = "completed" if task.state == TaskState.COMPLETED else "failed"
    problem = receipt_problem(task.receipt, task_id=task.id, skill=task.skill, caller=caller, provider=provider,
                              status=status)
    return {"valid": problem is None, "problem": problem, "signer": provider}


def messages(agent: DashboardAgent, *, peer: str | None = None, after: int = 0) -> dict[str, Any]:
    """The latest protocol messages in and out, with their verdicts (this run's, newest first)."""
    entries = agent.messages(after=after, limit=200, peer=checksum(peer) if peer else None)
    journal = agent.journal
    names: dict[str, str] = {}
    rows = [{**asdict(e), "peer_name": _name(agent, e.peer, names)} for e in entries]
    return {"messages": rows, "latest": journal.seq if journal is not None else 0, "filters": {"peer": peer or ""}}


def skills(agent: DashboardAgent) -> dict[str, Any]:
    """Every skill: card (schemas), tier, whether peers may see it."""
    overview = {s["name"]: s for s in agent.skills_overview()}
    out = []
    for name, skill in sorted(agent.skills.items()):
        card = skill.card()
        out.append({**card, "tier": overview.get(name, {}).get("tier", ""),
                    "hidden": overview.get(name, {}).get("hidden", False)})
    return {"skills": out}


def peers(agent: DashboardAgent) -> dict[str, Any]:
    """Peers we have met, their cards (the skills they let us see) and our tier for them."""
    out = []
    pinned = {w.lower() for w in agent.store.pinned_peers()}
    for p in agent.peers():
        card = p.card or {}
        cards = [{**c, "tier": _tier_name(c.get("min_trust_tier"))} for c in card.get("skills") or []
                 if isinstance(c, dict)]
        out.append({"wallet": p.wallet, "name": p.name, "tier": agent.trust_tier(p.wallet).name.lower(),
                    "skills": cards, "mcp_pinned": p.wallet.lower() in pinned, "first_seen": p.first_seen,
                    "last_seen": p.last_seen,
                    "protocol": agent.store.peer_protocol(p.wallet) or ""})
    return {"peers": out}


MEMBERS_WAIT = 5.0  # seconds a group's member list may take (over XMTP: the sidecar asks its client)


async def groups(agent: DashboardAgent, discovered: dict[str, tuple[float, dict[str, Any]]]) -> dict[str, Any]:
    """Every group we made or were invited to, with its members (of the joined ones) and the latest discovery
    asked from this dashboard."""
    out = []
    for record in agent.groups():
        members: list[dict[str, Any]] = []
        problem = ""
        if record.state == "joined" and agent.running:
            try:
                wallets = await asyncio.wait_for(agent.group(record.id).members(), MEMBERS_WAIT)
                members = [{"wallet": w, "name": _name(agent, w), "tier": agent.trust_tier(w).name.lower(),
                            "self": w.lower() == agent.wallet.lower()} for w in wallets]
            except (CoworkerError, TimeoutError) as exc:
                problem = str(exc) or type(exc).__name__
        at, found = discovered.get(record.id, (None, None))
        out.append({"id": record.id, "name": record.name, "description": record.description,
                    "inviter": record.inviter, "inviter_name": _name(agent, record.inviter), "state": record.state,
                    "created_at": record.created_at, "updated_at": record.updated_at, "members": members,
                    "members_problem": problem, "discovered_at": at, "discovered": found,
                    "admin": record.inviter.lower() == agent.wallet.lower()})
    return {"groups": out}


def collaborations(agent: DashboardAgent) -> dict[str, Any]:
    """The latest collaborations, each with its steps."""
    return {"collaborations": agent.collaborations(PAGE)}


def receipts(agent: DashboardAgent, *, before: float | None = None, limit: int = PAGE) -> dict[str, Any]:
    """Ended tasks with a receipt (ours from peers, and the ones we signed), newest first."""
    found: list[dict[str, Any]] = []
    cursor = before
    while len(found) < limit:
        rows = agent.store.task_page(limit=limit * 4, before=cursor)
        if not rows:
            break
        for t in rows:
            if t.receipt is not None and t.state not in LIVE:
                check = receipt_check(agent, t)
                found.append({"task_id": t.id, "direction": t.direction, "peer": t.peer, "skill": t.skill,
                              "state": str(t.state), "ended_at": t.updated_at, "receipt": t.receipt,
                              "valid": check["valid"] if check else None,
                              "problem": check["problem"] if check else None,
                              "created_at": t.created_at})
                if len(found) == limit:
                    break
        cursor = rows[-1].created_at
        if len(rows) < limit * 4:
            break
    return {"receipts": found, "next_before": found[-1]["created_at"] if len(found) == limit else None}
