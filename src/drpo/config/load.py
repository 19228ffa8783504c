"""Reading a run config: an optional YAML file, then ``key=value`` overrides, validated into a RunConfig.

    load_config("my.yaml", ["loss=spo", "loss.delta=0.2", "steps=300"])

A key that names a section with a ``name`` field sets that name (``loss=spo`` is ``loss.name=spo``). An
unknown key or a bad value raises :class:`ConfigError`, one line per problem naming the key and what is
allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
import yaml

from drpo.config.run import RunConfig
from drpo.validation import format_validation_error


class ConfigError(ValueError):
    """A bad config key or value; the message names it and what is allowed."""


def parse_value(text: str) -> Any:
    """'3' -> 3, '0.2' -> 0.2, 'true' -> True, 'null' -> None, anything else stays a string (YAML scalars)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (int, float, bool, type(None), str)) else text


NAMED_SECTIONS = ("loss", "model", "task")  # `loss=spo` means `loss.name=spo`
ALIASES = {"data": "task.data"}  # `drpo train model=hf:DIR task=math data=FILE`


def apply_override(tree: dict, key: str, value: Any) -> None:
    """Set a dotted key in a nested dict; a bare section name sets that section's ``name``."""
    key = ALIASES.get(key, key)
    parts = [key, "name"] if key in NAMED_SECTIONS else key.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{key}': '{part}' holds a value, not a section of keys")
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """YAML file (optional) then ``key=value`` overrides, validated into a RunConfig."""
    tree: dict = {}
    if path is not None:
        tree = read_yaml(Path(path))
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(tree).__name__}")
        for section in NAMED_SECTIONS:
            if isinstance(tree.get(section), str):
                tree[section] = {"name": tree[section]}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not key=value (e.g. steps=100, loss.delta=0.2)")
        apply_override(tree, key.strip(), parse_value(text.strip()))
    return validate(tree)


def read_yaml(path: Path) -> Any:
    """The content of the YAML file ``path``; a missing file, a directory or invalid YAML is a ConfigError that says
    which, with the line and column of a syntax error."""
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory; --config takes a YAML file (e.g. {path}/config.yaml)")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {path} is not text (UTF-8): {error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"config file {path}{where}: invalid YAML: {problem}") from None


def validate(tree: dict) -> RunConfig:
    try:
        return RunConfig.model_validate(tree)
    except pydantic.ValidationError as error:
        raise ConfigError(_explain(error)) from None


def _explain(error: pydantic.ValidationError) -> str:
    lines = []
    for problem in error.errors():
        loc = [str(part) for part in problem["loc"]]
        section = _section_model(loc[:-1])
        if problem["type"] in ("value_error", "assertion_error"):
            where = f" '{'.'.join(loc)}'" if loc else ""  # a rule across sections names its keys itself
            lines.append(f"config{where}: {problem['msg'].removeprefix('Value error, ')}")
            continue
        single = pydantic.ValidationError.from_exception_data(error.title, [problem])
        lines.append(format_validation_error("config", single, section))
    return "\n".join(lines)


def _section_model(loc: list[str]) -> type[pydantic.BaseModel]:
    model: type[pydantic.BaseModel] = RunConfig
    for part in loc:
        field = model.model_fields.get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, pydantic.BaseModel)):
            break
        model = field.annotation
    return model
