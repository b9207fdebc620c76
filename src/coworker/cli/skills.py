"""``coworker skills``: the agent's skills, each with its tier, version and whether peers may see it; ``skills hide
NAME`` and ``skills expose NAME``.

A running agent answers through its control port (its own skills, and the choice applies at once); a stopped one
is read from its store (the skills it published on its last run and the choices recorded for them), and a choice
made then applies when it next starts.

Example::

    coworker skills --json
    coworker skills hide secret      # every peer now sees it as a skill that does not exist
    coworker skills expose secret
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from coworker import _paths
from coworker.agent.control import ControlClient
from coworker.cli.common import CliError, choose_agent, open_agent, print_json, published_skills, shown, tier_text
from coworker.core.skills import skill_overview
from coworker.core.trust import TrustTier


def _stored_overview(args: argparse.Namespace) -> tuple[str, list[dict[str, Any]] | None]:
    """The agent's name and, from its store, its skills as :meth:`AsyncAgent.skills_overview` gives them (None
    when it has never run)."""
    with open_agent(args) as agent:
        cards = published_skills(agent)
        hidden = agent.store.hidden_skills()
        name = agent.name
    if cards is None:
        return name, None
    return name, sorted((skill_overview(c, str(c.get("name")) in hidden) for c in cards), key=lambda s: s["name"])


def cmd_skills(args: argparse.Namespace) -> int:
    name = choose_agent(args)
    running = ControlClient.find(_paths.agent_dir(name))
    skills: list[dict[str, Any]] | None
    if running is not None:
        skills = running.request("skills", 30)
    else:
        name, skills = _stored_overview(args)
    if args.json:
        print_json(skills or [])
        return 0
    if skills is None:
        print(f"agent {name!r} has not run yet: skills are published when it starts")
        return 0
    if not skills:
        print(f"agent {name!r} has no skills" + ("" if running is not None else " (as of its last run)"))
        return 0
    rows = [(shown(s["name"]), tier_text(TrustTier.parse(s["min_trust_tier"])), shown(s["version"]),
             "hidden" if s["hidden"] else "visible",
             shown(str(s["description"]).splitlines()[0]) if s["description"] else "")
            for s in skills]
    heads = ("NAME", "MIN TIER", "VERSION", "PEERS", "DESCRIPTION")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads[:-1])]
    for row in (heads, *rows):
        print("  ".join(f"{cell:<{width}}" for cell, width in zip(row, widths, strict=False)) + f"  {row[-1]}")
    return 0


def _cmd_visibility(args: argparse.Namespace, hidden: bool) -> int:
    name, skill = choose_agent(args), args.name
    verb, effect = ("hid", "peers see it as a skill that does not exist") if hidden else \
        ("exposed", "peers whose tier reaches it see it again")
    running = ControlClient.find(_paths.agent_dir(name))
    if running is not None:
        running.request("hide_skill" if hidden else "expose_skill", 30, name=skill)
        print(f"{verb} skill {shown(skill)}: {effect}; the running agent (pid {running.pid}) applies it at once")
        return 0
    with open_agent(args) as agent:
        cards = published_skills(agent)
        names = sorted(str(c.get("name")) for c in cards or [])
        if skill not in names:
            known = f"its skills: {', '.join(shown(n) for n in names)}" if names else \
                "it has not run yet" if cards is None else "it published none"
            raise CliError(f"agent {name!r} has no skill named {shown(skill)!r} as of its last run ({known})")
        agent.store.set_skill_visibility(skill, hidden, time.time())
        agent.store.flush()
    print(f"{verb} skill {shown(skill)}: {effect} once the agent starts (it is not running)")
    return 0


def cmd_skills_hide(args: argparse.Namespace) -> int:
    return _cmd_visibility(args, True)


def cmd_skills_expose(args: argparse.Namespace) -> int:
    return _cmd_visibility(args, False)


def register(commands: Any, common: argparse.ArgumentParser) -> Any:
    """Add ``skills`` (list) and its actions ``hide`` and ``expose`` to the ``coworker`` parser; returns the
    actions' subparsers, to which another ``skills`` action is added the same way."""
    skills = commands.add_parser("skills", parents=[common], help="the agent's skills and whether peers see them; "
                                                                  "hide or expose one")
    skills.add_argument("--json", action="store_true", help="machine-readable output")
    actions = skills.add_subparsers(dest="skills_command", metavar="ACTION")
    hide = actions.add_parser("hide", parents=[common], help="hide a skill from every peer (as if it did not exist)")
    hide.add_argument("name", help="the skill's name")
    hide.set_defaults(func=cmd_skills_hide)
    expose = actions.add_parser("expose", parents=[common], help="let peers see a hidden skill again")
    expose.add_argument("name", help="the skill's name")
    expose.set_defaults(func=cmd_skills_expose)
    skills.set_defaults(func=cmd_skills)
    return actions
