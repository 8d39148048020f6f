"""The base of every config section: unknown keys refused, and no boolean taken as a number.

Pydantic's lax mode reads `true` as 1 for an int or float field, and YAML reads yes/no/on/off as
booleans, so `epochs: yes` would train one epoch without a word. Everything else stays lax: a
string value for an enum still becomes the enum at this boundary.
"""
from __future__ import annotations

import types
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError


def _bool_for_number(annotation: Any, value: Any) -> str | None:
    """'an integer' or 'a number' when `value` holds a boolean where `annotation` wants a number
    (pydantic's lax mode would take true as 1), else None. Looks inside lists, tuples and dicts."""
    if annotation is bool or annotation is Any:
        return None
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Union or origin is types.UnionType:
        if isinstance(value, bool) and bool in args:
            return None
        return next((k for a in args if (k := _bool_for_number(a, value))), None)
    if isinstance(value, bool):
        return {int: "an integer", float: "a number"}.get(annotation)
    if isinstance(value, (list, tuple)) and origin in (list, tuple) and args:
        each = args if origin is tuple and args[-1] is not Ellipsis else (args[0],) * len(value)
        return next((k for a, v in zip(each, value) if (k := _bool_for_number(a, v))), None)
    if isinstance(value, dict) and origin is dict and len(args) == 2:
        return next((k for v in value.values() if (k := _bool_for_number(args[1], v))), None)
    return None


class Strict(BaseModel):
    """A config section: extra keys refused, assignments validated, booleans kept out of numbers."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_enum_values=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, value, info: ValidationInfo):
        expected = _bool_for_number(cls.model_fields[info.field_name].annotation, value)
        if expected:
            raise PydanticCustomError("bool_for_number", "expected {expected}, not true/false",
                                      {"expected": expected})
        return value
