"""Making a plan: the deterministic :class:`KeywordPlanner`, and the pure half of the LLM planner (the messages
that ask a language model for a plan, and reading the plan in its answer). No I/O."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from coworker._errors import ConfigurationError
from coworker.core.plans import required_fields

CardList = Sequence[Mapping[str, Any]]
#: The cards the other agents show: a list (the peer of a two-party collaboration, whose steps say ``"peer"``),
#: or lists by wallet (the members of a collaboration with several, whose steps name them by wallet).
OtherCards = CardList | Mapping[str, CardList]


def by_agent(peer: OtherCards) -> list[tuple[str, CardList]]:
    """(what a step names the agent by, its cards) for each other agent: ``"peer"`` or a member's wallet."""
    return list(peer.items()) if isinstance(peer, Mapping) else [("peer", peer)]

# ---- the deterministic planner -----------------------------------------------------------------------------

_STOP_WORDS: Final = frozenset({
    "a", "an", "and", "the", "then", "after", "before", "of", "to", "for", "on", "in", "into", "with", "about",
    "by", "from", "as", "at", "it", "its", "this", "that", "these", "those", "is", "are", "be", "me", "my", "our",
    "us", "we", "you", "your", "please", "do", "make", "some", "any", "all", "using", "use", "via", "so", "also"})
_SUFFIXES: Final = ("ions", "ion", "ings", "ing", "izes", "ize", "ises", "ise", "ers", "er", "ed", "es", "s", "e",
                    "y")
GOAL_FIELDS: Final = frozenset({"topic", "goal", "query", "subject", "prompt", "task", "question"})
FIRST_STEP_FIELDS: Final = frozenset({"text"})


def _stem(word: str) -> str:
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _words(text: str) -> list[str]:
    """The stems of the meaningful words of ``text`` (snake_case and camelCase split), in order."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", text)
    return [_stem(w) for w in re.findall(r"[a-z0-9]+", spaced.lower()) if len(w) > 1 and w not in _STOP_WORDS]


def _alike(a: str, b: str) -> bool:
    return a == b or (min(len(a), len(b)) >= 5 and (a.startswith(b) or b.startswith(a)))


def _first_match(goal: Sequence[str], words: Sequence[str]) -> int | None:
    return next((i for i, g in enumerate(goal) if any(_alike(g, w) for w in words)), None)


def _properties(schema: object) -> dict[str, Any]:
    props = schema.get("properties") if isinstance(schema, dict) else None
    return props if isinstance(props, dict) else {}


def _types(schema: object) -> set[str]:
    """The JSON types a schema allows (empty: any)."""
    if not isinstance(schema, dict):
        return set()
    kind = schema.get("type")
    if isinstance(kind, str):
        return {kind}
    if isinstance(kind, list):
        return {k for k in kind if isinstance(k, str)}
    found: set[str] = set()
    for option in schema.get("anyOf") or schema.get("oneOf") or []:
        found |= _types(option)
    return found


@dataclass(frozen=True, slots=True)
class _Candidate:
    side: str
    card: Mapping[str, Any]
    anchor: int  # where in the goal it matches first
    named: bool  # the goal names the skill (not only its description or fields)
    score: int


class KeywordPlanner:
    """Plans without a model: matches the goal's words against the skills' names, descriptions and schema
    field names, and chains the matched skills in the order the goal mentions them. Deterministic, no I/O.

    Skills whose name the goal mentions become the steps (when it names none: skills that at least two of its
    words describe). A skill this agent has runs here, one several members have on the first that shows it
    (with several members, ``peer`` maps each wallet to its cards and steps name members by wallet). Each
    step's input is filled from its input schema:
    fields such as ``topic``, ``goal``, ``query`` or ``prompt`` (and ``text`` in the first step) get the goal;
    a field named like a field of the previous step's output gets that field (``{{prev.output.name}}``); the
    first other required field gets the previous step's whole output.

    Example::

        KeywordPlanner().plan("Research AI agents and write a report", own_cards, peer_cards)
        # {"steps": [{"id": "research", "skill": "research", "agent": "self", "input": {"topic": "..."}},
        #            {"id": "write", "skill": "write", "agent": "peer",
        #             "input": {"topic": "...", "notes": "{{research.output.summary}}"}}], "key_results": [...]}
    """

    def __repr__(self) -> str:
        return "KeywordPlanner()"

    def plan(self, goal: str, own: CardList, peer: OtherCards) -> dict[str, Any]:
        """Plan data for ``goal`` from the skill cards of this agent (``own``) and of the peer (or members).

        Raises:
            ConfigurationError: no skill matches the goal.
        """
        words = _words(goal)
        agents = [("self", own), *by_agent(peer)]
        candidates = [c for side, cards in agents for card in cards
                      if (c := self._candidate(words, side, card)) is not None]
        chosen = [c for c in candidates if c.named] or [c for c in candidates if c.score >= 2]
        if not chosen:
            names = ", ".join(sorted({str(c.get("name")) for _, cards in agents for c in cards})) or "none"
            which = "either agent" if len(agents) == 2 else "any agent"
            raise ConfigurationError(f"KeywordPlanner: no skill of {which} matches the goal {goal!r} (skills: "
                                     f"{names}); name a skill in the goal or pass plan=[...]")
        by_skill: dict[str, _Candidate] = {}
        for c in sorted(chosen, key=lambda c: c.side != "self"):  # this agent's first
            by_skill.setdefault(str(c.card["name"]), c)
        if all(c.side == "self" for c in by_skill.values()):  # the peer would have nothing to do: give it a step
            for c in chosen:
                if c.side != "self":
                    by_skill[str(c.card["name"])] = c
                    break
        ordered = sorted(by_skill.values(), key=lambda c: (c.anchor, -c.score, str(c.card["name"])))
        steps: list[dict[str, Any]] = []
        previous: tuple[str, Mapping[str, Any]] | None = None
        for c in ordered:
            step_id = re.sub(r"[^A-Za-z0-9_.-]", "_", str(c.card["name"]))[:64]
            steps.append({"id": step_id, "skill": c.card["name"], "agent": c.side,
                          "input": self._input(goal, c.card, previous)})
            previous = (step_id, c.card)
        key_results = [{"description": f"{s['skill']}: {desc}" if (desc := self._summary(c.card)) else
                        f"{s['skill']} done", "step": s["id"]} for s, c in zip(steps, ordered, strict=True)]
        return {"steps": steps, "key_results": key_results}

    @staticmethod
    def _summary(card: Mapping[str, Any]) -> str:
        lines = str(card.get("description") or "").strip().splitlines()
        return lines[0] if lines else ""

    @staticmethod
    def _candidate(goal: Sequence[str], side: str, card: Mapping[str, Any]) -> _Candidate | None:
        name = card.get("name")
        if not isinstance(name, str):
            return None
        named_at = _first_match(goal, _words(name))
        described = [*_words(str(card.get("description") or "")),
                     *(w for field in [*_properties(card.get("input_schema")), *_properties(card.get("output_schema"))]
                       for w in _words(field))]
        hits = [i for i, g in enumerate(goal) if any(_alike(g, w) for w in described)]
        if named_at is None and not hits:
            return None
        anchor = named_at if named_at is not None else min(hits)
        return _Candidate(side, card, anchor, named_at is not None, len(set(hits)) + (3 if named_at is not None else 0))

    @staticmethod
    def _input(goal: str, card: Mapping[str, Any], previous: tuple[str, Mapping[str, Any]] | None) -> dict[str, Any]:
        schema = card.get("input_schema")
        required = set(required_fields(card))
        data: dict[str, Any] = {}
        fed = False  # the previous step's whole output has been used
        prev_fields = _properties(previous[1].get("output_schema")) if previous else {}
        for name, prop in _properties(schema).items():
            key = name.lower()
            if key in GOAL_FIELDS or (previous is None and key in FIRST_STEP_FIELDS):
                data[name] = goal
            elif previous is not None and name in prev_fields:
                data[name] = f"{{{{{previous[0]}.output.{name}}}}}"
            elif name in required and not fed:
                if previous is None:
                    if goal not in data.values() and _types(prop) <= {"string"}:
                        data[name] = goal
                    continue
                data[name] = KeywordPlanner._whole_output(previous[0], previous[1].get("output_schema"), prop)
                fed = True
        return data

    @staticmethod
    def _whole_output(step_id: str, output_schema: object, field_schema: object) -> str:
        """A reference to the output of ``step_id`` that fits a field: as itself, or as text for a string
        field (a string field of the output if it has one)."""
        whole = f"{{{{{step_id}.output}}}}"
        if not _types(field_schema) or _types(field_schema) != {"string"} or _types(output_schema) == {"string"}:
            return whole
        for name, prop in _properties(output_schema).items():
            if _types(prop) == {"string"}:
                return f"{{{{{step_id}.output.{name}}}}}"
        return f"Output of {step_id}: {whole}"  # embedded in text, the output arrives as JSON text


# ---- asking a language model for a plan (the pure half of LLMPlanner) --------------------------------------

PLANNER_INSTRUCTIONS: Final = """\
You plan a collaboration between two software agents. Agent "self" asks for the work; agent "peer" is the \
other agent. Each step runs one skill of one agent. Use only the skills listed for that agent, and give each \
step an input that follows the skill's input_schema.
A string in a step's input may use the output of an earlier step: "{{<step id>.output}}" is its whole output, \
"{{<step id>.output.<field>}}" one field of it. Use as few steps as the goal needs (at most 50), at least one \
of them for the peer.
Answer with one JSON object and nothing else:
{"steps": [{"id": "<short id>", "skill": "<skill name>", "agent": "self" or "peer", "input": {...}}],
 "key_results": [{"description": "<a result the goal needs>", "step": "<id of the step that delivers it>"}]}"""


def _brief_card(card: Mapping[str, Any]) -> dict[str, Any]:
    return {k: card.get(k) for k in ("name", "description", "input_schema", "output_schema")}


MEMBERS_INSTRUCTIONS: Final = """\
You plan a collaboration between several software agents. Agent "self" asks for the work; the others, its \
members, are named by their wallets. Each step runs one skill of one agent. Use only the skills listed for that \
agent, and give each step an input that follows the skill's input_schema.
A string in a step's input may use the output of an earlier step, whichever agent ran it: "{{<step id>.output}}" \
is its whole output, "{{<step id>.output.<field>}}" one field of it. Use as few steps as the goal needs (at most \
50), at least one of them for a member.
Answer with one JSON object and nothing else:
{"steps": [{"id": "<short id>", "skill": "<skill name>", "agent": "self" or "<member's wallet>", "input": {...}}],
 "key_results": [{"description": "<a result the goal needs>", "step": "<id of the step that delivers it>"}]}"""


def planner_messages(goal: str, own: CardList, peer: OtherCards) -> list[dict[str, str]]:
    """The chat messages that ask a language model for a plan (``peer``: as :meth:`KeywordPlanner.plan` takes
    it)."""
    agents = {name: {"skills": [_brief_card(c) for c in cards]} for name, cards in [("self", own), *by_agent(peer)]}
    instructions = MEMBERS_INSTRUCTIONS if isinstance(peer, Mapping) else PLANNER_INSTRUCTIONS
    return [{"role": "system", "content": instructions},
            {"role": "user", "content": json.dumps({"goal": goal, "agents": agents}, ensure_ascii=False, indent=1)}]


_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


def plan_from_answer(text: str) -> Any:
    """The plan data in a language model's answer: JSON, possibly inside a ```json fence or around prose.

    Raises:
        ConfigurationError: no JSON plan in it.
    """
    fenced = _FENCE.search(text)
    candidate = fenced.group(1) if fenced else text
    try:
        data = json.loads(candidate)
    except ValueError:
        start, end = candidate.find("{"), candidate.rfind("}")
        try:
            data = json.loads(candidate[start:end + 1]) if 0 <= start < end else None
        except ValueError:
            data = None
    if not isinstance(data, dict | list):
        raise ConfigurationError(f"the answer holds no JSON plan: {text[:200]!r}")
    return data
