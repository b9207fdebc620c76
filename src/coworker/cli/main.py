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
import asyncio
import contextlib
import getpass
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from coworker import _paths
from coworker._errors import ConfigurationError, CoworkerError
from coworker._version import __version__
from coworker.agent.agent import (
    DB_FILE,
    LOCK_FILE,
    NETWORK_NAMES,
    AsyncAgent,
    _AgentLock,
    network_name,
    read_config,
    validate_agent_name,
    write_config,
)
from coworker.agent.control import ControlClient
from coworker.cli.network import CliError, bridge_status
from coworker.cli.network import register as register_network_commands
from coworker.cli.setup import register as register_setup
from coworker.core.tasks import Receipt
from coworker.core.trust import TrustTier
from coworker.core.wallets import checksum
from coworker.devnet._cli import register as register_devnet
from coworker.store.identity import KEY_FILE, KEYSTORE_FILE, Identity

log = logging.getLogger("coworker.cli")

Handler = Callable[[argparse.Namespace], int]


# ---- agents on disk -------------------------------------------------------------------------------------------


def _agents_root() -> Path:
    return _paths.home() / "agents"


def _agent_names() -> list[str]:
    """The agents under ``$COWORKER_HOME/agents``: directories with a valid name that hold a wallet."""
    root = _agents_root()
    if not root.is_dir():
        return []
    names = []
    for child in sorted(root.iterdir()):
        with contextlib.suppress(ConfigurationError):
            if child.is_dir() and validate_agent_name(child.name) and Identity.exists(child):
                names.append(child.name)
    return names


def _choose_agent(args: argparse.Namespace) -> str:
    """The agent a command works on: ``--agent``, else ``COWORKER_AGENT``, else the only one there is."""
    name = getattr(args, "agent", None) or os.environ.get("COWORKER_AGENT")
    names = _agent_names()
    if name:
        validate_agent_name(name)
        if name not in names:
            data_dir = _paths.agent_dir(name)
            if data_dir.is_dir():
                raise CliError(f"{data_dir} holds no wallet: run `coworker init --name {name}`")
            known = f"agents: {', '.join(names)}" if names else "there are none yet"
            raise CliError(f"no agent named {name!r} in {_agents_root()} ({known}); "
                           f"create it with `coworker init --name {name}`")
        return name
    if len(names) == 1:
        return names[0]
    if not names:
        raise CliError(f"no agent in {_agents_root()}: create one with `coworker init --name NAME`")
    raise CliError(f"several agents in {_agents_root()} ({', '.join(names)}): choose one with --agent NAME "
                   f"or COWORKER_AGENT")


@contextlib.contextmanager
def _open_agent(args: argparse.Namespace) -> Iterator[AsyncAgent]:
    """Open an existing agent without starting it, and close its database afterwards.

    The empty passphrase reads an encrypted wallet's address from its keystore without decrypting it: these
    commands never sign anything, so they neither ask for the passphrase nor pay for scrypt.
    """
    agent = AsyncAgent(_choose_agent(args), passphrase="")
    try:
        yield agent
    finally:
        agent.close()


def _key_kind(data_dir: Path) -> tuple[str, Path]:
    if (data_dir / KEYSTORE_FILE).exists():
        return "encrypted keystore", data_dir / KEYSTORE_FILE
    return "plain file", data_dir / KEY_FILE


def _published_skills(agent: AsyncAgent) -> list[dict[str, Any]] | None:
    """The skill cards the agent published on its last run, or None when it has never run."""
    text = agent.store.get_setting("skills")
    if text is None:
        return None
    try:
        cards = json.loads(text)
    except ValueError:
        raise CliError(f"the skills recorded in {agent.data_dir / DB_FILE} are not valid JSON") from None
    return [c for c in cards if isinstance(c, dict)] if isinstance(cards, list) else []


def _tier_text(tier: TrustTier) -> str:
    return f"{tier.name.lower()} ({int(tier)})"


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


# ---- init -----------------------------------------------------------------------------------------------------


def _passphrase_for_init(encrypt: bool) -> str:
    """COWORKER_PASSPHRASE if set, else (with --encrypt) one typed twice at the terminal, else "" (no encryption)."""
    env = os.environ.get("COWORKER_PASSPHRASE")
    if env:
        return env
    if not encrypt:
        return ""
    first = getpass.getpass("Passphrase for the new wallet: ")
    if not first:
        raise CliError("the passphrase is empty")
    if getpass.getpass("Repeat the passphrase: ") != first:
        raise CliError("the passphrases differ; nothing was created")
    return first


def _cmd_init(args: argparse.Namespace) -> int:
    name = validate_agent_name(args.name)
    data_dir = _paths.agent_dir(name)
    if Identity.exists(data_dir):
        agent = AsyncAgent(name, passphrase="")
        try:
            config = read_config(data_dir)
            if args.network is not None and config.get("network") != args.network:
                write_config(data_dir, {**config, "name": name, "network": args.network})
                print(f"agent {name!r} already exists; its network is now {args.network}")
            else:
                print(f"agent {name!r} already exists; its wallet is kept")
            _print_agent(agent)
        finally:
            agent.close()
        return 0
    passphrase = _passphrase_for_init(args.encrypt)
    agent = AsyncAgent(name, passphrase=passphrase)
    try:
        write_config(agent.data_dir, {"name": name, "network": args.network or "local"})
        print(f"created agent {name!r}")
        _print_agent(agent)
    finally:
        agent.close()
    return 0


def _print_agent(agent: AsyncAgent) -> None:
    kind, key_path = _key_kind(agent.data_dir)
    net, source = network_name(None, agent.data_dir)
    print(f"  wallet:    {agent.wallet}")
    print(f"  directory: {agent.data_dir}")
    print(f"  key:       {key_path} ({kind})")
    print(f"  network:   {net} (from {source})")


# ---- status ---------------------------------------------------------------------------------------------------


def _status(agent: AsyncAgent) -> dict[str, Any]:
    net, source = network_name(None, agent.data_dir)
    kind, key_path = _key_kind(agent.data_dir)
    pid = _AgentLock.holder(agent.data_dir / LOCK_FILE)
    counts = agent.store.call_counts()
    made = {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("out:")}
    served = {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("in:")}
    trusted = [(w, t) for w, t in agent.store.trusted_peers() if t > TrustTier.UNTRUSTED]
    return {
        "name": agent.name,
        "wallet": agent.wallet,
        "network": net,
        "network_source": source,
        "last_network": agent.store.get_setting("network"),
        "data_dir": str(agent.data_dir),
        "key": {"kind": "encrypted" if kind == "encrypted keystore" else "plain", "path": str(key_path)},
        "running": pid is not None,
        "pid": pid if pid is not None and pid > 0 else None,
        "trusted_peers": len(trusted),
        "pending_trust_requests": len(agent.trust_requests()),
        "calls": {"made": sum(made.values()), "served": sum(served.values()),
                  "made_by_status": made, "served_by_status": served},
        "skills": _published_skills(agent),
        "xmtp": (bridge_status(agent.name) or {}).get("xmtp") if pid is not None else None,
    }


def _cmd_status(args: argparse.Namespace) -> int:
    with _open_agent(args) as agent:
        status = _status(agent)
    if args.json:
        _print_json(status)
        return 0

    def breakdown(by_status: dict[str, int]) -> str:
        return f" ({', '.join(f'{n} {s}' for s, n in sorted(by_status.items()))})" if by_status else ""

    pid = f" (pid {status['pid']})" if status["pid"] else ""
    running = f"yes{pid}" if status["running"] else "no"
    key_kind = "encrypted keystore" if status["key"]["kind"] == "encrypted" else "plain file"
    last = f", last run on {status['last_network']}" if status["last_network"] else ""
    skills = status["skills"]
    calls = status["calls"]
    print(f"agent:     {status['name']}")
    print(f"wallet:    {status['wallet']}")
    print(f"network:   {status['network']} (from {status['network_source']}{last})")
    print(f"data dir:  {status['data_dir']}")
    print(f"key:       {status['key']['path']} ({key_kind})")
    print(f"running:   {running}")
    xmtp = status["xmtp"]
    if isinstance(xmtp, dict) and "inboxId" in xmtp:
        print(f"XMTP:      inbox {xmtp['inboxId']}, installation {xmtp['installationId']}, sidecar pid {xmtp['pid']}")
    print(f"trust:     {_count(status['trusted_peers'], 'trusted peer')}, "
          f"{_count(status['pending_trust_requests'], 'pending request')}")
    print(f"calls:     {calls['made']} made{breakdown(calls['made_by_status'])}, "
          f"{calls['served']} served{breakdown(calls['served_by_status'])}")
    if skills is None:
        print("skills:    none published yet (the agent has not run)")
    else:
        names = ", ".join(c.get("name", "?") for c in skills) or "none"
        print(f"skills:    {len(skills)} published on the last run: {names}")
    return 0


# ---- trust ----------------------------------------------------------------------------------------------------


def _parse_tier(text: str) -> TrustTier:
    try:
        return TrustTier.parse(text)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None


def _cmd_trust_list(args: argparse.Namespace) -> int:
    now = time.time()
    with _open_agent(args) as agent:
        trusted = [(wallet, tier, record.name if (record := agent.store.peer(wallet)) else "")
                   for wallet, tier in agent.store.trusted_peers()]
        pending = agent.trust_requests()
    if args.json:
        _print_json({
            "trusted": [{"wallet": w, "name": n, "tier": t.name.lower(), "tier_number": int(t)} for w, t, n in trusted],
            "pending": [{"wallet": r.wallet, "requested_tier": r.tier.name.lower(),
                         "requested_tier_number": int(r.tier), "reason": r.reason, "received_at": r.received_at,
                         "age_seconds": round(now - r.received_at, 3)} for r in pending],
        })
        return 0
    print(f"trusted peers ({len(trusted)}):")
    for wallet, tier, name in trusted:
        print(f"  {wallet}  {_tier_text(tier)}{f'  {name}' if name else ''}")
    if not trusted:
        print("  none")
    print(f"pending trust requests ({len(pending)}):")
    for req in pending:
        reason = f"  reason: {req.reason!r}" if req.reason else ""
        print(f"  {req.wallet}  asks for {_tier_text(req.tier)}  {_age(now - req.received_at)} ago{reason}")
    if not pending:
        print("  none")
    return 0


def _note_running(agent: AsyncAgent) -> None:
    pid = _AgentLock.holder(agent.data_dir / LOCK_FILE)
    if pid is not None:
        print(f"the running agent{f' (pid {pid})' if pid > 0 else ''} applies this from the peer's next message")
    else:
        print("the agent is not running: the peer learns the outcome from its next request")


def _cmd_trust_approve(args: argparse.Namespace) -> int:
    tier = _parse_tier(args.tier) if args.tier is not None else None
    running = ControlClient.find(_paths.agent_dir(_choose_agent(args)))
    if running is not None:  # the running agent records it and tells the peer at once
        granted = running.request("approve", 30, wallet=checksum(args.wallet), tier=None if tier is None else int(tier))
        print(f"approved {checksum(args.wallet)} at tier {_tier_text(TrustTier.parse(granted))}; "
              f"the running agent (pid {running.pid}) told the peer")
        return 0
    with _open_agent(args) as agent:
        granted = asyncio.run(agent.approve_trust(args.wallet, tier))
        print(f"approved {checksum(args.wallet)} at tier {_tier_text(granted)}")
        _note_running(agent)
    return 0


def _cmd_trust_deny(args: argparse.Namespace) -> int:
    running = ControlClient.find(_paths.agent_dir(_choose_agent(args)))
    if running is not None:
        running.request("deny", 30, wallet=checksum(args.wallet))
        print(f"denied the trust request from {checksum(args.wallet)}; the running agent (pid {running.pid}) "
              f"told the peer")
        return 0
    with _open_agent(args) as agent:
        asyncio.run(agent.deny_trust(args.wallet))
        print(f"denied the trust request from {checksum(args.wallet)}")
        _note_running(agent)
    return 0


def _cmd_trust_set(args: argparse.Namespace) -> int:
    tier = _parse_tier(args.tier)
    with _open_agent(args) as agent:
        before = agent.trust_tier(args.wallet)
        agent.set_trust(args.wallet, tier)
        print(f"{checksum(args.wallet)}: tier {_tier_text(before)} -> {_tier_text(tier)}")
        _note_running(agent)
    return 0


# ---- skills ---------------------------------------------------------------------------------------------------


def _cmd_skills(args: argparse.Namespace) -> int:
    with _open_agent(args) as agent:
        name = agent.name
        cards = _published_skills(agent)
    if args.json:
        _print_json(cards or [])
        return 0
    if cards is None:
        print(f"agent {name!r} has not run yet: skills are published when it starts")
        return 0
    if not cards:
        print(f"agent {name!r} published no skills on its last run")
        return 0
    rows = [(str(c.get("name", "?")), _tier_text(TrustTier.parse(c.get("min_trust_tier", 1))),
             str(c.get("version", "")), str(c.get("description", "")).splitlines()[0] if c.get("description") else "")
            for c in cards]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(("NAME", "MIN TIER", "VERSION"))]
    print(f"{'NAME':<{widths[0]}}  {'MIN TIER':<{widths[1]}}  {'VERSION':<{widths[2]}}  DESCRIPTION")
    for row in rows:
        print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}")
    return 0


# ---- tasks ----------------------------------------------------------------------------------------------------

def _cmd_tasks(args: argparse.Namespace) -> int:
    with _open_agent(args) as agent:
        tasks = agent.list_tasks(args.state, args.limit, direction=args.direction)
    if args.json:
        _print_json(tasks)
        return 0
    if not tasks:
        print("no tasks" + (f" in state {args.state}" if args.state else ""))
        return 0
    print(f"{'TASK':<32}  {'DIR':<3}  {'STATE':<14}  {'SKILL':<20}  {'MS':>9}  PEER")
    for t in tasks:
        print(f"{t['task_id']:<32}  {t['direction']:<3}  {t['state']:<14}  {t['skill'][:20]:<20}  "
              f"{t['duration_ms']:>9.1f}  {t['peer']}")
    return 0


def _cmd_task(args: argparse.Namespace) -> int:
    with _open_agent(args) as agent:
        task = agent.get_result(args.task_id)
        provider = task["peer"] if task["direction"] == "out" else agent.wallet
    receipt = task["receipt"]
    task["receipt_verifies"] = None
    if receipt is not None:
        try:
            task["receipt_verifies"] = Receipt.from_dict(receipt).verify(provider)
        except ValueError:
            task["receipt_verifies"] = False
    if args.json:
        _print_json(task)
        return 0
    print(f"task      {task['task_id']} ({'ours' if task['direction'] == 'out' else 'served'})")
    print(f"peer      {task['peer']}")
    print(f"skill     {task['skill']}")
    print(f"state     {task['state']}" + (f" after {task['attempts']} runs" if task["attempts"] > 1 else ""))
    if task["error"] is not None:
        error = task["error"]
        print(f"error     {error['code']}: {error['message']}" + (f" (at {error['path']})" if error["path"] else ""))
    if task["state"] == "completed":
        print(f"result    {json.dumps(task['result'], ensure_ascii=False)}")
    if receipt is not None:
        verdict = "signature verifies" if task["receipt_verifies"] else "SIGNATURE DOES NOT VERIFY"
        print(f"receipt   {receipt['status']}, {receipt['duration_ms']} ms, {receipt['input_bytes']} B in, "
              f"{receipt['output_bytes']} B out, signed by {receipt['provider']}: {verdict}")
    return 0


# ---- demo -----------------------------------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    from coworker.cli.demo import run_demo

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
    init.set_defaults(func=_cmd_init)

    status = commands.add_parser("status", parents=[common], help="show the agent's state")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_cmd_status)

    trust = commands.add_parser("trust", parents=[common], help="list, approve, deny or set trust")
    trust_commands = trust.add_subparsers(dest="trust_command", metavar="ACTION")
    listing = trust_commands.add_parser("list", parents=[common], help="trusted peers and pending requests")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=_cmd_trust_list)
    approve = trust_commands.add_parser("approve", parents=[common], help="grant a pending trust request")
    approve.add_argument("wallet")
    approve.add_argument("--tier", default=None,
                         help="untrusted, known, internal, privileged or 0-3 (default: the tier asked for)")
    approve.set_defaults(func=_cmd_trust_approve)
    deny = trust_commands.add_parser("deny", parents=[common], help="refuse a pending trust request")
    deny.add_argument("wallet")
    deny.set_defaults(func=_cmd_trust_deny)
    set_ = trust_commands.add_parser("set", parents=[common], help="set the tier of a peer, up or down")
    set_.add_argument("wallet")
    set_.add_argument("tier", help="untrusted, known, internal, privileged or 0-3")
    set_.set_defaults(func=_cmd_trust_set)
    trust.set_defaults(func=_cmd_trust_list, json=False)

    skills = commands.add_parser("skills", parents=[common], help="the skills published on the agent's last run")
    skills.add_argument("--json", action="store_true", help="machine-readable output")
    skills.set_defaults(func=_cmd_skills)

    tasks = commands.add_parser("tasks", parents=[common], help="the latest tasks, made and served")
    tasks.add_argument("--state", help="only tasks in this state (completed, failed, working, ...)")
    tasks.add_argument("--in", dest="direction", action="store_const", const="in", help="only tasks we served")
    tasks.add_argument("--out", dest="direction", action="store_const", const="out", help="only our calls")
    tasks.add_argument("--limit", type=int, default=20)
    tasks.add_argument("--json", action="store_true", help="machine-readable output")
    tasks.set_defaults(func=_cmd_tasks)

    task = commands.add_parser("task", parents=[common], help="one task: its state, result or error, receipt")
    task.add_argument("task_id")
    task.add_argument("--json", action="store_true", help="machine-readable output")
    task.set_defaults(func=_cmd_task)

    demo = commands.add_parser("demo", parents=[common], help="two agents in two processes meet over XMTP "
                                                              "through the local node")
    demo.set_defaults(func=_cmd_demo)

    register_network_commands(commands, common, _choose_agent, trust_commands)
    register_setup(commands, common)
    register_devnet(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``coworker`` command with ``argv`` (default: ``sys.argv[1:]``) and return its exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="coworker: %(levelname)s: %(name)s: %(message)s", stream=sys.stderr)
    func: Handler | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return func(args)
    except (CoworkerError, ValueError, OSError) as exc:
        print(f"coworker: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("coworker: interrupted", file=sys.stderr)
        return 130
