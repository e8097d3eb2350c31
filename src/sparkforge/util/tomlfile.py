"""Read TOML files with one-line errors (no pydantic here: start-up stays light).

Validation into models is :mod:`models`; both report problems the same way:
``<file>: key '<dotted.key>': <what was expected>``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from sparkforge.util.errors import ConfigError


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
