"""Collaboration plans: their steps, the references between steps, and the checks a peer makes. No I/O.

A plan is a list of steps, each a skill run by one of the two agents. A step's input may use the outputs of
earlier steps: a string ``"{{research.output}}"`` is replaced by the whole output of step ``research``, and
``"{{research.output.summary}}"`` by one field of it (a dotted path; list items by index). A reference inside a
longer string is replaced by the value as text (JSON for objects and lists).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ._identity import same_wallet
from ._protocol import PlanProposeBody
from ._skills import Skill
from ._trust import TrustTier, may_see

REFERENCE = re.compile(r"\{\{\s*([A-Za-z0-9_.-]+?)\.output((?:\.[A-Za-z0-9_-]+)*)\s*\}\}")


def references(value: Any) -> set[str]:
    """The ids of the steps that ``value`` (a step's input) refers to."""
    found: set[str] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.update(m.group(1) for m in REFERENCE.finditer(item))
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def check_steps(steps: list[tuple[str, dict[str, Any]]]) -> str | None:
    """Why a list of (step id, input) cannot run in order, or None: ids are unique and every reference names
    an earlier step."""
    seen: set[str] = set()
    for step_id, data in steps:
        if step_id in seen:
            return f"two steps are named {step_id!r}"
        unknown = references(data) - seen
        if unknown:
            return f"step {step_id!r} uses the output of {', '.join(sorted(unknown))}, which does not run before it"
        seen.add(step_id)
    return None


def check_proposal(body: PlanProposeBody, wallet: str, proposer: str, tier: TrustTier,
                   skills: Mapping[str, Skill]) -> str | None:
    """Why the agent ``wallet`` refuses a plan that ``proposer`` (held at ``tier``) proposes, or None to accept.

    Every step must be for one of the two agents; the steps for us must name skills the proposer may call.
    """
    problem = check_steps([(s.id, s.input) for s in body.steps])
    if problem is not None:
        return problem
    mine = 0
    for step in body.steps:
        if same_wallet(step.agent, wallet):
            mine += 1
            skill = skills.get(step.skill)
            if skill is None or not may_see(tier, skill.min_trust_tier):
                return f"step {step.id!r}: no skill named {step.skill!r} visible to you"
        elif not same_wallet(step.agent, proposer):
            return f"step {step.id!r} is for {step.agent}, who is not part of this collaboration"
    if mine == 0:
        return "no step of the plan is for this agent"
    return None
