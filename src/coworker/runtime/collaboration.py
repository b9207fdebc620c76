"""Running a collaboration with a peer, or with several members: plan, propose, run the steps, store the record
after every change.

The plan, its checks and every change to the record are pure (:mod:`coworker.core.plans`); this module does the
I/O around them: discovery, the proposal, tasks on the peer, local skills, and the store.

Durability. The record is stored before the proposal leaves and after every step. A step on the peer gets its
task id *before* the task is submitted, and that id is stored first: whatever moment the agent stops at, a
resumed collaboration waits for the task it sent (the peer answers a repeated task from its own store) and
never sends a second one. A local step interrupted mid-run runs again (``ctx.attempt`` tells the skill).

Several members. Every message goes point to point, over the DM of the initiator and that member: each member is
proposed its part of the plan (all at once, each answer bounded by the timeout), and each step on a member is a
task with it, its input resolved here from the earlier steps' outputs, whoever ran them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from coworker._errors import CallTimeout, ConfigurationError, CoworkerError, PlanRejected, SkillFailed, error_from_wire
from coworker.core.planning import KeywordPlanner, OtherCards
from coworker.core.plans import (
    check_collaboration_id,
    check_goal,
    collaboration_after,
    collaboration_view,
    fail_step,
    finish_step,
    members,
    new_record,
    next_step,
    parse_plan_many,
    proposal_body,
    resolve,
    restart_step,
    retry_failed,
    start_step,
    step_outputs,
)
from coworker.core.protocol import ErrorBody, PlanAnswerBody, new_id, parse_body
from coworker.core.skills import CallContext, Skill
from coworker.core.tasks import TaskState
from coworker.core.trust import TrustTier
from coworker.core.wallets import checksum, same_wallet
from coworker.runtime.dispatch import Runtime
from coworker.runtime.llm_planner import BASE_URL_VARIABLE, LLMPlanner
from coworker.store.records import CollaborationRecord, Store, TaskRecord

log = logging.getLogger("coworker.collaboration")

DISCOVERY_TIMEOUT = 30.0  # seconds the peer has to show its skills (at most the collaboration's timeout)


class Planner(Protocol):
    """Anything that plans: ``plan`` returns plan data (see :func:`coworker.core.plans.parse_plan`), or an
    awaitable of it, from the goal and the skill cards of both agents (with several members, ``peer`` maps each
    member's wallet to its cards, and steps name members by wallet)."""

    def plan(self, goal: str, own: Sequence[Mapping[str, Any]], peer: OtherCards) -> Any: ...


def default_planner() -> Planner:
    """The LLM planner when ``COWORKER_LLM_BASE_URL`` is set, else the keyword planner."""
    if os.environ.get(BASE_URL_VARIABLE):
        return LLMPlanner()
    return KeywordPlanner()


def _check(goal: str, timeout: float) -> None:
    check_goal(goal)
    if not (isinstance(timeout, int | float) and timeout > 0):
        raise ConfigurationError(f"timeout must be a positive number of seconds, got {timeout!r}")


def view(collab: CollaborationRecord) -> dict[str, Any]:
    """A stored collaboration as ``collaborate`` returns it."""
    return collaboration_view(collab.id, collab.goal, collab.peer, collab.state, collab.record, collab.created_at,
                              collab.updated_at)


class CollaborationHost(Protocol):
    """What a collaboration needs of the agent that runs it (:class:`~coworker.agent.agent.AsyncAgent` is one)."""

    @property
    def wallet(self) -> str: ...
    @property
    def store(self) -> Store: ...
    @property
    def running(self) -> bool: ...
    @property
    def skills(self) -> Mapping[str, Skill]: ...
    @property
    def _clock(self) -> Callable[[], float]: ...
    async def _live(self) -> Runtime: ...
    def _task(self, task_id: str) -> TaskRecord | None: ...
    async def connect(self, wallet: str, *, timeout: float = 30) -> Any: ...
    async def request(self, wallet: str, skill: str, input: dict[str, Any] | None = None, *,
                      timeout: float | None = 30, task_id: str | None = None) -> str: ...
    async def wait(self, task_id: str, timeout: float | None = None) -> Any: ...


class Collaborations:
    """The collaborations one agent starts: runs them and resumes them. One run per collaboration at a time."""

    def __init__(self, agent: CollaborationHost) -> None:
        self._agent = agent
        self._active: set[str] = set()

    @contextlib.contextmanager
    def _running(self, collaboration_id: str) -> Iterator[None]:
        if collaboration_id in self._active:
            raise ConfigurationError(f"collaboration {collaboration_id} is already running in this agent")
        self._active.add(collaboration_id)
        try:
            yield
        finally:
            self._active.discard(collaboration_id)

    def _save(self, collab: CollaborationRecord, *, state: str | None = None,
              record: dict[str, Any] | None = None) -> CollaborationRecord:
        collab = dataclasses.replace(collab, state=state or collab.state,
                                     record=record if record is not None else collab.record,
                                     updated_at=self._agent._clock())
        self._agent.store.save_collaboration(collab)
        self._agent.store.flush()
        return collab

    # ---- starting -----------------------------------------------------------------------------------------

    async def start(self, wallet: str, goal: str, *, plan: Any, planner: Planner | None, timeout: float,
                    collaboration_id: str | None) -> dict[str, Any]:
        agent = self._agent
        _check(goal, timeout)
        peer = checksum(wallet)
        if same_wallet(peer, agent.wallet):
            raise ConfigurationError("an agent cannot collaborate with itself")
        collab_id = check_collaboration_id(collaboration_id) if collaboration_id is not None else new_id()
        known = agent.store.collaboration(collab_id)
        if known is not None:
            if not same_wallet(known.peer, peer) or known.goal != goal:
                raise ConfigurationError(f"collaboration {collab_id} exists already, with another peer or goal")
            return await self.resume(collab_id)
        with self._running(collab_id):
            runtime = await agent._live()
            card = await agent.connect(peer, timeout=min(timeout, DISCOVERY_TIMEOUT))
            shown = {c["name"]: c for c in card.skill_cards}
            if not shown:
                raise ConfigurationError(f"{peer} shows us no skills: it does not trust us yet (ask it with "
                                         f"request_trust) or it has none")
            return await self._begin(runtime, collab_id, goal, {peer: shown}, plan, planner, timeout)

    async def collaborate_many(self, wallets: Sequence[str], goal: str, *, plan: Any = None,
                               planner: Planner | None = None, timeout: float = 300) -> dict[str, Any]:
        """Plan steps across this agent and several others (a group's members), propose each member its part,
        then run the steps in order, each member's as tasks with it; returns as ``collaborate`` does, with
        ``members`` (the other agents that run steps, in plan order).

        Every member is discovered first (each bounded by 30 s): the planner sees the skills each shows us, a
        member that shows none (or does not answer) is left out. With one wallet this is ``collaborate``.

        Raises:
            ConfigurationError: no member shows us a skill, or the plan cannot run.
            PlanRejected: a member refused its part (stored as ``rejected``, with who and why); nothing ran.
            CallTimeout: a member did not answer its part; resuming proposes it again.
        """
        agent = self._agent
        _check(goal, timeout)
        if isinstance(wallets, str) or not wallets:
            raise ConfigurationError(f"wallets is a non-empty list of the members' wallets, got {wallets!r}")
        others = list(dict.fromkeys(checksum(w) for w in wallets))
        if any(same_wallet(w, agent.wallet) for w in others):
            raise ConfigurationError("an agent cannot collaborate with itself (list the other members only)")
        if len(others) == 1:
            return await self.start(others[0], goal, plan=plan, planner=planner, timeout=timeout,
                                    collaboration_id=None)
        collab_id = new_id()
        with self._running(collab_id):
            runtime = await agent._live()
            shown = await self._discover(others, min(timeout, DISCOVERY_TIMEOUT))
            if not any(shown.values()):
                raise ConfigurationError(f"none of {', '.join(others)} shows us a skill: they do not trust us yet "
                                         f"(ask them with request_trust) or have none")
            return await self._begin(runtime, collab_id, goal, shown, plan, planner, timeout)

    async def _discover(self, wallets: Sequence[str], timeout: float) -> dict[str, dict[str, Any]]:
        """The skill cards each member shows us, by wallet (none from one that does not answer)."""

        async def cards(wallet: str) -> dict[str, Any]:
            try:
                peer = await self._agent.connect(wallet, timeout=timeout)
            except CoworkerError as exc:
                log.info("collaboration: %s shows no skills (%s: %s)", wallet, type(exc).__name__, exc)
                return {}
            return {c["name"]: c for c in peer.skill_cards}

        async with asyncio.TaskGroup() as group:
            found = {w: group.create_task(cards(w)) for w in wallets}
        return {w: task.result() for w, task in found.items()}

    async def _begin(self, runtime: Runtime, collab_id: str, goal: str, shown: dict[str, dict[str, Any]],
                     plan: Any, planner: Planner | None, timeout: float) -> dict[str, Any]:
        """Plan against the skills shown, store the record, propose and run."""
        agent = self._agent
        own = {s.name: s.card() for s in agent.skills.values()}
        if plan is not None:
            parsed, planned_by = parse_plan_many(plan, own, shown, own_wallet=agent.wallet), "given"
        else:
            chosen = planner if planner is not None else default_planner()
            offered: OtherCards = {w: list(c.values()) for w, c in shown.items() if c}
            if len(shown) == 1:  # a two-party plan: the peer's cards, its steps say "peer"
                offered = [card for cards in shown.values() for card in cards.values()]
            data = chosen.plan(goal, list(own.values()), offered)
            if inspect.isawaitable(data):
                data = await data
            try:
                parsed = parse_plan_many(data, own, shown, own_wallet=agent.wallet)
            except ConfigurationError as exc:
                raise ConfigurationError(f"the plan of {chosen!r} cannot run: {exc}") from None
            planned_by = repr(chosen)
        now = agent._clock()
        record = new_record(parsed, own_wallet=agent.wallet, timeout=float(timeout), planner=planned_by)
        collab = self._save(CollaborationRecord(collab_id, record["members"][0], goal, "proposed", record, now, now))
        log.info("collaboration %s with %s: %d steps planned by %s", collab_id, ", ".join(record["members"]),
                 len(parsed.steps), planned_by)
        collab = await self._propose(runtime, collab)
        return await self._run(collab)

    async def resume(self, collaboration_id: str) -> dict[str, Any]:
        agent = self._agent
        check_collaboration_id(collaboration_id)
        collab = agent.store.collaboration(collaboration_id)
        if collab is None:
            raise ConfigurationError(f"no collaboration {collaboration_id}")
        if collab.state == "completed":
            return view(collab)
        if collab.state == "rejected":
            by = collab.record.get("rejected_by") or collab.peer
            raise PlanRejected(f"{by} rejected the plan: {collab.record['reason']}")
        with self._running(collaboration_id):
            runtime = await agent._live()
            if collab.state == "proposed":  # an answer never came: ask again whoever has not accepted
                collab = await self._propose(runtime, collab)
            elif collab.state == "failed":
                collab = self._save(collab, state=collaboration_after("failed", "retry"),
                                    record=retry_failed(collab.record))
            log.info("resuming collaboration %s with %s at %s", collab.id, ", ".join(members(collab.record,
                     collab.peer)), view(collab)["progress"])
            return await self._run(collab)

    async def _propose(self, runtime: Runtime, collab: CollaborationRecord) -> CollaborationRecord:
        """Propose each member that has not accepted yet its part (all at once); the collaboration once every
        member accepted.

        Raises:
            PlanRejected: a member refused its part (stored as ``rejected``, with who and why).
            CallError: a member refused the request itself (e.g. AccessDenied: it does not trust us; stored as
                ``rejected`` too).
            CallTimeout: a member did not answer; the collaboration stays ``proposed`` and may be resumed.
        """
        accepted = list(collab.record.get("accepted") or [])
        asked = [m for m in members(collab.record, collab.peer) if m not in accepted]
        async with asyncio.TaskGroup() as group:
            answers = [(m, group.create_task(self._answer(runtime, collab, m))) for m in asked]
        accepted += [m for m, task in answers if task.result()[0] == "accept"]
        collab = self._save(collab, record={**collab.record, "accepted": accepted})
        for kind in ("reject", "error", "timeout"):  # a refusal is final, whatever the others answered
            for member, task in answers:
                outcome, reason, error = task.result()
                if outcome != kind:
                    continue
                if kind == "reject":
                    self._save(collab, state=collaboration_after(collab.state, "reject"),
                               record={**collab.record, "reason": reason, "rejected_by": member})
                    log.info("collaboration %s: %s rejected the plan: %s", collab.id, member, reason)
                assert error is not None
                raise error
        return self._save(collab, state=collaboration_after(collab.state, "accept"))

    async def _answer(self, runtime: Runtime, collab: CollaborationRecord,
                      member: str) -> tuple[str, str, CoworkerError | None]:
        """How ``member`` answers the proposal of its part: ``("accept", "", None)``, or ``("reject" | "error" |
        "timeout", reason, the error to raise)``."""
        body = proposal_body(collab.id, collab.goal, collab.record, member)
        timeout = collab.record["timeout"]
        try:
            reply, _, _ = await runtime.request(member, "plan.propose", body, timeout)
            answer = parse_body(reply)
        except CallTimeout:
            return "timeout", "", CallTimeout(f"{member} did not answer the plan of collaboration {collab.id} "
                                              f"within {timeout:g} s (resume_collaboration proposes it again)")
        except CoworkerError as exc:
            return "error", "", exc
        if isinstance(answer, ErrorBody):
            return "reject", f"{answer.code}: {answer.message}", error_from_wire(answer.code, answer.message,
                                                                                  answer.path)
        # a CoWorker 1.0 peer's answer names no collaboration, only our proposal (its correlation id)
        expected = collab.id if reply.dialect is None else reply.corr
        if not isinstance(answer, PlanAnswerBody) or answer.collaboration != expected:
            return "error", "", error_from_wire("PROTOCOL_ERROR", f"{member} answered the plan of collaboration "
                                                                  f"{collab.id} with {reply.type} {reply.body!r}"[:500])
        if reply.type == "plan.reject":
            return "reject", answer.reason, PlanRejected(f"{member} rejected the plan: {answer.reason}")
        return "accept", "", None

    # ---- running ------------------------------------------------------------------------------------------

    async def _run(self, collab: CollaborationRecord) -> dict[str, Any]:
        """Run the steps from the first unfinished one until all completed, one failed, or the agent stopped."""
        while collab.state == "running":
            index = next_step(collab.record)
            if index is None:
                collab = self._save(collab, state=collaboration_after("running", "complete"))
                log.info("collaboration %s with %s completed", collab.id, collab.peer)
                break
            if not self._agent.running:  # do not start a stopped agent again
                log.info("collaboration %s interrupted: the agent stopped", collab.id)
                break
            step = collab.record["steps"][index]
            if step["side"] == "peer":
                collab = await self._remote_step(collab, index)
            else:
                collab = await self._local_step(collab, index)
            if collab.record["steps"][index]["status"] == "running":  # interrupted
                break
        return view(collab)

    def _resolved(self, collab: CollaborationRecord, index: int) -> dict[str, Any] | CollaborationRecord:
        """The step's input with its references resolved, or the collaboration once the step failed on them."""
        step = collab.record["steps"][index]
        try:
            data = resolve(step["template"], step_outputs(collab.record), f"step {step['id']!r}: input")
        except ConfigurationError as exc:
            return self._fail(collab, index, "BAD_REFERENCE", str(exc))
        assert isinstance(data, dict)
        return data

    def _fail(self, collab: CollaborationRecord, index: int, code: str, message: str,
              input: dict[str, Any] | None = None) -> CollaborationRecord:
        step = collab.record["steps"][index]
        log.info("collaboration %s: step %r (%s) failed: %s: %s", collab.id, step["id"], step["skill"], code, message)
        record = fail_step(collab.record, index, code, message, self._agent._clock(), input)
        return self._save(collab, state=collaboration_after(collab.state, "fail"), record=record)

    async def _remote_step(self, collab: CollaborationRecord, index: int) -> CollaborationRecord:
        agent = self._agent
        step = collab.record["steps"][index]
        if step["status"] == "pending":
            data = self._resolved(collab, index)
            if isinstance(data, CollaborationRecord):
                return data
            # The task id is stored before the task exists: a resume waits for this task, never sends another.
            collab = self._save(collab, record=start_step(collab.record, index, data, agent._clock(), new_id()))
            step = collab.record["steps"][index]
        task_id = step["task_id"]
        if agent.store.task("out", task_id) is None:
            try:
                await agent.request(step["agent"], step["skill"], step["input"], timeout=collab.record["timeout"],
                                    task_id=task_id)
            except CoworkerError as exc:
                return self._fail(collab, index, getattr(exc, "code", "CALL_ERROR"), str(exc))
        try:
            output = await agent.wait(task_id)
        except CoworkerError as exc:
            task = agent._task(task_id)
            if task is not None and not TaskState(task.state).terminal:
                return collab  # the agent stopped while the peer works on it: resume waits for the same task
            return self._fail(collab, index, getattr(exc, "code", "CALL_ERROR"), str(exc))
        return self._save(collab, record=finish_step(collab.record, index, output, agent._clock()))

    async def _local_step(self, collab: CollaborationRecord, index: int) -> CollaborationRecord:
        agent = self._agent
        step = collab.record["steps"][index]
        data = self._resolved(collab, index)
        if isinstance(data, CollaborationRecord):
            return data
        now = agent._clock()
        if step["status"] == "running":  # interrupted before it finished: run it again
            record = restart_step(collab.record, index, data, now)
        else:
            record = start_step(collab.record, index, data, now)
        collab = self._save(collab, record=record)
        skill = agent.skills.get(step["skill"])
        if skill is None:
            return self._fail(collab, index, "SKILL_NOT_FOUND", f"this agent has no skill named {step['skill']!r}")
        ctx = CallContext(caller=agent.wallet, trust_tier=TrustTier.PRIVILEGED, call_id=new_id(), skill=skill.name,
                          attempt=collab.record["steps"][index]["attempts"])
        timeout = collab.record["timeout"]
        try:
            kwargs = skill.bind(data, ctx)
            async with asyncio.timeout(timeout):
                output = await skill.run(kwargs)
        except TimeoutError:
            return self._fail(collab, index, "TIMEOUT", f"{skill.name} ran past the timeout of {timeout:g} s")
        except CoworkerError as exc:
            if isinstance(exc, SkillFailed) and exc.__cause__ is not None:
                log.warning("skill %s failed in collaboration %s", skill.name, collab.id, exc_info=exc.__cause__)
            return self._fail(collab, index, getattr(exc, "code", "SKILL_FAILED"), str(exc))
        return self._save(collab, record=finish_step(collab.record, index, output, agent._clock()))

    def latest(self, limit: int) -> list[dict[str, Any]]:
        """The latest collaborations, newest first, as ``collaborate`` returns them."""
        if not isinstance(limit, int) or limit < 1:
            raise ConfigurationError(f"limit is a positive number, got {limit!r}")
        return [view(c) for c in self._agent.store.collaborations(limit)]
