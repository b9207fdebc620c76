"""Record the CoWorker 1.0 golden vectors from the published ``agent-coworker`` 0.6.1 itself (issue 13).

Run with the Python of a separate environment that holds 0.6.1, never ours::

    python3 -m venv /work/v1env && /work/v1env/bin/pip install agent-coworker==0.6.1
    /work/v1env/bin/python scripts/record_v1_vectors.py            # writes tests/v1_vectors/*.json

How 0.6.1 is driven, with no network and no Node bridge (an interop test can reuse the same seams):

- **Transport.** 0.6.1's ``AgentFaxClient(data_dir, transport=...)`` takes any subclass of its own ``Transport``
  ABC (``send(to_wallet, content)``, ``receive()``, ``health()``); with one, ``send`` hands the transport the
  exact ``json.dumps`` text it would give its bridge's ``/send``. Each 0.6.1 ``Agent`` here gets
  ``agent._client = AgentFaxClient(data_dir, transport=CaptureTransport(...))`` before first use, so every text it
  sends lands in ``Wire.log`` byte for byte, and what it receives goes through its own ``parse_message`` /
  ``is_expired`` path. ``client.prewarm`` is the one sender that bypasses the transport (a direct POST to the
  bridge port): it is replaced by a no-op on the instance.
- **Poll loop and clock.** 0.6.1 receives in a thread (``Agent._poll_loop``: every 1.5 s, ``client.receive()`` then
  ``_handle_message`` for each message) while its API methods wait by ``time.sleep`` loops on ``_response_box``.
  Here the ``time`` module seen by ``agent_coworker.agent`` is replaced by ``VirtualTime``: each ``sleep`` first
  runs the poll loop's body for every endpoint until no message is pending, then advances a virtual clock. So a
  reply is there at the first poll after the request, silence costs no wall time, and ``waited_s`` in the vectors
  is the time 0.6.1 would have waited (30 s per discover try, 15 s for trust, ...).
- **Peers.** Requests of 0.6.1 are answered either by a second 0.6.1 agent on the same ``Wire`` (its answers are
  then recorded too) or by a scripted 1.0 peer whose answers have the shapes of docs/coworker-v1-wire.md.

Everything is recorded twice, in two fresh worlds: a field that differs between the runs, or whose name says it
varies (timestamp, correlation_id, task_id, duration_ms, ...), is listed in the vector's ``varies`` so that tests can
compare all the rest exactly. The wire texts kept are those of the first run.

One file of ~700 lines on purpose: it runs under 0.6.1's environment, where our package cannot be imported, and
tests/v1_vectors/README.md points here for every detail of the seams.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import io
import json
import sys
import tempfile
import time as real_time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent_coworker import Agent
from agent_coworker import agent as agent_module
from agent_coworker._internal.client import AgentFaxClient
from agent_coworker._internal.transport import Transport

OUT = Path(__file__).resolve().parent.parent / "tests" / "v1_vectors"


def _address(seed: str) -> str:
    return "0x" + hashlib.sha256(seed.encode()).hexdigest()[-40:]


ALPHA = _address("alpha")  # the 0.6.1 agent whose API is called (the asker)
BETA = _address("beta")  # a second 0.6.1 agent that answers
PEER = _address("peer")  # a scripted 1.0 peer, answering as the wire doc says a 1.0 agent does

# Keys whose values differ from run to run by construction; any other difference is found by the second run.
VARYING_KEYS = frozenset(
    {"timestamp", "correlation_id", "task_id", "duration_ms", "traceback", "connected_at", "created_at", "updated_at"}
)


# ── The in-process wire ──────────────────────────────────────────────────────────────────────────────────────────


class Wire:
    """Stands in for XMTP: every text sent (in order) and one inbox per wallet; ``pump`` delivers until quiet."""

    def __init__(self) -> None:
        self.log: list[dict[str, str]] = []
        self.inboxes: dict[str, deque[str]] = {}
        self.endpoints: dict[str, Callable[[], None]] = {}
        self._pumping = False

    def post(self, sender: str, to: str, text: str) -> None:
        self.log.append({"from": sender, "to": to, "text": text})
        self.inboxes.setdefault(to, deque()).append(text)

    def take(self, wallet: str) -> list[str]:
        box = self.inboxes.get(wallet, deque())
        texts = list(box)
        box.clear()
        return texts

    def pump(self) -> None:
        if self._pumping:  # a handler never sleeps in 0.6.1, but stay safe against re-entry
            return
        self._pumping = True
        try:
            while any(self.inboxes.get(wallet) for wallet in self.endpoints):
                for wallet, deliver in list(self.endpoints.items()):
                    if self.inboxes.get(wallet):
                        deliver()
        finally:
            self._pumping = False


class CaptureTransport(Transport):
    """0.6.1's own transport interface, backed by the ``Wire``: the narrowest seam under ``AgentFaxClient.send``."""

    def __init__(self, wire: Wire, wallet: str) -> None:
        self.wire = wire
        self.wallet = wallet

    def send(self, to_wallet: str, content: str) -> dict:
        self.wire.post(self.wallet, to_wallet, content)
        return {"ok": True, "id": uuid.uuid4().hex}

    def receive(self) -> list:
        now = datetime.now(UTC).isoformat()
        texts = self.wire.take(self.wallet)
        return [{"messages": [{"content": t, "id": uuid.uuid4().hex, "sentAt": now} for t in texts]}]

    def health(self) -> dict:
        return {"status": "connected", "transport": "capture"}


class VirtualTime:
    """The ``time`` module as ``agent_coworker.agent`` sees it: ``sleep`` is one turn of the poll loop, then waits."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.slept = 0.0

    def sleep(self, seconds: float) -> None:
        self.wire.pump()
        self.slept += seconds

    def time(self) -> float:
        return 1_800_000_000.0 + self.slept

    def __getattr__(self, name: str) -> Any:
        return getattr(real_time, name)


class World:
    """One wire, the agents on it and a temporary directory for their data; the clock seam while it is open."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.wire = Wire()
        self.clock = VirtualTime(self.wire)
        self.waited = 0.0

    def agent(self, name: str, wallet: str, **options: Any) -> Agent:
        data_dir = self.tmp / name
        data_dir.mkdir()
        # As `coworker init` writes it, with the address already synced (lower case) from the bridge.
        config = {"name": name, "wallet": wallet, "created_at": "2026-12-01T00:00:00+00:00"}
        (data_dir / "config.json").write_text(json.dumps(config, indent=2))
        agent = Agent(name, data_dir=str(data_dir), **options)
        client = AgentFaxClient(str(data_dir), transport=CaptureTransport(self.wire, wallet))
        client.prewarm = lambda target: {"status": "skipped"}  # type: ignore[method-assign]
        agent._client = client

        def poll_once() -> None:  # the body of Agent._poll_loop, minus its sleep
            for msg in agent.client.receive(clear=True):
                if msg.get("_xmtp_is_group"):
                    msg["_group_id"] = msg.get("_xmtp_conversation_id", "")
                agent._handle_message(msg)

        self.wire.endpoints[wallet] = poll_once
        return agent

    def peer(self, answer: Callable[[dict], list[tuple[str, dict]]], wallet: str = PEER) -> None:
        """A scripted 1.0 peer: ``answer(request)`` gives the (type, payload) replies, echoing the correlation id."""

        def deliver() -> None:
            for text in self.wire.take(wallet):
                request = json.loads(text)
                for msg_type, payload in answer(request):
                    reply = v1_text(msg_type, payload, request.get("correlation_id", ""), wallet)
                    self.wire.post(wallet, request["sender_wallet"], reply)

        self.wire.endpoints[wallet] = deliver

    def mark(self) -> int:
        return len(self.wire.log)

    def since(self, mark: int) -> list[dict[str, str]]:
        return self.wire.log[mark:]


@contextlib.contextmanager
def world() -> Iterator[World]:
    with tempfile.TemporaryDirectory(prefix="v1vectors-") as tmp:
        w = World(Path(tmp))
        saved = agent_module.time
        agent_module.time = w.clock  # type: ignore[assignment]
        try:
            yield w
        finally:
            agent_module.time = saved


def v1_text(msg_type: str, payload: dict, correlation_id: str, wallet: str = PEER) -> str:
    """A 1.0 message as the wire doc describes it (same keys, order and json.dumps defaults as 0.6.1 sends)."""
    envelope = {
        "protocol": "coworker",
        "version": "1.0",
        "type": msg_type,
        "payload": payload,
        "timestamp": datetime.now(UTC).isoformat(),
        "ttl": 3600,
        "sender_id": "peer",
        "correlation_id": correlation_id,
        "sender_wallet": wallet,
    }
    return json.dumps(envelope)


# ── The agents' skills ───────────────────────────────────────────────────────────────────────────────────────────


def add_beta_skills(beta: Agent) -> None:
    """Skills of the answering 0.6.1 agent: plain, versioned, above tier 1, hidden, and one that raises."""

    @beta.skill("echo", description="Echo the text back", input_schema={"text": "str"}, output_schema={"text": "str"})
    def echo(text: str) -> dict:
        return {"text": text}

    @beta.skill(
        "summarize",
        description="Summarize a text in a few words",
        input_schema={"text": "str", "max_words": "int"},
        output_schema={"summary": "str"},
        version="1.2.0",
        when_to_use="When a long text must be made short",
        category="compute",
    )
    def summarize(text: str, max_words: int = 3) -> dict:
        return {"summary": " ".join(text.split()[:max_words])}

    @beta.skill("vault", description="Needs trust tier 2", input_schema={"key": "str"}, min_trust_tier=2)
    def vault(key: str) -> dict:
        return {"value": key}

    @beta.skill("internal_tool", description="Registered but not exposed")
    def internal_tool() -> dict:
        return {}

    @beta.skill("explode", description="Always raises", input_schema={"text": "str"})
    def explode(text: str) -> dict:
        raise ValueError("cannot explode")

    beta._exposed_set = {"echo", "summarize", "vault", "explode"}


def add_alpha_skills(alpha: Agent) -> None:
    @alpha.skill("outline", description="Outline a goal", input_schema={"goal": "str"})
    def outline(goal: str) -> dict:
        return {"outline": [goal]}


PEER_SKILLS = [
    {
        "name": "echo",
        "description": "Echo the text back",
        "input_schema": {"text": "str"},
        "output_schema": {"text": "str"},
        "min_trust_tier": 1,
        "max_context_privacy_tier": "L1_PUBLIC",
    },
    {
        "name": "summarize",
        "description": "Summarize a text in a few words",
        "input_schema": {"text": "str", "max_words": "int"},
        "output_schema": {"summary": "str"},
        "min_trust_tier": 1,
        "max_context_privacy_tier": "L1_PUBLIC",
        "version": "1.2.0",
        "when_to_use": "When a long text must be made short",
        "category": "compute",
    },
]
CAPABILITIES = {"name": "peer", "skills": PEER_SKILLS}
GRANT = {"granted": True, "granted_tier": 1, "reason": "auto-accepted"}
DENY = {"granted": False, "requested_tier": 1, "reason": "manual approval required"}
TIER_ERROR = {
    "code": "TRUST_TIER_TOO_LOW",
    "message": "Message type 'task_request' requires trust tier >= 1, but peer has tier 0",
}


# ── Recording ────────────────────────────────────────────────────────────────────────────────────────────────────


class Recorder:
    """The vectors of one run, in the order they were recorded."""

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.answered: list[dict] = []
        self.outcomes: list[dict] = []

    def send(self, name: str, situation: str, api: str, entry: dict[str, str], origin: str = "") -> None:
        vector = {"name": name, "type": json.loads(entry["text"])["type"], "situation": situation, "api": api}
        if origin:
            vector["origin"] = origin
        vector |= {"to": entry["to"], "text": entry["text"]}
        self.sent.append(vector)

    def answer(self, name: str, asker_tier: int, situation: str, exchange: list[dict[str, str]]) -> None:
        """One request (the first text of ``exchange``) and what the 0.6.1 agent answered to it.

        A 0.6.1 asker may in turn answer an answer (its gate refuses ``agent_card_response``): kept apart.
        """
        request, *rest = exchange
        assert request["from"] == ALPHA, (name, exchange)
        vector = {
            "name": name,
            "request_type": json.loads(request["text"])["type"],
            "asker_tier": asker_tier,
            "situation": situation,
            "request": {"text": request["text"]},
            "answers": [{"type": json.loads(a["text"])["type"], "text": a["text"]} for a in rest if a["from"] == BETA],
        }
        if then := [e for e in rest if e["from"] == ALPHA]:
            vector["asker_then_sends"] = [{"type": json.loads(e["text"])["type"], "text": e["text"]} for e in then]
        self.answered.append(vector)

    def outcome(self, name: str, api: str, situation: str, w: World, mark: int, returns: Any) -> None:
        exchange = []
        for entry in w.since(mark):
            direction = "sent" if entry["from"] == ALPHA else "received"
            exchange.append({"direction": direction, "type": json.loads(entry["text"])["type"], "text": entry["text"]})
        self.outcomes.append(
            {
                "name": name,
                "api": api,
                "situation": situation,
                "exchange": exchange,
                "returns": json.loads(json.dumps(returns, default=str)),
                "waited_s": w.waited,
            }
        )


def pair(w: World, *, beta_trusts_alpha: int | None, **beta_options: Any) -> tuple[Agent, Agent]:
    alpha = w.agent("alpha", ALPHA)
    add_alpha_skills(alpha)
    beta = w.agent("beta", BETA, **beta_options)
    add_beta_skills(beta)
    if beta_trusts_alpha is not None:
        beta.trust_manager.set_trust_override(ALPHA, beta_trusts_alpha)
    return alpha, beta


def exchange_of(w: World, action: Callable[[], Any]) -> tuple[list[dict[str, str]], Any]:
    """The texts that ``action`` caused, and what it returned; ``w.waited`` is the time 0.6.1 waited meanwhile."""
    mark, slept = w.mark(), w.clock.slept
    result = action()
    w.wire.pump()  # what the poll loop would take next (an async request does not wait)
    w.waited = w.clock.slept - slept
    return w.since(mark), result


def split(log: list[dict[str, str]]) -> list[list[dict[str, str]]]:
    """Cut a log into runs that each start with a text from alpha, followed by beta's answers to it."""
    groups: list[list[dict[str, str]]] = []
    for entry in log:
        if entry["from"] == ALPHA:
            groups.append([entry])
        else:
            groups[-1].append(entry)
    return groups


def record_with_beta(rec: Recorder) -> None:
    """(a) what 0.6.1 sends from its API, and (b) what another 0.6.1 answers, trusted enough or not."""
    with world() as w:  # connect() three times to a peer that trusts nobody yet
        alpha, _beta = pair(w, beta_trusts_alpha=None)
        connect = "Agent.connect(wallet)"
        mark = w.mark()
        log, returned = exchange_of(w, lambda: alpha.connect(BETA))
        discover, trust, rediscover = split(log)
        rec.send("discover", "connect(): first message to a peer", connect, discover[0])
        rec.send("trust_request", "connect(): after a capabilities reply", connect, trust[0])
        rec.send("discover_after_grant", "connect(): after trust_grant", connect, rediscover[0])
        rec.answer("discover_untrusted", 0, "discover from a peer of tier 0: no skill is visible", discover)
        rec.answer("trust_request_auto_accepted", 0, "auto_accept_trust=True (the default), tier 1 asked", trust)
        rec.answer("discover_known", 1, "discover after the grant: the exposed skills of tier <= 1", rediscover)
        rec.outcome("connect_to_0.6.1", connect, "a 0.6.1 peer that trusts nobody yet", w, mark, returned)

        mark = w.mark()
        log, returned = exchange_of(w, lambda: alpha.connect(BETA))
        (card,) = split(log)
        rec.send("agent_card_query", "connect() once peers.json has skills and a card hash", connect, card[0])
        rec.answer("agent_card_query_known", 1, "agent_card_query is not in their table: it needs tier 3", card)
        rec.outcome("connect_second_time_to_0.6.1", connect, "skills and card hash cached", w, mark, returned)

        mark = w.mark()
        log, returned = exchange_of(w, lambda: alpha.connect(BETA))
        _discover, trust, _rediscover = split(log)
        rec.answer("trust_request_already_trusted", 1, "trust_request from a peer already at tier 1", trust)
        rec.outcome("connect_third_time_to_0.6.1", connect, "card hash now empty: discover and trust_request again",
                    w, mark, returned)

    with world() as w:  # call() and request() at tier 1
        alpha, beta = pair(w, beta_trusts_alpha=1)
        calls = [
            ("known", "a plain call of an exposed skill", "echo", {"text": "hi"}, None),
            ("versioned", "skill_version equal to the skill's", "summarize", {"text": "a b c d e", "max_words": 2},
             "1.2.0"),
            ("version_mismatch", "skill_version differs from the skill's", "summarize", {"text": "a b"}, "2.0.0"),
            ("under_tier", "the skill needs tier 2", "vault", {"key": "k"}, None),
            ("hidden", "the skill is registered but not exposed", "internal_tool", {}, None),
            ("unknown_skill", "no such skill", "nope", {"text": "hi"}, None),
            ("skill_raises", "the skill raises ValueError", "explode", {"text": "hi"}, None),
        ]
        for name, situation, skill, data, version in calls:
            mark = w.mark()
            log, returned = exchange_of(w, lambda s=skill, d=data, v=version: alpha.call(BETA, s, d, version=v))
            rec.answer(f"task_request_{name}", 1, situation, log)
            rec.outcome(f"call_{name}_from_0.6.1", "Agent.call(wallet, skill, input, version=)", situation, w, mark,
                        returned)
            if name == "known":
                rec.send("task_request", "call(): one attempt, waits 30 s", "Agent.call(wallet, skill, input)", log[0])
            elif name == "versioned":
                rec.send("task_request_versioned", "call(..., version=)", "Agent.call(wallet, skill, input, version)",
                         log[0])

        mark = w.mark()
        log, task_id = exchange_of(w, lambda: alpha.request(BETA, "echo", {"text": "later"}))
        rec.send("task_request_async", "request(): async, returns a task id at once",
                 "Agent.request(wallet, skill, input)", log[0])
        rec.answer("task_request_async_known", 1, "an async request: answered like a plain one", log)
        rec.outcome("request_from_0.6.1", "Agent.request + Agent.get_result", "a 0.6.1 peer answers", w, mark,
                    alpha.get_result(task_id))

        log, _ = exchange_of(w, lambda: alpha.client.ping(BETA))
        rec.send("ping", "no caller in 0.6.1 sends ping", "AgentFaxClient.ping(wallet)", log[0],
                 origin="0.6.1's own AgentFaxClient.ping(); neither Agent, its CLI nor its MCP server calls it")
        rec.answer("ping_known", 1, "ping", log)

        def send(msg_type: str, payload: dict, correlation_id: str) -> Callable[[], Any]:
            return lambda: alpha.client.send(BETA, msg_type, payload, correlation_id=correlation_id)

        card_query = {"name": "alpha", "cached_hash": ""}
        log, _ = exchange_of(w, send("skill_card_query", {"skill": "echo"}, "5c0ffee1"))
        rec.send("skill_card_query", "no caller in 0.6.1 sends skill_card_query", "AgentFaxClient.send", log[0],
                 origin="0.6.1's AgentFaxClient.send with the payload its handler reads; nothing in 0.6.1 sends it")
        rec.answer("skill_card_query_known", 1, "an exposed skill of tier <= 1", log)
        log, _ = exchange_of(w, send("skill_card_query", {"skill": "vault"}, "5c0ffee2"))
        rec.answer("skill_card_query_under_tier", 1, "a skill of tier 2: the same answer as for an unknown one", log)
        log, _ = exchange_of(w, send("hello_v2", {"text": "hi"}, "0dd0dd01"))
        rec.answer("unknown_type_known", 1, "an unknown type needs tier 3", log)

        beta.trust_manager.set_trust_override(ALPHA, 3)
        log, _ = exchange_of(w, send("hello_v2", {"text": "hi"}, "0dd0dd02"))
        rec.answer("unknown_type_privileged", 3, "an unknown type at tier 3: printed, never answered", log)
        log, _ = exchange_of(w, send("agent_card_query", card_query, "ca4d0001"))
        rec.answer("agent_card_query_privileged", 3, "agent_card_query at tier 3, the only tier it passes", log)

        beta.trust_manager.set_trust_override(ALPHA, 0)
        untrusted = [
            ("task_request_untrusted", lambda: alpha.call(BETA, "echo", {"text": "hi"})),
            ("task_request_async_untrusted", lambda: alpha.request(BETA, "echo", {"text": "hi"})),
            ("ping_untrusted", lambda: alpha.client.ping(BETA)),
            ("skill_card_query_untrusted", send("skill_card_query", {"skill": "echo"}, "5c0ffee3")),
            ("agent_card_query_untrusted", send("agent_card_query", card_query, "ca4d0002")),
            ("unknown_type_untrusted", send("hello_v2", {"text": "hi"}, "0dd0dd03")),
        ]
        for name, action in untrusted:
            log, _ = exchange_of(w, action)
            rec.answer(name, 0, "the asker has tier 0", log)

    with world() as w:  # collaborate() with a 0.6.1 peer that trusts nobody yet
        alpha, beta = pair(w, beta_trusts_alpha=None)
        beta._exposed_set = {"echo"}
        mark = w.mark()
        log, returned = exchange_of(w, lambda: alpha.collaborate(BETA, "say hi"))
        plan = next(g for g in split(log) if json.loads(g[0]["text"])["type"] == "plan_propose")
        rec.send("plan_propose", "collaborate(): after connect(), waits 20 s", "Agent.collaborate(wallet, goal)",
                 plan[0])
        rec.answer("plan_propose_known", 1, "plan_propose: always accepted", plan)
        rec.outcome("collaborate_with_0.6.1", "Agent.collaborate(wallet, goal)", "a 0.6.1 peer", w, mark, returned)

    with world() as w:  # a peer that grants nothing, then a plan from an untrusted asker
        alpha, beta = pair(w, beta_trusts_alpha=None, auto_accept_trust=False)
        log, _ = exchange_of(w, lambda: alpha.connect(BETA))
        _discover, trust = split(log)
        rec.answer("trust_request_manual", 0, "auto_accept_trust=False: trust_deny", trust)
        plan = {"goal": "g", "steps": [], "initiator": "alpha", "initiator_wallet": ALPHA}
        log, _ = exchange_of(w, lambda: alpha.client.send(BETA, "plan_propose", plan, correlation_id="9a1a0001"))
        rec.answer("plan_propose_untrusted", 0, "plan_propose from tier 0", log)


def record_with_peer(rec: Recorder) -> None:
    """(c) what 0.6.1's API makes of each answer a 1.0 agent gives, in the shapes of the wire doc."""

    def run(name: str, api: str, situation: str, answer: Callable[[dict], list[tuple[str, dict]]],
            action: Callable[[Agent], Any], before: Callable[[Agent], Any] | None = None) -> None:
        with world() as w:
            alpha = w.agent("alpha", ALPHA)
            add_alpha_skills(alpha)
            w.peer(answer)
            if before is not None:
                before(alpha)
                w.wire.pump()
            mark = w.mark()
            _log, returned = exchange_of(w, lambda: action(alpha))
            rec.outcome(name, api, situation, w, mark, returned)

    def by_type(**answers: list[tuple[str, dict]] | Callable[[dict], list[tuple[str, dict]]]):
        def answer(request: dict) -> list[tuple[str, dict]]:
            found = answers.get(request["type"], [])
            return found(request) if callable(found) else found

        return answer

    connect = lambda a: a.connect(PEER)  # noqa: E731
    caps = [("capabilities", CAPABILITIES)]
    run("connect_capabilities_and_grant", "Agent.connect(wallet)", "capabilities with 2 skills, then trust_grant",
        by_type(discover=caps, trust_request=[("trust_grant", GRANT)]), connect)
    run("connect_trust_deny", "Agent.connect(wallet)", "trust_deny: the first discover's skills are kept",
        by_type(discover=caps, trust_request=[("trust_deny", DENY)]), connect)
    run("connect_trust_silence", "Agent.connect(wallet)", "no answer to trust_request: 15 s, first skills kept",
        by_type(discover=caps), connect)
    run("connect_skills_as_strings", "Agent.connect(wallet)", "capabilities whose skills are plain names",
        by_type(discover=[("capabilities", {"name": "peer", "skills": ["echo", "summarize"]})],
                trust_request=[("trust_deny", DENY)]), connect)
    run("connect_discover_answered_by_error", "Agent.connect(wallet)", "any reply type with the id ends the wait",
        by_type(discover=[("error", {"code": "TRUST_TIER_TOO_LOW", "message": "no"})]), connect)
    run("connect_silence", "Agent.connect(wallet)", "no answer at all: 3 discovers, 30 + 25 + 25 s",
        by_type(), connect)

    for name, reply, situation in [
        ("agent_card_query_answered_by_error", [("error", TIER_ERROR)], "an error: 0 skills"),
        ("agent_card_query_answered_by_capabilities", caps, "capabilities: its skills are taken, hash emptied"),
        ("agent_card_query_answered_by_agent_card_response",
         [("agent_card_response", {"agent_id": "peer", "skills": [], "card_hash": "0000000000000000"})],
         "agent_card_response: refused by their own gate, 5 s, then a full discover"),
        ("agent_card_query_unanswered", [], "silence: 5 s, then a full discover"),
    ]:
        run(name, "Agent.connect(wallet), a second time", situation,
            by_type(agent_card_query=reply, discover=caps, trust_request=[("trust_grant", GRANT)]),
            connect, before=connect)  # the first connect() caches the skills and a card hash

    call = lambda a: a.call(PEER, "echo", {"text": "hi"})  # noqa: E731
    result = {"success": True, "result": {"text": "hi"}, "duration_ms": 0.1}
    for name, reply, situation in [
        ("call_task_response", [("task_response", result)], "task_response: its payload is returned as is"),
        ("call_task_error_unknown_skill", [("task_error", {"success": False, "error": "Unknown skill: echo"})],
         "task_error Unknown skill"),
        ("call_task_error_version_mismatch",
         [("task_error", {"success": False, "error": "Version mismatch: requested 2.0.0, available 1.2.0",
                          "error_code": "VERSION_MISMATCH", "available_version": "1.2.0",
                          "requested_version": "2.0.0"})], "task_error VERSION_MISMATCH"),
        ("call_error_trust_tier_too_low", [("error", TIER_ERROR)], "error from the trust gate: returned as is"),
        ("call_answered_by_pong", [("pong", {"message": "pong from peer"})], "any reply type with the id ends it"),
        ("call_silence", [], "no answer: 30 s, one attempt"),
    ]:
        run(name, "Agent.call(wallet, skill, input)", situation, by_type(task_request=reply), call)

    def request(a: Agent) -> dict:
        task_id = a.request(PEER, "echo", {"text": "later"})
        a.client._transport.wire.pump()  # the poll loop takes the answer
        return a.get_result(task_id)

    run("request_task_response", "Agent.request + Agent.get_result", "task_response completes the stored task",
        by_type(task_request=[("task_response", result)]), request)
    run("request_task_error", "Agent.request + Agent.get_result", "task_error fails the stored task",
        by_type(task_request=[("task_error", {"success": False, "error": "Unknown skill: echo"})]), request)
    run("request_error_trust_tier_too_low", "Agent.request + Agent.get_result",
        "error (not task_*): the stored task stays queued", by_type(task_request=[("error", TIER_ERROR)]), request)

    def plan_accept(request: dict) -> list[tuple[str, dict]]:
        return [("plan_accept", {"goal": request["payload"]["goal"], "accepted": True})]

    collab = by_type(discover=caps, trust_request=[("trust_grant", GRANT)], plan_propose=plan_accept,
                     task_request=[("task_response", result)])
    run("collaborate_plan_accept", "Agent.collaborate(wallet, goal)", "plan_accept, then a task_response per step",
        collab, lambda a: a.collaborate(PEER, "say hi"))
    run("collaborate_plan_reject", "Agent.collaborate(wallet, goal)", "plan_reject: the reason is returned",
        by_type(discover=caps, trust_request=[("trust_grant", GRANT)],
                plan_propose=[("plan_reject", {"goal": "say hi", "accepted": False, "reason": "busy"})]),
        lambda a: a.collaborate(PEER, "say hi"))
    run("collaborate_plan_answered_by_error", "Agent.collaborate(wallet, goal)",
        "error to plan_propose: taken from the box and ignored, 20 s, then a timeout",
        by_type(discover=caps, trust_request=[("trust_grant", GRANT)], plan_propose=[("error", TIER_ERROR)]),
        lambda a: a.collaborate(PEER, "say hi"))

    def ping(a: Agent) -> dict:
        a.client.ping(PEER)  # returns what the transport (their bridge's /send) returned
        a.client._transport.wire.pump()
        (correlation_id, answer), *_ = a._response_box.items()
        return {"response_box": {"type": answer["type"], "key_is_the_ping_correlation_id": correlation_id.startswith(
            "ping_")}}

    run("ping_pong", "AgentFaxClient.ping(wallet)", "pong lands in Agent._response_box; no API returns it",
        by_type(ping=[("pong", {"message": "pong from peer"})]), ping)


# ── Merging two runs ─────────────────────────────────────────────────────────────────────────────────────────────


def _diff(a: Any, b: Any, path: tuple[str, ...] = ()) -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        found = {".".join((*path, k)) for k in a.keys() ^ b.keys()}
        for key in a.keys() & b.keys():
            found |= _diff(a[key], b[key], (*path, key))
        return found
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return set().union(*(_diff(x, y, (*path, str(i))) for i, (x, y) in enumerate(zip(a, b, strict=True))))
    return set() if a == b else {".".join(path)}


def _named(value: Any, path: tuple[str, ...] = ()) -> set[str]:
    found: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            found |= {".".join((*path, key))} if key in VARYING_KEYS else _named(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found |= _named(item, (*path, str(i)))
    return found


def _varies(first: Any, second: Any) -> list[str]:
    return sorted(_diff(first, second) | _named(first))


def _with_varies(first: dict, second: dict) -> dict:
    """``first`` with a ``varies`` list next to every wire text (and next to ``returns``), from both runs."""
    assert first.get("name") == second.get("name"), (first.get("name"), second.get("name"))
    merged: dict = {}
    for key, value in first.items():
        other = second[key]
        if key == "text":
            merged[key] = value
            merged["varies"] = _varies(json.loads(value), json.loads(other))
        elif key == "returns":
            merged[key] = value
            merged["returns_varies"] = _varies(value, other)
        elif isinstance(value, dict):
            merged[key] = _with_varies(value, other)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            assert len(value) == len(other), (first.get("name"), key)
            merged[key] = [_with_varies(x, y) for x, y in zip(value, other, strict=True)]
        else:
            merged[key] = value
    return merged


def record() -> Recorder:
    rec = Recorder()
    with contextlib.redirect_stdout(io.StringIO()):  # 0.6.1 prints a line per message
        record_with_beta(rec)
        record_with_peer(rec)
    return rec


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"where the JSON files go (default {OUT})")
    out: Path = parser.parse_args().out
    version = importlib.metadata.version("agent-coworker")
    if version != "0.6.1":
        print(f"agent-coworker {version} is installed; these vectors are of 0.6.1", file=sys.stderr)
        return 1
    first, second = record(), record()
    header = {
        "recorded_from": f"agent-coworker {version}, Python {sys.version.split()[0]}",
        "recorded_on": datetime.now(UTC).date().isoformat(),
        "recorded_by": "scripts/record_v1_vectors.py",
    }
    files = {
        "sent.json": ("What 0.6.1 sends as the asker, from its own API: the exact XMTP text.", "sent"),
        "answered.json": ("Requests a 1.0 agent receives and what 0.6.1 answers, by the asker's trust tier.",
                          "answered"),
        "outcomes.json": ("Answers fed to 0.6.1's waiting code paths and what its API returned.", "outcomes"),
    }
    out.mkdir(parents=True, exist_ok=True)
    for filename, (about, attr) in files.items():
        vectors = [_with_varies(a, b) for a, b in zip(getattr(first, attr), getattr(second, attr), strict=True)]
        document = {"about": about, **header, "vectors": vectors}
        (out / filename).write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        print(f"{out / filename}: {len(vectors)} vectors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
