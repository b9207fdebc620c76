"""What the dashboard's pages ask the agent to do: the JSON POSTs under ``/api/`` (trust, tasks, skills, peers,
groups, collaborations, receipts). Each takes the request's JSON object and returns what the page's script shows;
a bad or missing field is an :class:`~coworker._errors.InvalidInput` naming it (the API answers 400)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import coworker.dashboard.views as views
from coworker._errors import CoworkerError, InvalidInput
from coworker.agent.control import pin, unpin
from coworker.agent.groups import run_group_command
from coworker.agent.invites import peer_wallet
from coworker.agent.peer import peer_json
from coworker.core.trust import TrustTier
from coworker.core.wallets import checksum
from coworker.dashboard.views import DashboardAgent

if TYPE_CHECKING:
    from coworker.agent.owner_tasks import OwnerTasks

log = logging.getLogger("coworker.dashboard")


class Actions:
    """The dashboard's actions on one agent; the owner's tasks (a skill tried, a peer's skill called) go through
    ``owner_tasks``, as ``coworker mcp``'s do."""

    def __init__(self, agent: DashboardAgent, owner_tasks: OwnerTasks) -> None:
        self.agent, self.owner_tasks = agent, owner_tasks
        self.discovered: dict[str, tuple[float, dict[str, Any]]] = {}  # group id -> when, {wallet: card}
        self._background: set[asyncio.Task[Any]] = set()

    async def close(self) -> None:
        """End the collaborations resumed from the dashboard (bounded)."""
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(self._background, timeout=5)

    async def approve(self, body: dict[str, Any]) -> dict[str, Any]:
        tier = await self.agent.approve_trust(_wallet(body), _tier(body.get("tier")))
        return {"tier": tier.name.lower()}

    async def deny(self, body: dict[str, Any]) -> dict[str, Any]:
        await self.agent.deny_trust(_wallet(body))
        return {"denied": True}

    async def set_tier(self, body: dict[str, Any]) -> dict[str, Any]:
        tier = _tier(body.get("tier"))
        if tier is None:
            raise InvalidInput("choose a tier", path="tier")
        self.agent.set_trust(_wallet(body), tier)
        return {"tier": tier.name.lower()}

    async def cancel(self, body: dict[str, Any]) -> dict[str, Any]:
        task_id = _text(body, "task_id")
        if self.owner_tasks.is_local(task_id):
            return {"cancelled": await self.owner_tasks.cancel(task_id)}
        record = views.find_task(self.agent, str(body.get("direction") or "out"), task_id, body.get("peer") or None)
        if record.direction != "out":
            raise InvalidInput("a served task is the caller's to cancel", path="task_id")
        return {"cancelled": await self.agent.cancel(task_id)}

    async def try_skill(self, body: dict[str, Any]) -> dict[str, Any]:
        skill, data = _text(body, "skill"), _object(body.get("input"))
        task_id = self.owner_tasks.run_skill(skill, data)
        return {"task_id": task_id, "url": f"/tasks/in/{task_id}?peer={self.agent.wallet}"}

    async def visibility(self, body: dict[str, Any]) -> dict[str, Any]:
        name = _text(body, "name")
        if body.get("hidden"):
            self.agent.hide_skill(name)
        else:
            self.agent.expose_skill(name)
        return {"name": name, "hidden": self.agent.skill_hidden(name)}

    async def connect(self, body: dict[str, Any]) -> dict[str, Any]:
        wallet, _ = peer_wallet(_text(body, "target").strip(), self.agent.network_name)
        return peer_json(await self.agent.connect(wallet, timeout=30))

    async def call(self, body: dict[str, Any]) -> dict[str, Any]:
        wallet, skill, data = _wallet(body), _text(body, "skill"), _object(body.get("input"))
        task_id = await self.owner_tasks.request(wallet, skill, data)
        return {"task_id": task_id, "url": f"/tasks/out/{task_id}"}

    async def mcp_pin(self, body: dict[str, Any]) -> dict[str, Any]:
        wallet = _wallet(body)
        if body.get("pinned"):
            pin(self.agent.store, wallet)
        else:
            unpin(self.agent.store, wallet)
        return {"wallet": wallet, "pinned": wallet.lower() in {w.lower() for w in self.agent.store.pinned_peers()}}

    # the groups' actions are the control port's group commands (run_group_command), as the CLI's are

    async def create_group(self, body: dict[str, Any]) -> dict[str, Any]:
        members = [m for m in str(body.get("members") or "").replace(",", " ").split() if m]
        group = await run_group_command(self.agent, "group_create", {
            "name": _text(body, "name"), "members": members, "description": str(body.get("description") or "")})
        return {**group, "group_id": group["id"]}

    async def discover_group(self, body: dict[str, Any]) -> dict[str, Any]:
        group_id = _text(body, "group_id")
        found = await run_group_command(self.agent, "group_discover", {"group": group_id})
        self.discovered[group_id] = (time.time(), found)
        return {"group_id": group_id, "members": found}

    async def group_add(self, body: dict[str, Any]) -> dict[str, Any]:
        await run_group_command(self.agent, "group_add", {"group": _text(body, "group_id"), "wallet": _wallet(body)})
        return {"added": True}

    async def group_remove(self, body: dict[str, Any]) -> dict[str, Any]:
        await run_group_command(self.agent, "group_remove", {"group": _text(body, "group_id"),
                                                             "wallet": _wallet(body)})
        return {"removed": True}

    async def group_leave(self, body: dict[str, Any]) -> dict[str, Any]:
        await run_group_command(self.agent, "group_leave", {"group": _text(body, "group_id")})
        return {"left": True}

    async def resume(self, body: dict[str, Any]) -> dict[str, Any]:
        collab_id = _text(body, "collaboration_id")

        async def run() -> None:
            try:
                await self.agent.resume_collaboration(collab_id)
            except CoworkerError as exc:  # the record says how it ended; the page shows it
                log.info("collaboration %s resumed from the dashboard ended: %s", collab_id, exc)

        task = asyncio.get_running_loop().create_task(run(), name=f"coworker-dashboard-resume-{collab_id}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return {"resumed": collab_id}

    async def verify(self, body: dict[str, Any]) -> dict[str, Any]:
        record = views.find_task(self.agent, _text(body, "direction"), _text(body, "task_id"),
                                 body.get("peer") or None)
        check = views.receipt_check(self.agent, record)
        if check is None:
            raise InvalidInput("this task has no receipt", path="task_id")
        return check


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{key} is required", path=key)
    return value


def _wallet(body: dict[str, Any]) -> str:
    return checksum(_text(body, "wallet"))


def _tier(value: Any) -> TrustTier | None:
    if value in (None, ""):
        return None
    try:
        return TrustTier.parse(value)
    except ValueError:
        raise InvalidInput(f"not a trust tier: {value!r}", path="tier") from None


def _object(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput("a skill's input is a JSON object", path="input")
    return value
