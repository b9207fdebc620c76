"""The callee's side of a task: store it, run the skill once, store the outcome with a signed receipt, answer.

Theory of operation. A ``call.request`` that passed the trust check comes to :meth:`Callee.serve`. Its task key
is (caller, task id): a key seen before means a repeat (a retry, a duplicate, a poll, a request re-sent after a
restart), answered from the store and never run again; the key is inserted first, so a new task costs no lookup
(and its request message no replay-id row: the key de-duplicates). A new task is validated, stored and committed
*before* the skill runs, and its outcome is stored and committed (with the receipt) *before* the answer leaves
(commits shared with everything else that waits at that turn of the event loop: ``Store.sync``), so a crash at
any point leads to neither a second run nor a lost answer: on the next start :meth:`Callee.resume` runs again the
tasks that were running (``ctx.attempt`` tells the skill) and sends their results on their own. A skill that runs
longer than :data:`ACK_AFTER` gets a ``call.ack``; its progress reports are coalesced by :class:`_Reporter`.
A ``call.cancel`` stops the skill; one that overtakes its request leaves a canceled record, so the request never runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any

from coworker._errors import CoworkerError, SkillFailed, SkillNotFound, TransportError
from coworker.core import protocol as proto
from coworker.core.skills import CallContext, Skill
from coworker.core.tasks import LIVE, Receipt, TaskState, json_size
from coworker.core.trust import TrustTier, may_see
from coworker.runtime.link import Link
from coworker.store.records import TaskRecord

log = logging.getLogger("coworker.runtime")

MAX_CONCURRENT_SKILLS = 256
ACK_AFTER = 0.5  # seconds a skill runs before the callee tells the caller it is working on it
PROGRESS_GAP = 0.1  # seconds between two progress messages of one task; reports in between are coalesced
# What the caller hears when running or finishing a task broke on our side (logged here; no traceback crosses
# the wire).
INTERNAL_FAILURE = "internal error at the provider (logged there)"
REFUSAL_MESSAGE_CHARS = 500  # of a refused call's error message and path, as kept and sent


class _Reporter:
    """The callee's side of a running skill's progress: coalesces reports into at most one ``call.progress``
    message per :data:`PROGRESS_GAP` and numbers them, so that the caller can drop repeats and stale ones."""

    def __init__(self, link: Link, task: TaskRecord) -> None:
        self._link, self._task = link, task
        self._loop = asyncio.get_running_loop()
        self._seq = 0
        self._index = 0  # partials sent so far
        self._progress: float | None = None
        self._message = ""
        self._partials: list[Any] = []
        self._dirty = False
        self._handle: asyncio.TimerHandle | None = None
        self._last = 0.0
        self.closed = False

    def report(self, progress: float | None, message: str) -> None:
        """From the skill (any thread)."""
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._add(progress, message, ())
        else:
            self._loop.call_soon_threadsafe(self._add, progress, message, ())

    def partial(self, value: Any) -> None:
        """From an async generator skill, on the loop."""
        self._add(self._progress, self._message, (value,))

    def _add(self, progress: float | None, message: str, partials: tuple[Any, ...]) -> None:
        if self.closed:
            return
        self._progress, self._message = progress, message
        self._partials.extend(partials)
        self._dirty = True
        if self._handle is None:
            wait = max(0.0, self._last + PROGRESS_GAP - self._loop.time())
            self._handle = self._loop.call_later(wait, self._flush)

    def _flush(self) -> None:
        self._handle = None
        if self.closed or not self._dirty:
            return
        self._seq += 1
        body = {"task": self._task.id, "seq": self._seq, "progress": self._progress, "message": self._message,
                "index": self._index, "partials": self._partials}
        self._index += len(self._partials)
        self._partials, self._dirty, self._last = [], False, self._loop.time()
        self._link.spawn_notify(self._task.peer, "call.progress", body, self._task.id)

    def close(self) -> None:
        """The skill ended: its final answer carries everything, so pending reports are dropped."""
        self.closed = True
        if self._handle is not None:
            self._handle.cancel()


class Callee:
    """Serves the tasks peers send us."""

    def __init__(self, link: Link, skills: Mapping[str, Skill]) -> None:
        self._link = link
        self._skills = skills
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_SKILLS)
        # served tasks whose skill runs, by (caller, task id): the coroutine and the record it holds
        self._running: dict[tuple[str, str], tuple[asyncio.Task[Any], TaskRecord]] = {}

    def resume(self) -> None:
        """Run again the tasks we were serving when the agent last stopped or crashed."""
        for task in self._link.store.live_tasks("in"):
            log.info("running task %s (%s for %s) again after a restart", task.id, task.skill, task.peer)
            self._link.store.update_task(task, attempts=task.attempts + 1, last_activity=self._link.clock())
            self._link.tasks.spawn(self._execute_again(task), f"coworker-resume-{task.id}")

    async def _execute_again(self, task: TaskRecord) -> None:
        """A resumed task: its outcome is stored before its answer leaves, so a caller gone from the network
        loses nothing here (it asks again and is answered from the store); one line says so, not a traceback."""
        try:
            await self.execute(task, None)
        except TransportError as exc:
            log.warning("could not answer task %s of %s after a restart: %s", task.id, task.peer, exc)

    def reject(self, env: proto.Envelope, body: proto.CallRequestBody, peer: str, code: str, message: str,
               size: int, path: str = "") -> str:
        """Keep a refused call as a small record and return its message as kept (cut to
        :data:`REFUSAL_MESSAGE_CHARS`), which is also the one to send: a refusal keeps no input, and the store
        keeps only the latest refusals, so a flood of big calls from strangers costs no disk."""
        now = self._link.clock()
        message, path = message[:REFUSAL_MESSAGE_CHARS], path[:REFUSAL_MESSAGE_CHARS]
        self._link.store.add_refusal(TaskRecord(body.task or env.id, "in", peer, body.skill, TaskState.REJECTED,
                                                {}, now, updated_at=now, last_activity=now, error_code=code,
                                                error_message=message, error_path=path or None, request_bytes=size))
        return message

    async def answer_accepted(self, env: proto.Envelope, body: proto.CallRequestBody, peer: str,
                              tier: TrustTier) -> bool:
        """Answer, as it stands, a repeat (a retry, a poll) of a task ``peer`` started before its skill was hidden,
        and return True; False when the request is no such repeat (it is then refused as a missing skill).

        Only the caller that started the task, with its id and skill name, gets this answer: it tells nothing
        that caller did not know. A task of a skill removed from the code, or that the peer's tier no longer
        reaches, is refused as before."""
        known = self._link.store.task("in", body.task or env.id, peer)
        skill = self._skills.get(body.skill)
        if known is None or known.skill != body.skill or skill is None or not may_see(tier, skill.min_trust_tier):
            return False
        await self._send_answer(env, known)
        return True

    async def serve(self, env: proto.Envelope, body: proto.CallRequestBody, peer: str, tier: TrustTier,
                    size: int) -> None:
        task_id = body.task or env.id
        skill = self._skills[body.skill]
        now = self._link.clock()
        task = TaskRecord(task_id, "in", peer, skill.name, TaskState.WORKING, body.input, now,
                          version=skill.version, updated_at=now, last_activity=now, attempts=1, request_bytes=size,
                          request_id=env.id, v1_correlation=env.dialect.correlation_id if env.dialect else None)
        try:
            prepared = self._prepare(task, tier)
        except CoworkerError as exc:
            known = self._link.store.task("in", task_id, peer)
            if known is not None:  # a repeat of a task stored before (its skill since changed): as stored
                await self._send_answer(env, known)
                return
            code, path = getattr(exc, "code", "INVALID_INPUT"), getattr(exc, "path", "")
            message = self.reject(env, body, peer, code, str(exc), size, path)
            await self._link.refuse(env, code, message, task=task_id, path=path[:REFUSAL_MESSAGE_CHARS])
            return
        # Insert first: the task key (caller, task id) is the idempotency key, so a key stored before means a
        # repeat (a retry, a duplicate, a poll, a request after a restart), answered from the store, never run.
        if not self._link.store.add_task(task):
            known = self._link.store.task("in", task_id, peer)
            if known is not None and known.request_id == env.id:
                log.info("ignored call.request %s from %s: already seen", env.id, peer)  # the same message again
                self._link.journal.drop(env.id, "duplicate")
            elif known is not None:
                await self._send_answer(env, known)
            return
        await self._link.store.sync()  # the key is durable before the skill runs: a crash cannot lead to a second run
        await self.execute(task, env, prepared)

    def _prepare(self, task: TaskRecord, tier: TrustTier) -> tuple[Skill, dict[str, Any], _Reporter]:
        """The skill, its bound arguments and the progress reporter for a served task.

        Raises:
            SkillNotFound: the skill is gone (after a restart).
            InvalidInput: the input breaks the skill's schema.
        """
        skill = self._skills.get(task.skill)
        if skill is None:
            raise SkillNotFound(f"no skill named {task.skill!r} visible to you")
        reporter = _Reporter(self._link, task)
        ctx = CallContext(caller=task.peer, trust_tier=tier, call_id=task.id, skill=skill.name,
                          attempt=task.attempts, _reporter=reporter.report)
        return skill, skill.bind(task.input, ctx), reporter

    async def execute(self, task: TaskRecord, request: proto.Envelope | None,
                      prepared: tuple[Skill, dict[str, Any], _Reporter] | None = None) -> None:
        """Run a stored ``working`` task, store its outcome, then send it (as a reply to ``request``, or on its
        own after a restart)."""
        key = (task.peer.lower(), task.id)
        current = asyncio.current_task()
        assert current is not None
        self._running[key] = (current, task)
        loop = asyncio.get_running_loop()
        ack = None
        if request is not None:
            ack = loop.call_later(ACK_AFTER, lambda: self._link.tasks.spawn(self._ack(request, task), "coworker-ack"))
        wall, started = self._link.clock(), time.perf_counter()
        reporter: _Reporter | None = None
        output: Any = None
        error: CoworkerError | None = None
        try:
            skill, kwargs, reporter = prepared or self._prepare(task, self._link.store.trust_tier(task.peer))
            async with self._slots:
                output = await skill.run(kwargs, on_partial=reporter.partial)
        except asyncio.CancelledError:
            if task.state == TaskState.CANCELED:
                return  # canceled by its caller, who has been told
            raise  # the agent stops: the task stays working and runs again on the next start
        except CoworkerError as exc:
            if isinstance(exc, SkillFailed) and exc.__cause__ is not None:
                log.warning("skill %s failed for %s", task.skill, task.peer, exc_info=exc.__cause__)
            error = exc
        except Exception:  # the task's top boundary (Skill.run turns the skill's own errors into SkillFailed)
            log.exception("task %s (%s for %s) broke while running", task.id, task.skill, task.peer)
            error = SkillFailed(INTERNAL_FAILURE)
        finally:
            self._running.pop(key, None)
            if ack is not None:
                ack.cancel()
            if reporter is not None:
                reporter.close()
        duration = (time.perf_counter() - started) * 1000
        try:
            kind, data = self._finish(task, request, output, error, wall, duration)
        except Exception:  # the task's top boundary: a bug here must not leave it working, re-run on every start
            log.exception("task %s (%s for %s) broke while being finished", task.id, task.skill, task.peer)
            kind, data = self._broken(task, request)
        # The outcome is durable before it leaves: a crash now cannot lead to a second run, and the caller may
        # look as soon as it has the answer.
        await self._link.store.sync()
        await self._link.post(task.peer, data, kind, task=task.id)

    def _finish(self, task: TaskRecord, request: proto.Envelope | None, output: Any, error: CoworkerError | None,
                wall: float, duration: float) -> tuple[str, bytes]:
        """Store a served task's outcome with its signed receipt; the answer's type and bytes (encoded once)."""
        to = request or self._stub_request(task)
        duration_ms = round(duration, 3)
        kind, data = "call.result", b""
        if error is None:
            try:
                output_bytes = json_size(output)
            except (ValueError, TypeError) as exc:
                error = SkillFailed(f"the result cannot be sent as JSON: {exc}")
        if error is None:
            receipt = self._receipt(task, TaskState.COMPLETED, wall, duration_ms, output_bytes)
            body = {"task": task.id, "output": output, "duration_ms": duration_ms, "receipt": receipt}
            encoded = self._link.encoded(to, "call.result", body)
            if isinstance(encoded, str):
                error = SkillFailed(encoded)
            else:
                data = encoded
        if error is None:
            changes: dict[str, Any] = {"state": TaskState.COMPLETED, "output": output}
        else:
            receipt = self._receipt(task, TaskState.FAILED, wall, duration_ms, 0)
            code, path = getattr(error, "code", "SKILL_FAILED"), getattr(error, "path", "")
            body = {**proto.error_body(code, str(error), path, task=task.id), "receipt": receipt}
            kind, data = self._link.encode_reply(to, "call.error", body)
            changes = {"state": TaskState.FAILED, "error_code": code, "error_message": str(error),
                       "error_path": path or None}
        self._link.store.update_task(task, updated_at=self._link.clock(), duration_ms=duration, receipt=receipt,
                                     response_bytes=len(data), **changes)
        return kind, data

    def _broken(self, task: TaskRecord, request: proto.Envelope | None) -> tuple[str, bytes]:
        """Store a served task that broke on our side as failed (no receipt: building it may be what broke); the
        answer's type and bytes. A task already ended (its outcome stored before the break) is answered as stored."""
        if task.state in LIVE:
            self._link.store.update_task(task, state=TaskState.FAILED, updated_at=self._link.clock(),
                                         error_code="SKILL_FAILED", error_message=INTERNAL_FAILURE)
        return self._task_answer(request or self._stub_request(task), task)

    def _receipt(self, task: TaskRecord, state: TaskState, wall: float, duration_ms: float,
                 output_bytes: int) -> dict[str, Any]:
        """The usage receipt of a served task, signed with our wallet."""
        receipt = Receipt(task_id=task.id, caller=task.peer, provider=self._link.wallet, skill=task.skill,
                          version=task.version or "", status=str(state), started_at=round(wall, 3),
                          duration_ms=duration_ms, input_bytes=json_size(task.input), output_bytes=output_bytes)
        return dataclasses.replace(receipt, signature=self._link.identity.sign_text(receipt.canonical())).to_dict()

    def _stub_request(self, task: TaskRecord) -> proto.Envelope:
        """A stand-in for a request we no longer have (a task resumed after a restart): answers go to its task."""
        now = self._link.now_ms()
        dialect = None if task.v1_correlation is None else proto.Dialect(task.v1_correlation, "task_request")
        return proto.Envelope(task.id, "call.request", task.id, task.peer, self._link.wallet, now, now, {}, dialect)

    async def _send_answer(self, to: proto.Envelope, task: TaskRecord) -> None:
        kind, data = self._task_answer(to, task)
        await self._link.post(to.sender, data, kind, task=task.id)

    def _task_answer(self, to: proto.Envelope, task: TaskRecord) -> tuple[str, bytes]:
        """The type and bytes of the answer that tells the caller where a served task stands: its result, its
        error, or its state."""
        if task.state == TaskState.COMPLETED:
            body = {"task": task.id, "output": task.output, "duration_ms": round(task.duration_ms, 3),
                    "receipt": task.receipt}
            return self._link.encode_reply(to, "call.result", body)
        if TaskState(task.state).terminal:
            body = proto.error_body(task.error_code or "CALL_ERROR", task.error_message or "",
                                    task.error_path or "", task=task.id)
            if task.receipt is not None:
                body["receipt"] = task.receipt
            return self._link.encode_reply(to, "call.error", body)
        return self._link.encode_reply(to, "call.ack", {"task": task.id, "state": task.state})

    async def _ack(self, request: proto.Envelope, task: TaskRecord) -> None:
        if task.state in LIVE:
            try:
                await self._link.answer(request, "call.ack", {"task": task.id, "state": task.state})
            except CoworkerError as exc:
                log.info("could not acknowledge task %s: %s", task.id, exc)

    async def cancel(self, env: proto.Envelope, body: proto.CallCancelBody, peer: str) -> None:
        running = self._running.get((peer.lower(), body.task))
        task = running[1] if running is not None else self._link.store.task("in", body.task, peer)
        now = self._link.clock()
        if task is None:
            # The cancellation overtook its request: remember it, so that the request never runs.
            task = TaskRecord(body.task, "in", peer, "", TaskState.CANCELED, {}, now, updated_at=now,
                              last_activity=now, error_code="CANCELED", error_message="canceled by the caller")
            self._link.store.add_task(task)
            await self._link.store.sync()
        elif task.state in LIVE:
            self._link.store.update_task(task, state=TaskState.CANCELED, updated_at=now, error_code="CANCELED",
                                         error_message="canceled by the caller")
            await self._link.store.sync()
            if running is not None:
                running[0].cancel()
            log.info("task %s (%s for %s) canceled by its caller", task.id, task.skill, peer)
        await self._send_answer(env, task)
