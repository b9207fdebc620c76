"""The agent behind ``coworker mcp``: :class:`McpBackend`, in this process (:class:`AgentBackend`) or in the
process that runs it (:class:`ControlBackend`, through its control port: one process owns an agent).

The bridge (:mod:`coworker.agent.mcp_server`) asks only these questions, so that it works the same both ways; the
tasks themselves are :class:`~coworker.agent.owner_tasks.OwnerTasks`' in the agent's process. Every wait is
bounded: through the control port by :data:`~coworker.agent.control.MAX_WAIT` in the agent and a few seconds more
here.
"""

from __future__ import annotations

from typing import Any, Protocol

from coworker.agent.agent import AsyncAgent
from coworker.agent.control import MAX_WAIT, ControlClient, trust_changes
from coworker.agent.owner_tasks import OwnerTasks
from coworker.agent.peer import peer_json

CONNECT_TIMEOUT = 30.0
SLACK = 30.0  # seconds a control command may take beyond the wait it was given


class McpBackend(Protocol):
    """The agent the bridge serves, in this process or another. Task dicts are ``get_result``'s; a progress
    answer is ``{"reports": [[progress, message], ...], "next": n, "done": bool}``."""

    name: str

    async def skill_cards(self) -> list[dict[str, Any]]: ...
    async def peers(self) -> list[dict[str, Any]]: ...  # wallet, name, card, trust_tier
    async def request(self, wallet: str, skill: str, input: dict[str, Any]) -> str: ...
    async def run_skill(self, skill: str, input: dict[str, Any]) -> str: ...
    async def task(self, task_id: str, wait: float) -> dict[str, Any]: ...
    async def progress(self, task_id: str, since: int, wait: float) -> dict[str, Any]: ...
    async def cancel(self, task_id: str) -> bool: ...
    async def connect(self, wallet: str, timeout: float) -> dict[str, Any]: ...
    async def request_trust(self, wallet: str, tier: Any, reason: str) -> str: ...
    async def pins(self) -> list[str]: ...  # the peers the owner marked for MCP
    async def trust_changes(self, since: int, wait: float) -> int: ...  # control.trust_changes
    async def close(self) -> None: ...


class AgentBackend:
    """An :class:`AsyncAgent` this process runs (started by the caller)."""

    def __init__(self, agent: AsyncAgent) -> None:
        self.agent, self.name = agent, agent.name
        self.tasks = OwnerTasks(agent)

    async def skill_cards(self) -> list[dict[str, Any]]:
        return [skill.card() for _, skill in sorted(self.agent.skills.items())]

    async def peers(self) -> list[dict[str, Any]]:
        return [{"wallet": p.wallet, "name": p.name, "card": p.card,
                 "trust_tier": self.agent.trust_tier(p.wallet).name.lower()} for p in self.agent.peers()]

    async def request(self, wallet: str, skill: str, input: dict[str, Any]) -> str:
        return await self.tasks.request(wallet, skill, input)

    async def run_skill(self, skill: str, input: dict[str, Any]) -> str:
        return self.tasks.run_skill(skill, input)

    async def task(self, task_id: str, wait: float) -> dict[str, Any]:
        return await self.tasks.state(task_id, wait)

    async def progress(self, task_id: str, since: int, wait: float) -> dict[str, Any]:
        return await self.tasks.progress(task_id, since, wait)

    async def cancel(self, task_id: str) -> bool:
        return await self.tasks.cancel(task_id)

    async def connect(self, wallet: str, timeout: float) -> dict[str, Any]:
        return peer_json(await self.agent.connect(wallet, timeout=timeout))

    async def request_trust(self, wallet: str, tier: Any, reason: str) -> str:
        return await self.agent.request_trust(wallet, tier, reason)

    async def pins(self) -> list[str]:
        return self.agent.store.pinned_peers()

    async def trust_changes(self, since: int, wait: float) -> int:
        return await trust_changes(self.agent.store, since, wait)

    async def close(self) -> None:
        await self.tasks.close()


class ControlBackend:
    """An agent another process runs, through its control port (the port's token, limits and bounds apply)."""

    def __init__(self, client: ControlClient, name: str) -> None:
        self.client, self.name = client, name

    async def _ask(self, cmd: str, budget: float = 0.0, **args: Any) -> Any:
        """One command; ``budget``: the seconds it may take in the agent, past the usual few."""
        return await self.client.ask(cmd, args, timeout=budget + SLACK)

    async def skill_cards(self) -> list[dict[str, Any]]:
        return list(await self._ask("skill_cards"))

    async def peers(self) -> list[dict[str, Any]]:
        return list(await self._ask("peers"))

    async def request(self, wallet: str, skill: str, input: dict[str, Any]) -> str:
        return str(await self._ask("request", wallet=wallet, skill=skill, input=input))

    async def run_skill(self, skill: str, input: dict[str, Any]) -> str:
        return str(await self._ask("run_skill", skill=skill, input=input))

    async def task(self, task_id: str, wait: float) -> dict[str, Any]:
        wait = min(wait, MAX_WAIT)
        return dict(await self._ask("task", wait, task_id=task_id, wait=wait))

    async def progress(self, task_id: str, since: int, wait: float) -> dict[str, Any]:
        wait = min(wait, MAX_WAIT)
        return dict(await self._ask("progress", wait, task_id=task_id, since=since, wait=wait))

    async def cancel(self, task_id: str) -> bool:
        return bool(await self._ask("cancel", task_id=task_id))

    async def connect(self, wallet: str, timeout: float) -> dict[str, Any]:
        return dict(await self._ask("connect", timeout, wallet=wallet, timeout=timeout))

    async def request_trust(self, wallet: str, tier: Any, reason: str) -> str:
        return str(await self._ask("request_trust", CONNECT_TIMEOUT, wallet=wallet, tier=tier, reason=reason))

    async def pins(self) -> list[str]:
        return list(await self._ask("mcp_pins"))

    async def trust_changes(self, since: int, wait: float) -> int:
        wait = min(wait, MAX_WAIT)
        return int(await self._ask("trust_changes", wait, since=since, wait=wait))

    async def close(self) -> None:
        pass
