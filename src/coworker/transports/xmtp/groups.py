"""The XMTP transport's groups: MLS groups made and used through the sidecar's group commands.

A group is made with admin-only permissions (only its creator adds and removes members), its purpose in the
description and the CoWorker version in its app data. The sidecar reports a group someone else added us to as a
``group`` event (before any message in it), which becomes an :class:`~coworker.transports.base.Invitation`; a
message posted in a group comes as an ordinary ``message`` event that names the group. Ignoring a group sets its
consent to denied, so the sidecar neither streams nor syncs it again; leaving asks the admins to remove us (SDK 5.5
``requestRemoval``) and denies it as well.
"""

from __future__ import annotations

from typing import Any

from coworker._errors import PeerUnreachable, TransportError
from coworker.core.protocol import MAX_ENVELOPE_BYTES


class GroupCommands:
    """The group half of :class:`~coworker.transports.xmtp.transport.XmtpTransport`; ``_group_command`` runs one
    sidecar command (waiting for a restarting sidecar) and raises :class:`_GroupError` with the JavaScript error's
    name when it fails."""

    async def _group_command(self, cmd: str, **args: Any) -> dict[str, Any]:
        raise NotImplementedError

    async def _run(self, cmd: str, **args: Any) -> dict[str, Any]:
        try:
            return await self._group_command(cmd, **args)
        except GroupCommandError as exc:
            if exc.name == "PeerUnreachable":
                raise PeerUnreachable(str(exc)) from None
            if exc.name == "NotMember":
                raise TransportError(str(exc)) from None  # "not a member of the group ..."
            raise TransportError(f"XMTP group command {cmd} failed: {exc}") from None

    async def create_group(self, name: str, description: str, app_data: str, members: list[str]) -> str:
        result = await self._run("createGroup", name=name, description=description, appData=app_data,
                                 members=[m.lower() for m in members])
        return str(result["groupId"])

    async def add_members(self, group: str, wallets: list[str]) -> None:
        await self._run("addMembers", groupId=group, addresses=[w.lower() for w in wallets])

    async def remove_members(self, group: str, wallets: list[str]) -> None:
        await self._run("removeMembers", groupId=group, addresses=[w.lower() for w in wallets])

    async def leave_group(self, group: str) -> None:
        await self._run("leaveGroup", groupId=group)

    async def ignore_group(self, group: str) -> None:
        await self._run("ignoreGroup", groupId=group)

    async def group_members(self, group: str) -> frozenset[str]:
        result = await self._run("groupMembers", groupId=group)
        if not result.get("active", True):
            return frozenset()  # removed (or left): we are in it no more
        return frozenset(str(a).lower() for member in result.get("members", []) for a in member.get("addresses", []))

    async def send_group(self, group: str, data: bytes) -> None:
        if len(data) > MAX_ENVELOPE_BYTES:
            raise TransportError(f"message of {len(data)} bytes is over XMTP's limit of {MAX_ENVELOPE_BYTES} bytes")
        await self._run("sendGroup", groupId=group, text=bytes(data).decode("utf-8", "replace"))


class GroupCommandError(Exception):
    """A group command failed in the sidecar; ``name`` is the JavaScript error's name."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
