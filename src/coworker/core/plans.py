"""Collaboration plans: their steps, the references between steps, planning and the checks a peer makes. No I/O.

A plan is a list of steps, each a skill run by one of the agents: the initiator and one peer, or the initiator
and several *members* (a group's collaboration). A step's input may use the outputs of earlier steps: a string
``"{{research.output}}"`` is replaced by the whole output of step ``research``, and
``"{{research.output.summary}}"`` by one field of it (a dotted path; list items by index). A reference inside a
longer string is replaced by the value as text (JSON for objects and lists).

Theory of operation. The agent that starts a collaboration (the *initiator*) plans it, checks the plan against
the skills the agents show (:func:`parse_plan`, :func:`parse_plan_many`), keeps it as a *record* (a JSON object,
see :func:`new_record`) and proposes it to the peer, who checks it again (:func:`check_proposal`) and accepts or
rejects it. With several members, each is proposed only its *part* (its steps, and the ids of the other agents'
steps they use: :func:`proposal_body`); one rejection rejects the collaboration, and nothing runs before every
member accepted. The steps then run in order, whoever runs them; after each one the record changes (through the
functions below, which take values and return values) and is stored, so that a collaboration interrupted
anywhere continues from its record. The states of a collaboration and of its steps, and the events that move
them, are the two tables below.

One piece: the plan's format, the check a peer makes of its part and the record the plan becomes are one format
read in three places (a step's fields); together, a change to a step shows in all three.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from coworker._errors import ConfigurationError
from coworker.core.protocol import PlanProposeBody
from coworker.core.skills import Skill
from coworker.core.trust import TrustTier, may_see
from coworker.core.wallets import same_wallet

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


def check_steps(steps: list[tuple[str, dict[str, Any]]], elsewhere: Sequence[str] = ()) -> str | None:
    """Why a list of (step id, input) cannot run in order, or None: ids are unique and every reference names
    an earlier step, or one of the steps ``elsewhere`` (other agents' steps, in a member's part of a plan)."""
    seen: set[str] = set(elsewhere)
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

    Every step must be for one of the two agents; the steps for us must name skills the proposer may call. A
    member's part of a plan with several members holds its own steps only, which may use the outputs of the
    steps named in ``other_steps``.
    """
    problem = check_steps([(s.id, s.input) for s in body.steps], body.other_steps)
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


# ---- states ------------------------------------------------------------------------------------------------

#: (collaboration state, event) -> next state. ``completed`` and ``rejected`` are final; a ``failed``
#: collaboration may be retried from its failed step.
COLLABORATION_TRANSITIONS: Final[dict[tuple[str, str], str]] = {
    ("proposed", "accept"): "running",
    ("proposed", "reject"): "rejected",
    ("running", "complete"): "completed",
    ("running", "fail"): "failed",
    ("failed", "retry"): "running",
}

#: (step status, event) -> next status. A ``running`` step that was interrupted stays ``running``: a step on
#: the peer then waits for the task it already sent, a local step runs again.
STEP_TRANSITIONS: Final[dict[tuple[str, str], str]] = {
    ("pending", "start"): "running",
    ("running", "complete"): "completed",
    ("running", "fail"): "failed",
    ("failed", "retry"): "pending",
}


def collaboration_after(state: str, event: str) -> str:
    """The state of a collaboration in ``state`` after ``event``.

    Raises:
        ConfigurationError: the event does not apply (e.g. resuming a rejected collaboration).
    """
    new = COLLABORATION_TRANSITIONS.get((state, event))
    if new is None:
        raise ConfigurationError(f"a {state} collaboration cannot {event}")
    return new


def _step_after(status: str, event: str) -> str:
    new = STEP_TRANSITIONS.get((status, event))
    if new is None:
        raise ConfigurationError(f"a {status} step cannot {event}")
    return new


# ---- plans -------------------------------------------------------------------------------------------------

MAX_STEPS: Final = 50  # what one plan.propose may carry
MAX_GOAL: Final = 4000
_STEP_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_COLLABORATION_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True, slots=True)
class PlanStep:
    """One step of a plan: ``skill`` run by ``side`` (``"self"``: the initiator, ``"peer"``: another agent,
    the one whose wallet is ``agent``) with ``input``, whose strings may refer to the outputs of earlier steps."""

    id: str
    skill: str
    side: str
    input: dict[str, Any]
    agent: str = ""


@dataclass(frozen=True, slots=True)
class KeyResult:
    """A result the goal needs: done when step ``step`` completed (None: when every step did)."""

    description: str
    step: str | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """Steps to run in order, and the key results that measure progress towards the goal."""

    steps: tuple[PlanStep, ...]
    key_results: tuple[KeyResult, ...]


def check_goal(goal: object) -> str:
    """``goal`` if it can be the goal of a collaboration.

    Raises:
        ConfigurationError: not a non-empty string of at most 4000 characters.
    """
    if not isinstance(goal, str) or not goal.strip():
        raise ConfigurationError(f"a collaboration's goal is a non-empty string, got {goal!r}")
    if len(goal) > MAX_GOAL:
        raise ConfigurationError(f"a collaboration's goal has at most {MAX_GOAL} characters, got {len(goal)}")
    return goal


def check_collaboration_id(value: object) -> str:
    """``value`` if it can name a collaboration (32 lower-case hex digits).

    Raises:
        ConfigurationError: it cannot.
    """
    if not isinstance(value, str) or not _COLLABORATION_ID.match(value):
        raise ConfigurationError(f"a collaboration id is 32 lower-case hex digits, got {value!r}")
    return value


def _names(cards: Cards) -> str:
    return ", ".join(sorted(cards)) or "none"


Cards = Mapping[str, Mapping[str, Any]]  # skill cards by skill name


def _agent_of(agent: object, skill: str, own: Cards, peers: Mapping[str, Cards], own_wallet: str,
              where: str) -> str:
    """The wallet of the agent that runs a step: the one it names, else the first that has the skill."""
    if agent is None:
        if skill in own:
            return own_wallet
        found = next((wallet for wallet, cards in peers.items() if skill in cards), None)
        if found is not None:
            return found
        if len(peers) == 1:
            raise ConfigurationError(f"{where}: neither agent has a skill named {skill!r} (this agent has: "
                                     f"{_names(own)}; the peer shows us: {_names(*peers.values())})")
        shown = "; ".join(f"{wallet} shows us: {_names(cards)}" for wallet, cards in peers.items())
        raise ConfigurationError(f"{where}: no agent has a skill named {skill!r} (this agent has: {_names(own)}; "
                                 f"{shown})")
    if isinstance(agent, str):
        if agent.lower() == "self" or same_wallet(agent, own_wallet):
            return own_wallet
        if agent.lower() == "peer" and len(peers) == 1:
            return next(iter(peers))
        found = next((wallet for wallet in peers if same_wallet(agent, wallet)), None)
        if found is not None:
            return found
    if len(peers) == 1:
        raise ConfigurationError(f"{where}: agent {agent!r} is neither 'self', 'peer', {own_wallet} nor "
                                 f"{next(iter(peers))}")
    raise ConfigurationError(f"{where}: agent {agent!r} is neither 'self' nor a member ({', '.join(peers)}; "
                             f"'peer' names one only when there is one)")


def required_fields(card: Mapping[str, Any]) -> list[str]:
    schema = card.get("input_schema")
    required = schema.get("required") if isinstance(schema, dict) else None
    return [r for r in required if isinstance(r, str)] if isinstance(required, list) else []


def _step(index: int, raw: object, taken: set[str], own: Cards, peers: Mapping[str, Cards],
          own_wallet: str) -> PlanStep:
    where = f"plan step {index + 1}"
    if not isinstance(raw, dict):
        raise ConfigurationError(f"{where}: a step is an object with skill, and optionally id, agent and input; "
                                 f"got {raw!r}")
    unknown = set(raw) - {"id", "skill", "agent", "input"}
    if unknown:
        raise ConfigurationError(f"{where}: unknown field(s) {', '.join(sorted(unknown))} (a step has id, skill, "
                                 f"agent and input)")
    skill = raw.get("skill")
    if not isinstance(skill, str) or not skill:
        raise ConfigurationError(f"{where}: 'skill' names a skill, got {skill!r}")
    step_id = raw.get("id")
    if step_id is None:  # the skill's name, made unique
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", skill)[:60]
        step_id, n = base, 2
        while step_id in taken:
            step_id, n = f"{base}-{n}", n + 1
    if not isinstance(step_id, str) or not _STEP_ID.match(step_id):
        raise ConfigurationError(f"{where}: a step id is 1-64 letters, digits, '_', '.' or '-', got {step_id!r}")
    where = f"plan step {step_id!r}"
    data = raw.get("input", {})
    if not isinstance(data, dict):
        raise ConfigurationError(f"{where}: 'input' is a JSON object, got {type(data).__name__}")
    agent = _agent_of(raw.get("agent"), skill, own, peers, own_wallet, where)
    side = "self" if agent == own_wallet else "peer"
    cards = own if side == "self" else peers[agent]
    card = cards.get(skill)
    if card is None:
        if side == "self":
            raise ConfigurationError(f"{where}: this agent has no skill named {skill!r} (it has: {_names(own)})")
        raise ConfigurationError(f"{where}: the peer {agent} shows us no skill named {skill!r} (it shows "
                                 f"us: {_names(cards)}; skills above the tier it holds for us are hidden)")
    missing = [name for name in required_fields(card) if name not in data]
    if missing:
        raise ConfigurationError(f"{where}: the input lacks the required field(s) {', '.join(missing)} of "
                                 f"skill {skill!r}")
    return PlanStep(step_id, skill, side, dict(data), agent)


def _key_results(raw: object, steps: Sequence[PlanStep], cards: Mapping[str, Cards]) -> tuple[KeyResult, ...]:
    if raw is None:
        return tuple(KeyResult(_describe(s, cards[s.agent].get(s.skill, {})), s.id) for s in steps)
    if not isinstance(raw, list):
        raise ConfigurationError(f"plan: 'key_results' is a list, got {type(raw).__name__}")
    ids = {s.id for s in steps}
    results = []
    for item in raw:
        if isinstance(item, str):
            item = {"description": item}
        description = item.get("description") if isinstance(item, dict) else None
        if not isinstance(description, str) or not description.strip():
            raise ConfigurationError(f"plan: a key result is a description, or an object with description and "
                                     f"step; got {item!r}")
        step = item.get("step")
        if step is not None and step not in ids:
            raise ConfigurationError(f"plan: key result {description!r} names step {step!r}, which is not in the "
                                     f"plan")
        results.append(KeyResult(description.strip()[:500], step))
    return tuple(results)


def _describe(step: PlanStep, card: Mapping[str, Any]) -> str:
    description = str(card.get("description") or "").strip().splitlines()
    return f"{step.skill}: {description[0]}" if description else f"{step.skill} done"


def parse_plan(data: object, own: Cards, peer: Cards, *, own_wallet: str, peer_wallet: str) -> Plan:
    """Check a plan (given by a caller or a planner) against the skills of both agents and return it.

    Args:
        data: a list of steps, or ``{"steps": [...], "key_results": [...]}``. A step is
            ``{"id", "skill", "agent", "input"}``: ``id`` defaults to the skill's name; ``agent`` is
            ``"self"``, ``"peer"`` or one of the two wallets, by default whichever has the skill (this agent
            first). A key result is a description, or ``{"description", "step"}`` (done when that step is).
        own: this agent's skill cards by name; peer: the cards the peer shows us, by name.

    Raises:
        ConfigurationError: why the plan cannot run - an unknown skill for its side, a required input field
            missing, a reference to a step that does not run before, no step for the peer, ...
    """
    return parse_plan_many(data, own, {peer_wallet: peer}, own_wallet=own_wallet)


def parse_plan_many(data: object, own: Cards, peers: Mapping[str, Cards], *, own_wallet: str) -> Plan:
    """Check a plan across this agent and several others (``peers``: the cards each shows us, by wallet) and
    return it, as :func:`parse_plan` does. A step's ``agent`` is ``"self"`` or a member's wallet (any case;
    ``"peer"`` when there is one member); without one, the first agent that has the skill runs it.

    Raises:
        ConfigurationError: why the plan cannot run.
    """
    if isinstance(data, dict):
        unknown = set(data) - {"steps", "key_results"}
        if unknown:
            raise ConfigurationError(f"plan: unknown field(s) {', '.join(sorted(unknown))} (a plan has steps and "
                                     f"key_results)")
        raw_steps, raw_results = data.get("steps"), data.get("key_results")
    else:
        raw_steps, raw_results = data, None
    if not isinstance(raw_steps, list) or not raw_steps:
        raise ConfigurationError(f"plan: the steps are a non-empty list, got {raw_steps!r}")
    if len(raw_steps) > MAX_STEPS:
        raise ConfigurationError(f"plan: at most {MAX_STEPS} steps, got {len(raw_steps)}")
    steps: list[PlanStep] = []
    for index, raw in enumerate(raw_steps):
        steps.append(_step(index, raw, {s.id for s in steps}, own, peers, own_wallet))
    problem = check_steps([(s.id, s.input) for s in steps])
    if problem is not None:
        raise ConfigurationError(f"plan: {problem}")
    if not any(s.side == "peer" for s in steps):
        whom = "the peer" if len(peers) == 1 else "another member"
        raise ConfigurationError(f"plan: no step is for {whom} (run this agent's own skills directly instead)")
    return Plan(tuple(steps), _key_results(raw_results, steps, {own_wallet: own, **peers}))


# ---- references --------------------------------------------------------------------------------------------

def _lookup(step_id: str, path: str, outputs: Mapping[str, Any], where: str) -> Any:
    if step_id not in outputs:
        raise ConfigurationError(f"{where}: step {step_id!r} has no output (it has not completed)")
    value = outputs[step_id]
    walked = f"{step_id}.output"
    for part in path.split(".")[1:]:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            kind = type(value).__name__ if value is not None else "null"
            raise ConfigurationError(f"{where}: {walked} ({kind}) has no {part!r}")
        walked += f".{part}"
    return value


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def resolve(value: Any, outputs: Mapping[str, Any], where: str = "input") -> Any:
    """``value`` (a step's input) with its references to earlier steps replaced by their outputs.

    A string that is one reference and nothing else becomes the referenced value itself (any JSON); a reference
    inside a longer string becomes text (JSON for anything but a string).

    Args:
        outputs: the outputs of the steps that completed, by step id.
        where: names the input in error messages.

    Raises:
        ConfigurationError: a reference names a step without an output, or a field its output lacks.
    """
    if isinstance(value, dict):
        return {k: resolve(v, outputs, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, outputs, f"{where}.{i}") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value
    whole = REFERENCE.fullmatch(value)
    if whole is not None:
        return _lookup(whole.group(1), "output" + whole.group(2), outputs, where)
    return REFERENCE.sub(lambda m: _as_text(_lookup(m.group(1), "output" + m.group(2), outputs, where)), value)


# ---- the record of a collaboration -------------------------------------------------------------------------
# A JSON object, stored after every change: {"version", "timeout", "planner", "members" (the other agents' wallets,
# in plan order; absent from records of before: the peer), "accepted" (the members that accepted their part),
# "reason" (why the plan was refused), "rejected_by" (who refused it), "error" (the failed step, its code and
# message), "key_results": [{"description", "step"}], "steps":
# [{"id", "skill", "side", "agent", "template" (the planned input), "input" (resolved, once the step starts),
# "inputs_from", "status", "task_id" (steps on the peer), "output", "error", "started_at", "ended_at",
# "attempts"}]}.

RECORD_VERSION: Final = 1


def new_record(plan: Plan, *, own_wallet: str, timeout: float, planner: str) -> dict[str, Any]:
    """The record of a collaboration that has not run yet."""
    order = [s.id for s in plan.steps]
    members = list(dict.fromkeys(s.agent for s in plan.steps if s.side == "peer"))
    steps = [{"id": s.id, "skill": s.skill, "side": s.side, "agent": own_wallet if s.side == "self" else s.agent,
              "template": s.input, "input": None, "inputs_from": [i for i in order if i in references(s.input)],
              "status": "pending", "task_id": None, "output": None, "error": None, "started_at": None,
              "ended_at": None, "attempts": 0} for s in plan.steps]
    return {"version": RECORD_VERSION, "timeout": timeout, "planner": planner, "members": members, "accepted": [],
            "reason": None, "rejected_by": None, "error": None,
            "key_results": [{"description": k.description, "step": k.step} for k in plan.key_results],
            "steps": steps}


def members(record: Mapping[str, Any], peer: str) -> list[str]:
    """The wallets of the other agents of a collaboration (``peer``, stored with it, for older records)."""
    return list(record.get("members") or [peer])


def proposal_body(collaboration_id: str, goal: str, record: Mapping[str, Any],
                  member: str | None = None) -> dict[str, Any]:
    """The body of the ``plan.propose`` message for a collaboration: with one peer the whole plan; with several
    members, ``member``'s part: its steps, and in ``other_steps`` the ids of the other steps they use."""
    steps = record["steps"]
    if member is not None and len(members(record, member)) > 1:
        steps = [s for s in steps if s["agent"] == member]
    body: dict[str, Any] = {"collaboration": collaboration_id, "goal": goal,
                            "steps": [{"id": s["id"], "skill": s["skill"], "agent": s["agent"], "input": s["template"]}
                                      for s in steps]}
    own = {s["id"] for s in steps}
    used = [i for s in steps for i in s["inputs_from"] if i not in own]
    if used:
        body["other_steps"] = list(dict.fromkeys(used))
    return body


def next_step(record: Mapping[str, Any]) -> int | None:
    """The index of the first step that has not completed, or None when all have."""
    return next((i for i, s in enumerate(record["steps"]) if s["status"] != "completed"), None)


def step_outputs(record: Mapping[str, Any]) -> dict[str, Any]:
    """The outputs of the completed steps, by step id (what references resolve against)."""
    return {s["id"]: s["output"] for s in record["steps"] if s["status"] == "completed"}


def _with_step(record: Mapping[str, Any], index: int, **changes: Any) -> dict[str, Any]:
    steps = list(record["steps"])
    steps[index] = {**steps[index], **changes}
    return {**record, "steps": steps}


def start_step(record: Mapping[str, Any], index: int, input: dict[str, Any], now: float,
               task_id: str | None = None) -> dict[str, Any]:
    """The record once step ``index`` starts with its resolved ``input`` (on the peer: as task ``task_id``)."""
    step = record["steps"][index]
    return _with_step(record, index, status=_step_after(step["status"], "start"), input=input, task_id=task_id,
                      started_at=now, ended_at=None, attempts=step["attempts"] + 1)


def restart_step(record: Mapping[str, Any], index: int, input: dict[str, Any], now: float) -> dict[str, Any]:
    """The record when an interrupted local step runs again."""
    step = record["steps"][index]
    return _with_step(record, index, input=input, started_at=now, attempts=step["attempts"] + 1)


def finish_step(record: Mapping[str, Any], index: int, output: Any, now: float) -> dict[str, Any]:
    """The record once step ``index`` completed with ``output``."""
    step = record["steps"][index]
    return _with_step(record, index, status=_step_after(step["status"], "complete"), output=output, ended_at=now)


def fail_step(record: Mapping[str, Any], index: int, code: str, message: str, now: float,
              input: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record once step ``index`` failed (which stops the plan)."""
    step = record["steps"][index]
    status = step["status"] if step["status"] == "running" else _step_after(step["status"], "start")
    error = {"code": code, "message": message}
    changes: dict[str, Any] = {"status": _step_after(status, "fail"), "error": error, "ended_at": now}
    if step["status"] == "pending":
        changes.update(started_at=now, attempts=step["attempts"] + 1, input=input)
    updated = _with_step(record, index, **changes)
    updated["error"] = {"step": step["id"], **error}
    return updated


def retry_failed(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record with its failed step pending again (a new task for a step on the peer)."""
    updated = {**record, "error": None}
    for index, step in enumerate(record["steps"]):
        if step["status"] == "failed":
            updated = _with_step(updated, index, status=_step_after("failed", "retry"), task_id=None, error=None,
                                 output=None, ended_at=None)
    return updated


def collaboration_view(collaboration_id: str, goal: str, peer: str, state: str, record: Mapping[str, Any],
                       created_at: float, updated_at: float) -> dict[str, Any]:
    """A collaboration as ``collaborate`` returns it: JSON-able, every step with its outcome."""
    steps = []
    for s in record["steps"]:
        duration = None
        if s["started_at"] is not None and s["ended_at"] is not None:
            duration = round((s["ended_at"] - s["started_at"]) * 1000, 3)
        steps.append({"id": s["id"], "skill": s["skill"], "agent": s["agent"], "side": s["side"],
                      "status": s["status"], "duration_ms": duration, "template": s["template"], "input": s["input"],
                      "inputs_from": s["inputs_from"], "output": s["output"], "error": s["error"],
                      "task_id": s["task_id"], "attempts": s["attempts"]})
    done = {s["id"] for s in record["steps"] if s["status"] == "completed"}
    every = len(done) == len(record["steps"])
    key_results = [{"description": k["description"], "step": k["step"],
                    "done": (k["step"] in done) if k["step"] is not None else every} for k in record["key_results"]]
    return {"collaboration_id": collaboration_id, "goal": goal, "peer": peer, "members": members(record, peer),
            "state": state, "steps": steps,
            "key_results": key_results, "progress": f"{len(done)}/{len(steps)}", "error": record["error"],
            "reason": record["reason"], "rejected_by": record.get("rejected_by"), "planner": record["planner"],
            "created_at": created_at,
            "updated_at": updated_at}
