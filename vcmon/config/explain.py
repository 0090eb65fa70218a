"""Pydantic's validation errors turned into sentences a network admin can act on."""

from __future__ import annotations

import re
from typing import Any, get_args, get_origin

from pydantic import (
    BaseModel,
    ValidationError,
)
from pydantic_core import ErrorDetails

from vcmon.config.problems import Loc, Problem, did_you_mean, format_path
from vcmon.config.secrets import is_secret_path
from vcmon.config.source import Source

# ---------------------------------------------------------------------------------------------
# Pydantic errors in plain words


def _unwrap_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    # Annotated[...], X | None, tuple[X, ...]: look inside.
    if get_origin(annotation) is not None:
        for arg in get_args(annotation):
            found = _unwrap_model(arg)
            if found is not None:
                return found
    return None


def _model_at(model: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The model that validates the mapping at ``loc`` below ``model``."""
    from vcmon.delivery.sinks.registry import SINKS  # a sink's type tag picks its model

    current: type[BaseModel] | None = model
    for seg in loc:
        if isinstance(seg, int):
            continue
        if current is not None and seg not in current.model_fields and seg in SINKS:
            current = SINKS[seg][0]
            continue
        if current is None or seg not in current.model_fields:
            return None
        current = _unwrap_model(current.model_fields[seg].annotation)
    return current


def describe(value: object, written: str | None) -> str:
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return written or str(value).lower()
    if isinstance(value, int | float):
        return f"the number {written or value}"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping (key: value)"
    if isinstance(value, list | tuple):
        return "a list"
    return f"{written!r}" if written else type(value).__name__


def _kind_of(value: object) -> str:
    """What ``value`` is, without showing it: for secrets."""
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, dict):
        return "a mapping (key: value)"
    if isinstance(value, list | tuple):
        return "a list"
    return "a value of another kind"


def _explain(
    err: ErrorDetails, model: type[BaseModel], loc: Loc, written: str | None, secret: bool = False
) -> str:
    """One pydantic error as a sentence a network admin understands; when ``secret``, the
    value is described by its kind only."""
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    got = _kind_of(value) if secret else describe(value, written)
    if secret:
        written = None
    # Models are looked up along pydantic's own path, which names the sink type it chose.
    raw = tuple(s for s in err["loc"] if s != "[key]")
    loc = raw if len(raw) >= len(loc) else loc
    if kind == "missing":
        owner = _model_at(model, loc[:-1])
        needed = [n for n, f in owner.model_fields.items() if f.is_required()] if owner else []
        hint = f" (required here: {', '.join(needed)})" if len(needed) > 1 else ""
        return f"required key '{loc[-1]}' is missing{hint}"
    if kind == "extra_forbidden":
        owner = _model_at(model, loc[:-1])
        allowed = list(owner.model_fields) if owner else []
        hint = did_you_mean(str(loc[-1]), allowed) or (
            f" (expected one of: {', '.join(allowed)})" if allowed else ""
        )
        return f"unknown key '{loc[-1]}'{hint}"
    if kind == "bool_not_number":
        return f"expected a number, got {written or str(value).lower()}"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", err["msg"]))
    if kind == "string_type":
        quote = f' (write it in quotes: "{written}")' if written and value is not None else ""
        if secret:
            quote = " (write it in quotes)" if isinstance(value, int | float) else ""
        return f"expected text, got {got}{quote}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected a whole number, got {got}"
    if kind in ("float_type", "float_parsing"):
        return f"expected a number, got {got}"
    if kind in ("dict_type", "model_type", "model_attributes_type", "mapping_type"):
        return f"expected a mapping (key: value), got {got}"
    if kind in ("list_type", "tuple_type", "iterable_type"):
        return f"expected a list, got {got}"
    if kind in ("literal_error", "enum"):
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        hint = did_you_mean(str(value), choices) if isinstance(value, str) else ""
        return f"{got} is not one of {', '.join(choices)}{hint}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        from vcmon.delivery.sinks.registry import (
            SINKS,  # the only discriminated union in the config
        )

        choices = list(SINKS)
        tag = ctx.get("tag")
        if tag is None:
            return f"required key 'type' is missing (expected one of: {', '.join(choices)})"
        hint = did_you_mean(str(tag), choices) or f" (expected one of: {', '.join(choices)})"
        return f"unknown type '{tag}'{hint}"
    return f"{err['msg']} (got {got})"


def _error_loc(err: ErrorDetails) -> tuple[Loc, bool]:
    """The error's location without pydantic's '[key]' marker or the sink type it chose (which
    is not a key in the file), and whether it names a key."""
    loc = tuple(err["loc"])
    if len(loc) >= 3 and loc[0] == "sinks" and isinstance(loc[1], int):
        from vcmon.delivery.sinks.registry import SINKS

        if loc[2] in SINKS:
            loc = loc[:2] + loc[3:]
    if loc and loc[-1] == "[key]":
        return loc[:-1], True
    return loc, err["type"] == "extra_forbidden"


def field_messages(exc: ValidationError, model: type[BaseModel]) -> list[tuple[str, str]]:
    """(field path, message) for each error of ``exc``, raised while validating ``model``."""
    out = []
    for err in exc.errors():
        loc, _ = _error_loc(err)
        out.append((format_path(loc), _explain(err, model, loc, None, is_secret_path(loc))))
    return out


def validate(
    model: type[BaseModel], data: object, source: Source, prefix: Loc, problems: list[Problem]
) -> Any:
    """``model`` validated from ``data`` at ``prefix`` of ``source``; None after problems."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc, is_key = _error_loc(err)
            full = (*prefix, *loc)
            # 'parent: x' is validated as a one-item list; point at the string, not at [0].
            if full and isinstance(full[-1], int) and full not in source.values:
                full = full[:-1]
            if full in source.reported:
                continue
            message = _explain(err, model, loc, source.text.get(full), is_secret_path(full))
            problems.append(source.problem(full, message, key=is_key))
        return None
