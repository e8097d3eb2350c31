"""Validated pydantic models read from TOML files, with one-line errors.

Every model that is read from a file goes through :func:`load_model`, so a
malformed file, an unknown key, a wrong type or a missing field is reported the
same way everywhere: ``<file>: key '<dotted.key>': <what was expected>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from sparkforge.util.errors import ConfigError
from sparkforge.util.tomlfile import read_toml

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every file-backed model: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def describe_validation_error(path: Path, exc: ValidationError) -> str:
    """Turn pydantic's first error into ``file: key 'a.b': expected …``."""
    err = exc.errors()[0]
    key = ".".join(str(part) for part in err["loc"]) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        detail = "unknown key; remove it or check its spelling"
    elif kind == "missing":
        detail = "missing required key"
    elif kind == "value_error":
        detail = err["msg"].removeprefix("Value error, ")
    else:
        got = err.get("input")
        got_text = f" (got {type(got).__name__} {got!r})" if got is not None else ""
        message = err["msg"].rstrip(".")
        detail = f"{message[:1].lower()}{message[1:]}{got_text}"
    return f"{path}: key '{key}': {detail}"


def load_model(model: type[M], path: Path, *, what: str, data: dict[str, Any] | None = None) -> M:
    """Validate ``data`` (or the TOML at ``path``) against ``model``."""
    raw = read_toml(path, what=what) if data is None else data
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(path, exc)) from None
