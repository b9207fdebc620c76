"""``coworker group``: make a group of agents and use it (create, list, members, add, remove, discover).

Like the other network commands, each goes through the agent's running process when there is one (its control
port: the ``group_*`` commands of :mod:`coworker.agent.control`), else starts the agent in this process for the
length of the command; ``list`` reads the agent's store when it does not run. A WALLET may be an invite code; a
group is named by its id or enough of its first characters.

Example::

    coworker group create research 0xB0B... cwi1.eyJ3... --description "papers on MLS"
    coworker group discover 3f2a                 # each member's skills, as its trust of us allows
    coworker group remove 3f2a 0xB0B...
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from coworker import _paths
from coworker.agent.agent import AsyncAgent
from coworker.agent.config import network_name
from coworker.agent.control import ControlClient
from coworker.agent.groups import DISCOVER_TIMEOUT, group_json, run_group_command
from coworker.agent.invites import peer_wallet
from coworker.cli.common import open_agent, print_json, shown
from coworker.cli.network import _run_with_agent

Choose = Callable[[argparse.Namespace], str]


def _wallet(name: str, target: str) -> str:
    return peer_wallet(target, network_name(None, _paths.agent_dir(name))[0])[0]


def _run(agent_name: str, cmd: str, wait: float = 60.0, /, **args: Any) -> Any:
    """One group command, in the running agent or in this process."""
    async def local(agent: AsyncAgent) -> Any:
        return await run_group_command(agent, cmd, args)

    return _run_with_agent(agent_name, lambda c: c.request(cmd, wait, **args), local)


def _print_group(group: dict[str, Any]) -> None:
    print(f"group:       {shown(group['id'])}")
    print(f"name:        {shown(group['name'])}")
    if group.get("description"):
        print(f"description: {shown(group['description'])}")
    print(f"state:       {shown(group['state'])}")
    for i, member in enumerate(group.get("members", [])):
        print(f"{'members:' if i == 0 else '':<12} {shown(member)}")


def _cmd_create(args: argparse.Namespace, choose: Choose) -> int:
    name = choose(args)
    members = [_wallet(name, target) for target in args.members]
    group = _run(name, "group_create", name=args.name, members=members, description=args.description)
    if args.json:
        print_json(group)
    else:
        _print_group(group)
    return 0


def _cmd_list(args: argparse.Namespace, choose: Choose) -> int:
    name = choose(args)
    client = ControlClient.find(_paths.agent_dir(name))
    if client is not None:
        groups: list[dict[str, Any]] = client.request("groups")
    else:
        with open_agent(args) as agent:  # not running: the store knows every group
            groups = [group_json(g) for g in agent.groups()]
    if args.json:
        print_json(groups)
        return 0
    if not groups:
        print("no groups: make one with `coworker group create NAME WALLET...`")
        return 0
    print(f"{'GROUP':<32}  {'STATE':<8}  {'NAME':<20}  INVITER")
    for g in groups:
        print(f"{shown(g['id']):<32}  {shown(g['state']):<8}  {shown(g['name'])[:20]:<20}  {shown(g['inviter'])}")
    return 0


def _cmd_members(args: argparse.Namespace, choose: Choose) -> int:
    members = _run(choose(args), "group_members", group=args.group)
    if args.json:
        print_json(members)
    else:
        for member in members:
            print(shown(member))
    return 0


def _change(args: argparse.Namespace, choose: Choose, cmd: str) -> int:
    name = choose(args)
    wallet = _wallet(name, args.wallet)
    group = _run(name, cmd, group=args.group, wallet=wallet)
    if args.json:
        print_json(group)
    else:
        done = "added to" if cmd == "group_add" else "removed from"
        count = len(group["members"])
        print(f"{wallet} {done} the group {shown(group['name'])} ({count} member{'' if count == 1 else 's'} now)")
    return 0


def _cmd_leave(args: argparse.Namespace, choose: Choose) -> int:
    group = _run(choose(args), "group_leave", group=args.group)
    if args.json:
        print_json(group)
    else:
        print(f"left the group {shown(group['name'])}: nothing posted in it is read from now on")
    return 0


def _cmd_discover(args: argparse.Namespace, choose: Choose) -> int:
    peers = _run(choose(args), "group_discover", args.timeout + 10, group=args.group, timeout=args.timeout)
    if args.json:
        print_json(peers)
        return 0
    if not peers:
        print("no other member in the group")
        return 0
    print(f"{'WALLET':<42}  {'NAME':<16}  {'WE TRUST':<10}  SKILLS")
    for wallet, peer in peers.items():
        skills = ", ".join(shown(s) for s in peer["skills"]) or (
            "none visible to us" if peer["name"] else "no answer (it does not trust us, or is away)")
        print(f"{shown(wallet):<42}  {shown(peer['name'])[:16]:<16}  {shown(peer['trust_tier']):<10}  {skills}")
    return 0


def register(commands: Any, common: argparse.ArgumentParser, choose: Choose) -> None:
    """Add ``coworker group`` and its actions to the ``coworker`` parser."""

    def bind(handler: Callable[[argparse.Namespace, Choose], int]) -> Any:
        return lambda args: handler(args, choose)

    group = commands.add_parser("group", parents=[common], help="groups of agents: create, list, members, add, "
                                                                "remove, leave, discover")
    actions = group.add_subparsers(dest="group_command", metavar="ACTION")

    def action(name: str, help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(name, parents=[common], help=help)
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        return parser

    create = action("create", "make a group with these members (we are its only admin; membership grants no trust)")
    create.add_argument("name", help="the group's name")
    create.add_argument("members", nargs="+", metavar="WALLET|INVITE", help="the other members")
    create.add_argument("--description", default="", help="the group's purpose, kept in its metadata")
    create.set_defaults(func=bind(_cmd_create))
    action("list", "the groups we made or were invited to, and our state in each").set_defaults(func=bind(_cmd_list))
    members = action("members", "a group's current members")
    members.add_argument("group", metavar="ID", help="the group's id, or enough of its first characters")
    members.set_defaults(func=bind(_cmd_members))
    for name, help, cmd in (("add", "add a member to a group we administer", "group_add"),
                            ("remove", "remove a member: it receives nothing posted after", "group_remove")):
        change = action(name, help)
        change.add_argument("group", metavar="ID", help="the group's id, or enough of its first characters")
        change.add_argument("wallet", metavar="WALLET|INVITE", help="the member's wallet address or invite code")
        change.set_defaults(func=lambda args, _cmd=cmd: _change(args, choose, _cmd))
    leave = action("leave", "leave a group: nothing posted in it is read from now on")
    leave.add_argument("group", metavar="ID", help="the group's id, or enough of its first characters")
    leave.set_defaults(func=bind(_cmd_leave))
    discover = action("discover", "ask every member at once which skills it lets us see")
    discover.add_argument("group", metavar="ID", help="the group's id, or enough of its first characters")
    discover.add_argument("--timeout", type=float, default=DISCOVER_TIMEOUT,
                          help=f"seconds members have to answer (default {DISCOVER_TIMEOUT:g})")
    discover.set_defaults(func=bind(_cmd_discover))
    group.set_defaults(func=bind(_cmd_list), json=False)
