"""Turn pydantic validation errors into one-line messages that say what to change.

Shared by the loss registry (hyper-parameters) and the run config (YAML + overrides), so that
an unknown key or a bad value reads the same everywhere: which key, what was given, what is allowed.
"""

from __future__ import annotations

import typing

import pydantic


def describe_fields(model: type[pydantic.BaseModel], last: tuple[str, ...] = ()) -> str:
    """'delta=0.15, anchor='rollout'|'recompute'' — the allowed keys with defaults or choices."""
    parts = []
    for name, field in sorted(model.model_fields.items(), key=lambda item: item[0] in last):
        choices = _choices(field.annotation)
        if isinstance(field.annotation, type) and issubclass(field.annotation, pydantic.BaseModel):
            parts.append(f"{name}.*")
        elif choices:
            parts.append(f"{name}={'|'.join(repr(c) for c in choices)}")
        elif field.is_required():
            parts.append(f"{name} (required)")
        else:
            parts.append(f"{name}={field.get_default(call_default_factory=True)!r}")
    return ", ".join(parts)


def _choices(annotation) -> tuple | None:
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    return None


def format_validation_error(owner: str, error: pydantic.ValidationError, model: type[pydantic.BaseModel]) -> str:
    """One line per problem, each naming the key, the value given and what is allowed."""
    lines = []
    for problem in error.errors():
        key = ".".join(str(part) for part in problem["loc"]) or "<root>"
        given = problem.get("input")
        if problem["type"] == "extra_forbidden":
            lines.append(f"{owner}: unknown key '{key}'. Allowed: {describe_fields(model)}")
        elif problem["type"] == "literal_error":
            lines.append(f"{owner}: '{key}' got {given!r}; {problem['msg'].lower()}")
        else:
            lines.append(f"{owner}: '{key}' got {given!r}: {problem['msg']}")
    return "\n".join(lines)
