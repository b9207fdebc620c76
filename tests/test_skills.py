"""Skill registration: schemas from hints, informal maps, JSON Schema and models; validation and failures."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

from coworker import AsyncAgent, CallContext, ConfigurationError, InvalidInput, SkillFailed, TrustTier
from coworker.core.skills import build_skill, public_message


def make(fn: Any, **options: Any) -> Any:
    anonymous = getattr(fn, "__name__", "") == "<lambda>"
    defaults: dict[str, Any] = {"name": "anon" if anonymous else None, "description": None, "input_schema": None,
                                "output_schema": None, "min_trust_tier": TrustTier.KNOWN, "version": "1.0.0"}
    return build_skill(fn, **{**defaults, **options})


CTX = CallContext(caller="0x" + "1" * 40, trust_tier=TrustTier.KNOWN, call_id="c", skill="s")


def test_decorator_returns_the_function_unchanged_and_defaults_come_from_it(tmp_path: Any) -> None:
    agent = AsyncAgent("x", data_dir=tmp_path / "x")

    def translate(text: str, to: str = "fr") -> str:
        """Translate text."""
        return text

    assert agent.skill()(translate) is translate
    skill = agent.skills["translate"]
    assert skill.description == "Translate text."
    assert skill.input_schema["required"] == ["text"]
    assert skill.output_schema == {"type": "string"}
    assert skill.min_trust_tier == TrustTier.KNOWN and skill.version == "1.0.0"
    agent.close()


def test_bare_decorator_is_a_clear_type_error(tmp_path: Any) -> None:
    agent = AsyncAgent("x", data_dir=tmp_path / "x")
    with pytest.raises(TypeError, match="parentheses"):
        agent.skill(lambda: None)  # type: ignore[arg-type]
    agent.close()


def test_duplicate_and_invalid_names_are_refused(tmp_path: Any) -> None:
    agent = AsyncAgent("x", data_dir=tmp_path / "x")
    agent.add_skill(lambda: 1, name="one")
    with pytest.raises(ConfigurationError, match="already registered"):
        agent.add_skill(lambda: 2, name="one")
    with pytest.raises(ConfigurationError, match="invalid skill name"):
        agent.add_skill(lambda: 2, name="has space")
    agent.close()


def test_informal_maps_become_json_schema_and_validate() -> None:
    def summarize(text: str, max_words: int = 50) -> dict[str, Any]:
        return {"summary": text, "word_count": 1}

    skill = make(summarize, input_schema={"text": "str", "max_words": "int"},
                 output_schema={"summary": "str", "word_count": "int"})
    assert skill.input_schema["properties"]["max_words"] == {"default": 50, "title": "Max Words", "type": "integer"}
    assert skill.bind({"text": "a"}, CTX) == {"text": "a", "max_words": 50}
    with pytest.raises(InvalidInput) as err:
        skill.bind({"text": "a", "max_words": "lots"}, CTX)
    assert err.value.path == "max_words"


def test_informal_map_with_unknown_type_or_foreign_field_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="unknown type"):
        make(lambda text: text, input_schema={"text": "strng"})
    with pytest.raises(ConfigurationError, match="not a parameter"):
        make(lambda text: text, input_schema={"text": "str", "other": "int"})
    with pytest.raises(ConfigurationError, match="required parameters"):
        make(lambda text, n: text, input_schema={"text": "str"})


def test_json_schema_input_is_checked_with_its_path() -> None:
    schema = {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "integer"}}},
              "required": ["items"]}
    skill = make(lambda items: sum(items), input_schema=schema)
    assert skill.bind({"items": [1, 2]}, CTX) == {"items": [1, 2]}
    with pytest.raises(InvalidInput) as err:
        skill.bind({"items": [1, "two"]}, CTX)
    assert err.value.path == "items.1"
    with pytest.raises(ConfigurationError, match="invalid JSON Schema"):
        make(lambda x: x, input_schema={"type": "objekt"})


class Order(BaseModel):
    item: str
    qty: int = 1


class Result(BaseModel):
    total: int


def test_pydantic_model_input_is_passed_as_the_model() -> None:
    def place(order: Order) -> str:
        return f"{order.qty} x {order.item}"

    skill = make(place, input_schema=Order)
    kwargs = skill.bind({"item": "tea"}, CTX)
    assert asyncio.run(skill.run(kwargs)) == "1 x tea"


def test_call_context_is_injected_and_not_part_of_the_schema() -> None:
    def whoami(ctx: CallContext, greeting: str = "hi") -> str:
        return f"{greeting} {ctx.caller}"

    skill = make(whoami)
    assert "ctx" not in skill.input_schema["properties"]
    assert asyncio.run(skill.run(skill.bind({}, CTX))) == f"hi {CTX.caller}"


def test_output_that_breaks_the_schema_is_a_skill_failure() -> None:
    skill = make(lambda: {"summary": 3}, output_schema={"summary": "str"})
    with pytest.raises(SkillFailed, match="output does not match"):
        asyncio.run(skill.run({}))


def test_typed_output_is_serialised_to_json() -> None:
    def total(values: list[int]) -> Result:
        return Result(total=sum(values))

    skill = make(total)
    assert asyncio.run(skill.run(skill.bind({"values": [1, 2]}, CTX))) == {"total": 3}


def test_unsupported_signatures_are_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"\*args"):
        make(lambda *args: args)
    with pytest.raises(ConfigurationError, match="pass name="):
        build_skill(lambda: 1, name=None, description=None, input_schema=None, output_schema=None,
                    min_trust_tier=1, version="1")


def test_annotations_that_cannot_be_resolved_say_why() -> None:
    class Local(BaseModel):
        x: int

    def uses_local(item: Local) -> int:
        return item.x

    with pytest.raises(ConfigurationError, match="module level"):
        make(uses_local)


def test_public_messages_blank_paths_and_are_bounded() -> None:
    message = public_message(FileNotFoundError(2, "No such file", "/home/alice/.ssh/id_rsa"))
    assert "/home" not in message and "<path>" in message
    assert public_message(RuntimeError("C:\\Users\\bob\\secret.txt missing")).startswith("<path>")
    assert len(public_message(ValueError("x" * 10_000))) == 500
    assert public_message(KeyError()) == "KeyError"
