"""``coworker trust list | approve | deny | set``: whom the agent trusts (``trust request`` is in :mod:`.network`)."""

from __future__ import annotations

import argparse
import asyncio
import time

from coworker import _paths
from coworker._errors import ConfigurationError
from coworker.agent.agent import AsyncAgent
from coworker.agent.config import (
    LOCK_FILE,
    AgentLock,
    parse_tier,
)
from coworker.agent.control import ControlClient
from coworker.cli.common import (
    CliError,
    age,
    choose_agent,
    open_agent,
    print_json,
    shown,
    suggest,
    tier_text,
)
from coworker.core.trust import TrustTier
from coworker.core.wallets import checksum


def cmd_trust_list(args: argparse.Namespace) -> int:
    now = time.time()
    with open_agent(args) as agent:
        trusted = [(wallet, tier, record.name if (record := agent.store.peer(wallet)) else "")
                   for wallet, tier in agent.store.trusted_peers()]
        pending = agent.trust_requests()
    if args.json:
        print_json({
            "trusted": [{"wallet": w, "name": n, "tier": t.name.lower(), "tier_number": int(t)} for w, t, n in trusted],
            "pending": [{"wallet": r.wallet, "requested_tier": r.tier.name.lower(),
                         "requested_tier_number": int(r.tier), "reason": r.reason, "received_at": r.received_at,
                         "age_seconds": round(now - r.received_at, 3)} for r in pending],
        })
        return 0
    print(f"trusted peers ({len(trusted)}):")
    for wallet, tier, name in trusted:
        print(f"  {shown(wallet)}  {tier_text(tier)}{f'  {shown(name)}' if name else ''}")
    if not trusted:
        print("  none")
    print(f"pending trust requests ({len(pending)}):")
    for req in pending:
        reason = f"  reason: '{shown(req.reason)}'" if req.reason else ""
        print(f"  {shown(req.wallet)}  asks for {tier_text(req.tier)}  {age(now - req.received_at)} ago{reason}")
    if not pending:
        print("  none")
        return 0
    wallet = shown(pending[0].wallet) if len(pending) == 1 else "WALLET"
    print(f"approve with {suggest(args, agent.name, f'trust approve {wallet}')} (--tier T to grant another tier), "
          f"or refuse with {suggest(args, agent.name, f'trust deny {wallet}')}")
    return 0


def _note_running(agent: AsyncAgent) -> None:
    pid = AgentLock.holder(agent.data_dir / LOCK_FILE)
    if pid is not None:
        print(f"the running agent{f' (pid {pid})' if pid > 0 else ''} applies this from the peer's next message")
    else:
        print("the agent is not running: the peer learns the outcome from its next request")


def cmd_trust_approve(args: argparse.Namespace) -> int:
    tier = parse_tier(args.tier) if args.tier is not None else None
    name, wallet = choose_agent(args), checksum(args.wallet)
    running = ControlClient.find(_paths.agent_dir(name))
    try:
        if running is not None:  # the running agent records it and tells the peer at once
            granted = running.request("approve", 30, wallet=wallet, tier=None if tier is None else int(tier))
            print(f"approved {wallet} at tier {tier_text(TrustTier.parse(granted))}; "
                  f"the running agent (pid {running.pid}) told the peer")
            return 0
        with open_agent(args) as agent:
            print(f"approved {wallet} at tier {tier_text(asyncio.run(agent.approve_trust(wallet, tier)))}")
            _note_running(agent)
    except ConfigurationError:
        with open_agent(args) as agent:
            asked = any(r.wallet == wallet for r in agent.trust_requests())
        if asked:
            raise
        raise CliError(f"no pending trust request from {wallet}: set its tier without one with "
                       f"{suggest(args, name, f'trust set {wallet} TIER')}") from None
    return 0


def cmd_trust_deny(args: argparse.Namespace) -> int:
    running = ControlClient.find(_paths.agent_dir(choose_agent(args)))
    if running is not None:
        running.request("deny", 30, wallet=checksum(args.wallet))
        print(f"denied the trust request from {checksum(args.wallet)}; the running agent (pid {running.pid}) "
              f"told the peer")
        return 0
    with open_agent(args) as agent:
        asyncio.run(agent.deny_trust(args.wallet))
        print(f"denied the trust request from {checksum(args.wallet)}")
        _note_running(agent)
    return 0


def cmd_trust_set(args: argparse.Namespace) -> int:
    tier = parse_tier(args.tier)
    with open_agent(args) as agent:
        before = agent.trust_tier(args.wallet)
        agent.set_trust(args.wallet, tier)
        print(f"{checksum(args.wallet)}: tier {tier_text(before)} -> {tier_text(tier)}")
        _note_running(agent)
    return 0
