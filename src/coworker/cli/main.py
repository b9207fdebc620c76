"""The ``coworker`` command: create an agent, inspect it, manage whom it trusts, run the demo.

Every command that works on an existing agent reads and writes through :class:`AsyncAgent` and its store
(never raw SQL) and never starts the agent: trust decisions made here land in the agent's database, which a
running agent reads on each message. Expected errors (``CoworkerError``, bad tiers or addresses) print
``coworker: error: <message>`` and exit 1; usage errors exit 2, as argparse does.

Example::

    coworker init --name my-bot
    coworker status --json
    coworker trust approve 0xB0B... --tier known
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from coworker._errors import CoworkerError
from coworker._version import __version__
from coworker.agent.config import NETWORK_NAMES
from coworker.cli.agents import cmd_init, cmd_status, cmd_task, cmd_tasks
from coworker.cli.common import CliError, EscapingFormatter, choose_agent, shown
from coworker.cli.dashboard import register as register_dashboard
from coworker.cli.demo import run_demo
from coworker.cli.group import register as register_group
from coworker.cli.mcp import register as register_mcp
from coworker.cli.network import register as register_network_commands
from coworker.cli.setup import register as register_setup
from coworker.cli.skill_scan import register as register_skill_scan
from coworker.cli.skills import register as register_skills
from coworker.cli.trust import cmd_trust_approve, cmd_trust_deny, cmd_trust_list, cmd_trust_set
from coworker.devnet._cli import register as register_devnet

log = logging.getLogger("coworker.cli")

Handler = Callable[[argparse.Namespace], int]


# ---- demo -----------------------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    if not run_demo():
        raise CliError("the demo did not go as expected (see above)")
    print("first contact and collaboration over XMTP: OK")
    return 0


# ---- the parser -----------------------------------------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    """Options accepted after a subcommand too (``coworker status --agent bob -v``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--agent", metavar="NAME", default=argparse.SUPPRESS,
                        help="the agent to use (default: COWORKER_AGENT, else the only agent)")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log at INFO")
    return common


def build_parser() -> argparse.ArgumentParser:
    """The ``coworker`` argument parser; each command sets ``func(args) -> int``."""
    parser = argparse.ArgumentParser(prog="coworker",
                                     description="Agents that find each other and call each other's skills.")
    parser.add_argument("--version", action="version", version=f"coworker {__version__}")
    parser.add_argument("--agent", metavar="NAME", default=None,
                        help="the agent to use (default: COWORKER_AGENT, else the only agent)")
    parser.add_argument("-v", "--verbose", action="store_true", default=False, help="log at INFO")
    common = _common()
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    init = commands.add_parser("init", parents=[common], help="create an agent: its wallet and config")
    init.add_argument("--name", required=True, help="the agent's name (its directory under $COWORKER_HOME/agents)")
    init.add_argument("--network", choices=NETWORK_NAMES, default=None, help="the network to use (default: local)")
    init.add_argument("--encrypt", action="store_true",
                      help="encrypt the wallet (passphrase from COWORKER_PASSPHRASE, else asked twice)")
    init.set_defaults(func=cmd_init)

    status = commands.add_parser("status", parents=[common], help="show the agent's state")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)

    trust = commands.add_parser("trust", parents=[common], help="list, approve, deny or set trust")
    trust_commands = trust.add_subparsers(dest="trust_command", metavar="ACTION")
    listing = trust_commands.add_parser("list", parents=[common], help="trusted peers and pending requests")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=cmd_trust_list)
    approve = trust_commands.add_parser("approve", parents=[common], help="grant a pending trust request")
    approve.add_argument("wallet")
    approve.add_argument("--tier", default=None,
                         help="untrusted, known, internal, privileged or 0-3 (default: the tier asked for)")
    approve.set_defaults(func=cmd_trust_approve)
    deny = trust_commands.add_parser("deny", parents=[common], help="refuse a pending trust request")
    deny.add_argument("wallet")
    deny.set_defaults(func=cmd_trust_deny)
    set_ = trust_commands.add_parser("set", parents=[common], help="set the tier of a peer, up or down")
    set_.add_argument("wallet")
    set_.add_argument("tier", help="untrusted, known, internal, privileged or 0-3")
    set_.set_defaults(func=cmd_trust_set)
    trust.set_defaults(func=cmd_trust_list, json=False)

    skill_actions = register_skills(commands, common)  # returns its actions (hide, expose): add another one there
    register_skill_scan(skill_actions, common)  # skills scan [DIR]: the skill folders found, loadable or why not

    tasks = commands.add_parser("tasks", parents=[common], help="the latest tasks, made and served")
    tasks.add_argument("--state", help="only tasks in this state (completed, failed, working, ...)")
    tasks.add_argument("--in", dest="direction", action="store_const", const="in", help="only tasks we served")
    tasks.add_argument("--out", dest="direction", action="store_const", const="out", help="only our calls")
    tasks.add_argument("--limit", type=int, default=20)
    tasks.add_argument("--json", action="store_true", help="machine-readable output")
    tasks.set_defaults(func=cmd_tasks)

    task = commands.add_parser("task", parents=[common], help="one task: its state, result or error, receipt")
    task.add_argument("task_id", help="the task's id, or enough of its first digits to tell it from the others")
    task.add_argument("--json", action="store_true", help="machine-readable output")
    task.set_defaults(func=cmd_task)

    demo = commands.add_parser("demo", parents=[common], help="two agents in two processes meet over XMTP "
                                                              "through the local node")
    demo.set_defaults(func=cmd_demo)

    register_network_commands(commands, common, choose_agent, trust_commands)
    register_group(commands, common, choose_agent)
    register_setup(commands, common)
    register_mcp(commands, common, choose_agent)
    register_dashboard(commands, common, choose_agent)
    register_devnet(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``coworker`` command with ``argv`` (default: ``sys.argv[1:]``) and return its exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    terminal = logging.StreamHandler(sys.stderr)
    terminal.setFormatter(EscapingFormatter("coworker: %(levelname)s: %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, handlers=[terminal])
    func: Handler | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return func(args)
    except (CoworkerError, ValueError, OSError) as exc:
        print(f"coworker: error: {shown(exc, lines=True)}", file=sys.stderr)  # may carry a peer's message
        return 1
    except KeyboardInterrupt:
        print("coworker: interrupted", file=sys.stderr)
        return 130
