"""Load TOML files into validated pydantic models with one-line errors.

Every model that is read from a file goes through :func:`load_model`, so a
malformed file, an unknown key, a wrong type or a missing field is reported the
same way everywhere: ``<file>: key '<dotted.key>': <what was expected>``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every file-backed model: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def read_toml(path: Path, *, what: str) -> dict[str, Any]:
    """Parse ``path`` as TOML; a missing or malformed file is a ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what} file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        return parse_toml(text)
    except ValueError as exc:
        raise ConfigError(f"{path}: malformed TOML ({exc}); fix the syntax") from None


def parse_toml(text: str) -> dict[str, Any]:
    """tomllib.loads, with nesting too deep for its recursive parser reported as ValueError
    (TOMLDecodeError is one) rather than RecursionError."""
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def is_file(path: Path) -> bool:
    """``path.is_file()``, but a name the OS refuses to look up (too long, a NUL byte) is
    no file rather than an exception: such a name comes from a user and is "not found"."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def exists(path: Path) -> bool:
    """``path.exists()`` with the same treatment of names the OS refuses as :func:`is_file`."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


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
