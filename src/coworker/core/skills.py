"""Skills: a function plus its published description, its schemas and the validation around it.

A skill's input is always a JSON object. Its schema comes, in order of preference, from an explicit
``input_schema`` (a pydantic model class, a JSON Schema, or an informal map such as
``{"text": "str", "max_words": "int"}``) or from the function's type hints. Whatever the source, the
published schema is JSON Schema and the input is validated before the function runs.
"""

from __future__ import annotations

import asyncio
import collections.abc
import inspect
import re
import typing
from collections.abc import Awaitable, Callable, Iterator, Mapping, Set
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model

from coworker._errors import ConfigurationError, InvalidInput, SkillFailed
from coworker.core.trust import TrustTier

SkillFunction = Callable[..., Any]

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,99}$")
_INFORMAL_TYPES: dict[str, Any] = {
    "str": str, "string": str, "text": str,
    "int": int, "integer": int,
    "float": float, "number": float,
    "bool": bool, "boolean": bool,
    "list": list[Any], "array": list[Any],
    "dict": dict[str, Any], "object": dict[str, Any],
    "any": Any, "json": Any,
}
_JSON_SCHEMA_KEYS = frozenset({"$schema", "type", "properties", "required", "$ref", "anyOf", "oneOf", "allOf"})


ProgressReporter = Callable[[float | None, str], None]


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a skill may know about the call it serves; injected into a parameter annotated ``CallContext``.

    Attributes:
        caller: the caller's checksummed wallet.
        trust_tier: the tier we hold for the caller.
        call_id: the task id (the caller's idempotency key).
        skill: the skill's name.
        attempt: 1, or more when the task is run again after this agent crashed or was stopped mid-call.

    Example::

        @agent.skill()
        def crunch(n: int, ctx: CallContext) -> int:
            for i in range(n):
                ctx.progress(i / n, f"step {i}")   # keeps the call alive past its timeout
            return n
    """

    caller: str
    trust_tier: TrustTier
    call_id: str
    skill: str
    attempt: int = 1
    _reporter: ProgressReporter | None = field(default=None, repr=False, compare=False)

    def progress(self, progress: float | None = None, message: str = "") -> None:
        """Tell the caller how far the skill is; each report extends the call's timeout (up to its cap).

        Safe to call from a sync skill's worker thread. Reports are coalesced to a few messages a second.
        """
        if self._reporter is not None:
            self._reporter(None if progress is None else float(progress), str(message)[:2000])


def _informal_type(spec: str, skill: str, key: str) -> Any:
    text = spec.strip().lower()
    optional = text.endswith("?")
    text = text.rstrip("?")
    inner = re.fullmatch(r"(?:list|array)\[(\w+)\]", text)
    if inner:
        base: Any = list[_informal_type(inner.group(1), skill, key)]  # type: ignore[misc]
    elif text in _INFORMAL_TYPES:
        base = _INFORMAL_TYPES[text]
    else:
        known = ", ".join(sorted(_INFORMAL_TYPES))
        raise ConfigurationError(f"skill {skill!r}: field {key!r} has unknown type {spec!r} (known: {known})")
    return base | None if optional else base


def _is_informal(schema: Mapping[str, Any]) -> bool:
    return bool(schema) and not (_JSON_SCHEMA_KEYS & schema.keys()) and all(
        isinstance(v, str) for v in schema.values()
    )


class _Forbid(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _path(loc: tuple[int | str, ...] | typing.Sequence[Any]) -> str:
    return ".".join(str(p) for p in loc)


class _Validator:
    """Validates a JSON value; returns the validated (and for models, converted) value."""

    def __init__(self, json_schema: dict[str, Any], check: Callable[[Any], Any]) -> None:
        self.json_schema = json_schema
        self.check = check


def _model_validator(model: type[BaseModel]) -> _Validator:
    return _Validator(model.model_json_schema(), model.model_validate)


def _adapter_validator(annotation: Any) -> _Validator:
    adapter: TypeAdapter[Any] = TypeAdapter(annotation)
    schema = adapter.json_schema() if annotation is not Any else {}

    def check(value: Any) -> Any:
        return adapter.dump_python(adapter.validate_python(value), mode="json")

    return _Validator(schema, check)


def _json_schema_validator(schema: dict[str, Any], skill: str) -> _Validator:
    try:
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ConfigurationError(f"skill {skill!r}: invalid JSON Schema: {exc.message}") from None
    validator = cls(schema)

    def check(value: Any) -> Any:
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
        if error is not None:
            raise _SchemaMismatch(error.message, _path(tuple(error.absolute_path)))
        return value

    return _Validator(dict(schema), check)


class _SchemaMismatch(Exception):
    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


def _first_error(exc: ValidationError | _SchemaMismatch) -> tuple[str, str]:
    if isinstance(exc, _SchemaMismatch):
        return exc.path, str(exc)
    first = exc.errors()[0]
    return _path(first["loc"]), first["msg"]


_PATHLIKE = re.compile(r"(?:[A-Za-z]:\\|~/|/)(?:[^\s'\":,;()\[\]]+[/\\])+[^\s'\":,;()\[\]]*")


def public_message(exc: BaseException, limit: int = 500) -> str:
    """The part of an exception a peer may see: its type and message, file paths blanked, bounded in size."""
    text = str(exc).strip() or type(exc).__name__
    text = _PATHLIKE.sub("<path>", text)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


@dataclass(eq=False)
class Skill:
    """A registered skill. ``fn`` is the user's function, unchanged."""

    name: str
    fn: SkillFunction
    description: str
    min_trust_tier: TrustTier
    version: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    _input: _Validator = field(repr=False)
    _output: _Validator = field(repr=False)
    _model_param: str | None = field(repr=False)
    _context_param: str | None = field(repr=False)
    _is_async: bool = field(repr=False)
    _item: _Validator | None = field(default=None, repr=False)  # async generator skills: each yielded value

    def card(self) -> dict[str, Any]:
        """The skill as published to peers that may see it."""
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": self.input_schema,
            "output_schema": self.output_schema,
            "min_trust_tier": int(self.min_trust_tier),
            "version": self.version,
        }

    def bind(self, data: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        """Validate ``data`` and return the keyword arguments for the function.

        Raises:
            InvalidInput: with the path of the first offending field.
        """
        try:
            value = self._input.check(data)
        except (ValidationError, _SchemaMismatch) as exc:
            path, msg = _first_error(exc)
            raise InvalidInput(f"{path or 'input'}: {msg}", path=path) from None
        if self._model_param is not None:
            kwargs: dict[str, Any] = {self._model_param: value}
        elif isinstance(value, BaseModel):
            kwargs = {k: getattr(value, k) for k in type(value).model_fields}
        else:
            kwargs = dict(value)
        if self._context_param is not None:
            kwargs[self._context_param] = ctx
        return kwargs

    @property
    def streams(self) -> bool:
        """Whether the skill is an async generator: it yields partial results and its output is their list."""
        return self._item is not None

    async def run(self, kwargs: dict[str, Any], on_partial: Callable[[Any], None] | None = None) -> Any:
        """Run the function (sync ones in a worker thread) and check its output.

        An async generator skill's yielded values are checked one by one and passed to ``on_partial``; its
        output is the list of them all.

        Raises:
            SkillFailed: the function raised, or its output breaks the output schema.
        """
        if self._item is not None:
            return await self._stream(kwargs, self._item, on_partial)
        try:
            if self._is_async:
                result = await typing.cast(Awaitable[Any], self.fn(**kwargs))
            else:
                result = await asyncio.to_thread(self.fn, **kwargs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise SkillFailed(public_message(exc)) from exc
        try:
            return self._output.check(result)
        except (ValidationError, _SchemaMismatch) as exc:
            path, msg = _first_error(exc)
            raise SkillFailed(f"output does not match the skill's schema: {path or 'output'}: {msg}") from None

    async def _stream(self, kwargs: dict[str, Any], item: _Validator,
                      on_partial: Callable[[Any], None] | None) -> list[Any]:
        items: list[Any] = []
        try:
            async for value in self.fn(**kwargs):
                try:
                    checked = item.check(value)
                except (ValidationError, _SchemaMismatch) as exc:
                    path, msg = _first_error(exc)
                    raise SkillFailed(f"partial result {len(items)} does not match the skill's schema: "
                                      f"{path or 'value'}: {msg}") from None
                items.append(checked)
                if on_partial is not None:
                    on_partial(checked)
        except (asyncio.CancelledError, SkillFailed):
            raise
        except Exception as exc:
            raise SkillFailed(public_message(exc)) from exc
        return items


_STREAM_ORIGINS = frozenset({collections.abc.AsyncIterator, collections.abc.AsyncGenerator,
                             collections.abc.AsyncIterable})


class VisibleSkills(Mapping[str, Skill]):
    """A live, read-only view of ``skills`` without the names in ``hidden``: the skills peers may know of.

    The agent keeps one and hands it to its runtime, so that every path that answers a peer (discover and the
    capabilities cards, calls, plan proposals, and the CoWorker 1.0 messages that become them) sees a hidden
    skill as one that does not exist, and a change to ``hidden`` takes effect on the next message.
    """

    __slots__ = ("_hidden", "_skills")

    def __init__(self, skills: Mapping[str, Skill], hidden: Set[str]) -> None:
        self._skills = skills
        self._hidden = hidden

    def __getitem__(self, name: str) -> Skill:
        if name in self._hidden:
            raise KeyError(name)
        return self._skills[name]

    def __iter__(self) -> Iterator[str]:
        return (name for name in self._skills if name not in self._hidden)

    def __len__(self) -> int:
        return sum(1 for name in self._skills if name not in self._hidden)

    def __contains__(self, name: object) -> bool:
        return name in self._skills and name not in self._hidden

    def __repr__(self) -> str:
        return f"<VisibleSkills {sorted(self)}>"


def skill_overview(card: Mapping[str, Any], hidden: bool) -> dict[str, Any]:
    """What the owner sees of one of the agent's skills: from its card, and whether it is hidden from peers."""
    try:
        tier = TrustTier.parse(card.get("min_trust_tier", TrustTier.KNOWN))
    except ValueError:
        tier = TrustTier.KNOWN
    return {"name": str(card.get("name", "")), "description": str(card.get("description") or ""),
            "version": str(card.get("version") or ""), "tier": tier.name.lower(), "min_trust_tier": int(tier),
            "hidden": bool(hidden)}


def valid_skill_name(name: object) -> bool:
    """Whether ``name`` is a name a skill may have."""
    return isinstance(name, str) and _NAME_RE.match(name) is not None


def _yielded_type(ret: Any) -> Any:
    """The type an async generator's return annotation says it yields (Any when it does not say)."""
    if typing.get_origin(ret) in _STREAM_ORIGINS:
        args = typing.get_args(ret)
        return args[0] if args else Any
    return Any


def build_skill(fn: SkillFunction, *, name: str | None, description: str | None,
                input_schema: Any, output_schema: Any, min_trust_tier: TrustTier | int,
                version: str) -> Skill:
    """Describe ``fn`` as a skill; raise TypeError or ConfigurationError for what cannot work."""
    if not callable(fn):
        raise TypeError(f"a skill must be a function, got {fn!r}")
    skill_name = name or getattr(fn, "__name__", "")
    if skill_name == "<lambda>" and name is None:
        raise ConfigurationError("a lambda has no name to publish: pass name=")
    if not isinstance(skill_name, str) or not _NAME_RE.match(skill_name):
        raise ConfigurationError(f"invalid skill name {skill_name!r}: use letters, digits, '_', '.', '-'")
    try:
        tier = TrustTier.parse(min_trust_tier)
    except ValueError as exc:
        raise ConfigurationError(f"skill {skill_name!r}: {exc}") from None
    doc = inspect.getdoc(fn) or ""
    desc = description if description is not None else doc.strip()

    signature = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:
        raise ConfigurationError(f"skill {skill_name!r}: cannot read its type hints: {exc} (types named in a "
                                 f"skill's annotations must be defined at module level)") from None

    context_param: str | None = None
    params: dict[str, inspect.Parameter] = {}
    accepts_extra = False
    for pname, param in signature.parameters.items():
        if hints.get(pname) is CallContext:
            context_param = pname
        elif param.kind is inspect.Parameter.VAR_KEYWORD:
            accepts_extra = True
        elif param.kind is inspect.Parameter.VAR_POSITIONAL:
            raise ConfigurationError(f"skill {skill_name!r}: *{pname} cannot receive named JSON input")
        elif param.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise ConfigurationError(f"skill {skill_name!r}: positional-only {pname!r} cannot receive JSON input")
        else:
            params[pname] = param

    model_param: str | None = None
    if isinstance(input_schema, type) and issubclass(input_schema, BaseModel):
        in_validator = _model_validator(input_schema)
        if len(params) == 1 and hints.get(next(iter(params))) is input_schema:
            model_param = next(iter(params))
    elif isinstance(input_schema, Mapping) and _is_informal(input_schema):
        fields: dict[str, Any] = {}
        for key, spec in input_schema.items():
            if key not in params and not accepts_extra:
                raise ConfigurationError(f"skill {skill_name!r}: input field {key!r} is not a parameter of "
                                         f"{getattr(fn, '__name__', 'the function')}")
            found = params.get(key)
            default = ... if found is None or found.default is inspect.Parameter.empty else found.default
            fields[key] = (_informal_type(spec, skill_name, key), default)
        missing = [p for p, prm in params.items() if p not in fields and prm.default is inspect.Parameter.empty]
        if missing:
            raise ConfigurationError(f"skill {skill_name!r}: required parameters {missing} are not in input_schema")
        in_validator = _model_validator(create_model(f"{skill_name}_input", __base__=_Forbid, **fields))
    elif isinstance(input_schema, Mapping) and input_schema:
        in_validator = _json_schema_validator(dict(input_schema), skill_name)
    elif input_schema is None or (isinstance(input_schema, Mapping) and not input_schema):
        fields = {
            p: (hints.get(p, Any), ... if prm.default is inspect.Parameter.empty else prm.default)
            for p, prm in params.items()
        }
        base: type[BaseModel] = BaseModel if accepts_extra else _Forbid
        try:
            in_validator = _model_validator(create_model(f"{skill_name}_input", __base__=base, **fields))
        except Exception as exc:
            raise ConfigurationError(f"skill {skill_name!r}: cannot build an input schema: {exc}") from None
    else:
        raise ConfigurationError(f"skill {skill_name!r}: input_schema must be a pydantic model, a JSON Schema "
                                 f"or a map of field names to type names")

    item_validator: _Validator | None = None
    if inspect.isgeneratorfunction(fn):
        raise ConfigurationError(f"skill {skill_name!r}: a generator skill must be async (async def ... yield)")
    if inspect.isasyncgenfunction(fn):
        # The schema options describe one yielded value; the output is the list of them.
        if output_schema is None or (isinstance(output_schema, Mapping) and not output_schema):
            try:
                item_validator = _adapter_validator(_yielded_type(hints.get("return", Any)))
            except Exception as exc:
                raise ConfigurationError(f"skill {skill_name!r}: cannot build a schema for what it yields: "
                                         f"{exc}") from None
        elif isinstance(output_schema, type) and issubclass(output_schema, BaseModel):
            item_validator = _adapter_validator(output_schema)
        elif isinstance(output_schema, Mapping) and _is_informal(output_schema):
            item_fields: dict[str, Any] = {str(k): (_informal_type(v, skill_name, k), ...)
                                           for k, v in output_schema.items()}
            item_validator = _adapter_validator(create_model(f"{skill_name}_item", __base__=BaseModel,
                                                             **item_fields))
        elif isinstance(output_schema, Mapping):
            item_validator = _json_schema_validator(dict(output_schema), skill_name)
        else:
            raise ConfigurationError(f"skill {skill_name!r}: output_schema must be a pydantic model, a JSON "
                                     f"Schema or a map of field names to type names")
        out_validator = _Validator({"type": "array", "items": item_validator.json_schema}, lambda v: v)
    elif isinstance(output_schema, type) and issubclass(output_schema, BaseModel):
        out_validator = _adapter_validator(output_schema)
    elif isinstance(output_schema, Mapping) and _is_informal(output_schema):
        out_fields: dict[str, Any] = {str(k): (_informal_type(v, skill_name, k), ...) for k, v in output_schema.items()}
        out_validator = _adapter_validator(create_model(f"{skill_name}_output", __base__=BaseModel, **out_fields))
    elif isinstance(output_schema, Mapping) and output_schema:
        out_validator = _json_schema_validator(dict(output_schema), skill_name)
    elif output_schema is None or (isinstance(output_schema, Mapping) and not output_schema):
        ret = hints.get("return", Any)
        try:
            out_validator = _adapter_validator(Any if ret is inspect.Signature.empty else ret)
        except Exception as exc:
            raise ConfigurationError(f"skill {skill_name!r}: cannot build an output schema: {exc}") from None
    else:
        raise ConfigurationError(f"skill {skill_name!r}: output_schema must be a pydantic model, a JSON Schema "
                                 f"or a map of field names to type names")

    return Skill(
        name=skill_name, fn=fn, description=desc, min_trust_tier=tier, version=str(version),
        input_schema=in_validator.json_schema, output_schema=out_validator.json_schema,
        _input=in_validator, _output=out_validator, _model_param=model_param,
        _context_param=context_param,
        _is_async=inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__),
        _item=item_validator,
    )
