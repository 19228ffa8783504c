"""``drpo train --help``: every key of the run config with its default and meaning, read off the sections."""

from __future__ import annotations

import pydantic

from drpo.config.run import RunConfig
from drpo.config.sections import Section
from drpo.validation import describe_fields


def help_text() -> str:
    """Every key with its default and meaning, for `drpo train --help`."""
    lines = []

    def walk(model: type[pydantic.BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, Section):
                walk(annotation, f"{prefix}{name}.")
                continue
            default = field.get_default(call_default_factory=True)
            choices = describe_fields(model).split(", ")
            shown = next((c for c in choices if c.startswith(f"{name}=") and "|" in c), f"{name}={default!r}")
            lines.append(f"  {prefix + shown:<44} {field.description or ''}".rstrip())
            if prefix == "loss." and name == "name":
                lines.append(f"  {'loss.<hyper>=VALUE':<44} a hyper-parameter of the chosen loss (e.g. loss.delta=0.2)")

    walk(RunConfig, "")
    return "\n".join(lines)
