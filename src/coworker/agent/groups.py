"""Groups as the API shows them: :class:`AsyncGroup` (``await agent.create_group(...)``) and :class:`Group`, its
blocking facade (``agent.create_group(...)`` on the blocking :class:`~coworker.agent.blocking.Agent`).

A group is where several agents find each other; it grants no trust and carries no call. :meth:`AsyncGroup.discover`
asks every member at once (one post) and each answers over its DM with the skills it lets us see;
:meth:`AsyncGroup.call` and :meth:`AsyncGroup.request` are ordinary tasks with one member, over the pair's DM, so
no other member sees the input or the output. The rules are in :mod:`coworker.runtime.groups`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from coworker._errors import AccessDenied, ConfigurationError
from coworker.agent.peer import Peer, peer_json
from coworker.agent.portal import Portal
from coworker.core.protocol import CapabilitiesBody, parse_body
from coworker.core.trust import TrustTier
from coworker.core.wallets import checksum
from coworker.runtime.collaboration import Collaborations, Planner
from coworker.runtime.groups import Groups
from coworker.store.records import GroupRecord

DISCOVER_TIMEOUT = 10.0  # seconds members have to answer a group's discover


class GroupHost(Protocol):
    """What a group needs of its agent (:class:`~coworker.agent.agent.AsyncAgent`)."""

    @property
    def wallet(self) -> str: ...

    async def _group_runtime(self) -> Groups: ...

    def trust_tier(self, wallet: str) -> TrustTier: ...

    @property
    def call(self) -> Callable[..., Awaitable[Any]]: ...

    @property
    def request(self) -> Callable[..., Awaitable[str]]: ...

    @property
    def _collaborations(self) -> Collaborations: ...


class AsyncGroup:
    """A group we are in (or were): ``id``, ``name``, ``description``, ``inviter``, ``state``.

    Example::

        group = await agent.create_group("research", [bob, carol], description="papers on MLS")
        peers = await group.discover()           # {wallet: Peer}, each with the skills it lets us see
        await group.call(bob, "summarize", {"text": "..."})
    """

    def __init__(self, host: GroupHost, record: GroupRecord) -> None:
        self._host = host
        self._record = record

    def __repr__(self) -> str:
        return f"<AsyncGroup {self.id} {self.name!r} {self.state}>"

    id = property(lambda self: self._record.id)
    name = property(lambda self: self._record.name)
    description = property(lambda self: self._record.description)
    inviter = property(lambda self: self._record.inviter)

    @property
    def state(self) -> str:
        """``joined``, ``ignored`` (an invitation from a peer held below KNOWN), ``left`` or ``removed``."""
        return str(self._record.state)

    async def _groups(self) -> Groups:
        groups = await self._host._group_runtime()
        self._record = groups.joined(self.id)
        return groups

    async def members(self) -> list[str]:
        """The current members' wallets (checksummed, us included).

        Raises:
            ConfigurationError: we are not in the group (any more).
        """
        groups = await self._groups()
        return sorted(checksum(m) for m in await groups.members(self.id))

    async def add(self, wallet: str) -> None:
        """Add a member (we must be the group's admin: its creator). Adding grants it no trust."""
        groups = await self._groups()
        await groups.transport.add_members(self.id, [checksum(wallet)])

    async def remove(self, wallet: str) -> None:
        """Remove a member: from now on it receives nothing posted in the group, and ``call`` to it is refused."""
        groups = await self._groups()
        await groups.transport.remove_members(self.id, [checksum(wallet)])

    async def leave(self) -> None:
        """Leave the group; nothing posted in it is read from now on."""
        groups = await self._groups()
        await groups.leave(self.id)
        self._record = groups.record(self.id) or self._record

    async def discover(self, *, timeout: float = DISCOVER_TIMEOUT) -> dict[str, Peer]:
        """Ask every member at once which skills it offers us: ``{wallet: Peer}`` for every other member, each
        with the skills that member lets us see (none when it does not trust us, or did not answer in
        ``timeout`` seconds: then its ``name`` is empty and ``rtt_ms`` is 0)."""
        groups = await self._groups()
        answers = await groups.discover(self.id, timeout)
        found: dict[str, Peer] = {}
        for member, reply in answers.items():
            wallet = checksum(member)
            tier = self._host.trust_tier(wallet)
            if reply is None or reply.type != "capabilities":
                found[wallet] = Peer(name="", wallet=wallet, skills=[], skill_cards=[], trust_tier=tier)
                continue
            body: CapabilitiesBody = parse_body(reply)
            cards = [card.model_dump() for card in body.skills]
            found[wallet] = Peer(name=body.name, wallet=wallet, skills=[c["name"] for c in cards], skill_cards=cards,
                                 trust_tier=tier)
        return found

    async def _member(self, wallet: str) -> str:
        peer = checksum(wallet)
        if peer.lower() not in await (await self._groups()).members(self.id):
            raise AccessDenied(f"{peer} is not a member of the group {self.name!r}")
        return peer

    async def call(self, wallet: str, skill: str, input: dict[str, Any] | None = None, **options: Any) -> Any:
        """Run a member's skill: an ordinary task with it over the pair's DM (see ``AsyncAgent.call``, whose
        options it takes). Only the two agents see the input and the output.

        Raises:
            AccessDenied: ``wallet`` is not a current member (nothing was sent); else as ``AsyncAgent.call``.
        """
        return await self._host.call(await self._member(wallet), skill, input, **options)

    async def request(self, wallet: str, skill: str, input: dict[str, Any] | None = None, **options: Any) -> str:
        """Hand a task to a member (see ``AsyncAgent.request``); its id.

        Raises:
            AccessDenied: ``wallet`` is not a current member (nothing was sent).
        """
        return await self._host.request(await self._member(wallet), skill, input, **options)

    # ---- multi-party collaboration ------------------------------------------------------------------------

    async def collaborate(self, goal: str, *, plan: Any = None, planner: Planner | None = None,
                          timeout: float = 300) -> dict[str, Any]:
        """Plan steps across the group's current members and us, propose each member its part, and run the steps
        in order, each member's as a task with it over the pair's DM (``{{step.output}}`` chains across members).

        The planner sees the skills each member lets us see; in a given ``plan`` a step names the member that
        runs it by wallet, or ``"self"``. The record is stored after every step: ``agent.resume_collaboration(id)``
        continues it after a stop or crash. Returns as ``AsyncAgent.collaborate`` does, with ``members``.

        Raises:
            ConfigurationError: no member shows us a skill, or the plan cannot run (nothing was sent).
            PlanRejected: a member refused its part (the record says who and why); nothing ran.

        Example::

            result = await group.collaborate("Research MLS, analyse the findings, write a report")
            result["members"], result["steps"][1]["inputs_from"]
        """
        others = [m for m in await self.members() if m.lower() != self._host.wallet.lower()]
        if not others:
            raise ConfigurationError(f"the group {self.name!r} has no other member to collaborate with")
        return await self._host._collaborations.collaborate_many(others, goal, plan=plan, planner=planner,
                                                                 timeout=timeout)


class Group:
    """The blocking facade of :class:`AsyncGroup`: the same methods, run on the agent's loop."""

    def __init__(self, portal: Portal, group: AsyncGroup) -> None:
        self._portal = portal
        self._group = group

    def __repr__(self) -> str:
        return f"<Group {self.id} {self.name!r} {self.state}>"

    @property
    def aio(self) -> AsyncGroup:
        """The async group behind this facade (for use on the facade's own loop only)."""
        return self._group

    id = property(lambda self: self._group.id)
    name = property(lambda self: self._group.name)
    description = property(lambda self: self._group.description)
    inviter = property(lambda self: self._group.inviter)
    state = property(lambda self: self._group.state)

    def members(self) -> list[str]:
        """See :meth:`AsyncGroup.members`."""
        return self._portal.run(self._group.members())

    def add(self, wallet: str) -> None:
        """See :meth:`AsyncGroup.add`."""
        self._portal.run(self._group.add(wallet))

    def remove(self, wallet: str) -> None:
        """See :meth:`AsyncGroup.remove`."""
        self._portal.run(self._group.remove(wallet))

    def leave(self) -> None:
        """See :meth:`AsyncGroup.leave`."""
        self._portal.run(self._group.leave())

    def discover(self, *, timeout: float = DISCOVER_TIMEOUT) -> dict[str, Peer]:
        """See :meth:`AsyncGroup.discover`."""
        return self._portal.run(self._group.discover(timeout=timeout))

    def call(self, wallet: str, skill: str, input: dict[str, Any] | None = None, **options: Any) -> Any:
        """See :meth:`AsyncGroup.call`."""
        return self._portal.run(self._group.call(wallet, skill, input, **options))

    def request(self, wallet: str, skill: str, input: dict[str, Any] | None = None, **options: Any) -> str:
        """See :meth:`AsyncGroup.request`."""
        return self._portal.run(self._group.request(wallet, skill, input, **options))

    def collaborate(self, goal: str, *, plan: Any = None, planner: Planner | None = None,
                    timeout: float = 300) -> dict[str, Any]:
        """See :meth:`AsyncGroup.collaborate`."""
        return self._portal.run(self._group.collaborate(goal, plan=plan, planner=planner, timeout=timeout))


def check_members(members: list[str], own: str) -> list[str]:
    """The checksummed wallets of a new group's members, without ours and repeats.

    Raises:
        ConfigurationError: no other member, or one that is not a wallet address.
    """
    if isinstance(members, str):
        raise ConfigurationError("members is a list of wallets, not one string")
    found: list[str] = []
    for member in members:
        wallet = checksum(member)
        if wallet.lower() != own.lower() and wallet not in found:
            found.append(wallet)
    if not found:
        raise ConfigurationError("a group needs at least one other member")
    return found


# ---- the group commands of the control port and the CLI -------------------------------------------------------


class GroupAgent(Protocol):
    """What the group commands need of an agent (:class:`~coworker.agent.agent.AsyncAgent` is one)."""

    async def create_group(self, name: str, members: Sequence[str], *, description: str = "") -> AsyncGroup: ...
    def groups(self) -> list[GroupRecord]: ...
    def group(self, group_id: str) -> AsyncGroup: ...


GROUP_COMMANDS = ("group_create", "groups", "group_members", "group_add", "group_remove", "group_discover",
                  "group_leave")


def group_json(group: GroupRecord | AsyncGroup) -> dict[str, Any]:
    """A group as JSON: id, name, description, inviter, state."""
    return {"id": group.id, "name": group.name, "description": group.description, "inviter": group.inviter,
            "state": group.state}


def find_group(agent: GroupAgent, given: str) -> AsyncGroup:
    """The group whose id is ``given`` or starts with it (enough of its first characters to tell it apart).

    Raises:
        ConfigurationError: no such group, or several start so.
    """
    prefix = str(given).strip().lower()
    found = [g.id for g in agent.groups() if g.id.lower() == prefix] or \
            [g.id for g in agent.groups() if prefix and g.id.lower().startswith(prefix)]
    if not found:
        raise ConfigurationError(f"no group {given!r}: `coworker group list` names them")
    if len(found) > 1:
        raise ConfigurationError(f"{given!r} starts the ids of {len(found)} groups: give more of it")
    return agent.group(found[0])


async def run_group_command(agent: GroupAgent, cmd: str, args: dict[str, Any]) -> Any:
    """One of :data:`GROUP_COMMANDS` with its JSON arguments; its JSON result (the control port's commands, and
    the CLI's when no agent runs)."""
    if cmd == "groups":
        return [group_json(g) for g in agent.groups()]
    if cmd == "group_create":
        members = args["members"]
        if not isinstance(members, list):
            raise ConfigurationError("members is a list of wallets")
        group = await agent.create_group(str(args["name"]), [str(m) for m in members],
                                         description=str(args.get("description") or ""))
        return {**group_json(group), "members": await group.members()}
    group = find_group(agent, args["group"])
    if cmd == "group_members":
        return await group.members()
    if cmd in ("group_add", "group_remove"):
        await (group.add if cmd == "group_add" else group.remove)(str(args["wallet"]))
        return {**group_json(group), "members": await group.members()}
    if cmd == "group_discover":
        peers = await group.discover(timeout=float(args.get("timeout", DISCOVER_TIMEOUT)))
        return {wallet: peer_json(peer) for wallet, peer in peers.items()}
    if cmd == "group_leave":
        await group.leave()
        return group_json(group)
    raise ConfigurationError(f"unknown group command {cmd!r}")
