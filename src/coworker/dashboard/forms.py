"""A form from a skill's input schema (JSON Schema): one field per property the browser can edit as a control,
and a JSON box for anything else. Pure: the page renders the fields; the page's script turns what was typed back
into JSON by each field's kind, and the skill checks the input against its schema as for any caller."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MAX_FIELDS = 50  # a schema with more properties gets one JSON box
LONG_TEXT = {"text", "content", "body", "prompt", "document", "code", "query"}  # names of strings typed in a box


@dataclass(frozen=True, slots=True)
class Field:
    """One input of a skill's form. ``kind``: text, textarea, integer, number, boolean, choice or json."""

    name: str
    kind: str
    required: bool
    description: str = ""
    choices: tuple[str, ...] = ()
    default: str = ""  # as the control shows it


def fields(schema: Any) -> list[Field] | None:
    """The fields of a form for ``schema``, or None when the input is best typed as one JSON object."""
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        return None
    properties = schema.get("properties")
    if not isinstance(properties, dict) or not properties or len(properties) > MAX_FIELDS:
        return None
    required = set(schema.get("required") or []) if isinstance(schema.get("required"), list) else set()
    return [_field(str(name), spec if isinstance(spec, dict) else {}, str(name) in required)
            for name, spec in properties.items()]


def _field(name: str, spec: dict[str, Any], required: bool) -> Field:
    description = str(spec.get("description") or "")  # not the title: pydantic makes one of the name
    default = spec.get("default")
    enum = spec.get("enum")
    if isinstance(enum, list) and enum and all(isinstance(v, str) for v in enum):
        return Field(name, "choice", required, description, tuple(enum), str(default) if default in enum else "")
    kind = _kind(spec)
    shown = "" if default is None else (json.dumps(default) if kind == "json" else str(default).lower()
                                        if isinstance(default, bool) else str(default))
    if kind == "text" and (name.lower() in LONG_TEXT or int(spec.get("maxLength") or 0) > 200):
        kind = "textarea"
    return Field(name, kind, required, description, (), shown)


def _kind(spec: dict[str, Any]) -> str:
    types = spec.get("type")
    if isinstance(types, list):
        types = [t for t in types if t != "null"]
        types = types[0] if len(types) == 1 else None
    if "anyOf" in spec:  # pydantic's Optional[X]: anyOf [X, null]
        options = [o for o in spec["anyOf"] if isinstance(o, dict) and o.get("type") != "null"]
        if len(options) == 1:
            return _kind(options[0])
    return {"string": "text", "integer": "integer", "number": "number", "boolean": "boolean"}.get(str(types), "json")
