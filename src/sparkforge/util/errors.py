"""User-facing errors.

Every error a user can cause is raised as a :class:`SparkforgeError` whose
message is one line: what is wrong, where (file, key, recipe) and what to do.
The CLI prints it without a traceback and exits with ``exit_code``.
"""

from __future__ import annotations

from collections.abc import Iterable


def telling_line(lines: Iterable[str]) -> str:
    """The line of a tool's output that says what went wrong: the last one naming an
    error, else the last one (docker, for one, ends with "See 'docker run --help'.")."""
    kept = [line.strip() for line in lines if line.strip()]
    errors = [line for line in kept if "error" in line.lower()]
    return (errors or kept or ["no output"])[-1]


class SparkforgeError(Exception):
    """An error caused by input or environment; printed as one line."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))
        self.message = " ".join(message.split())


class ConfigError(SparkforgeError):
    """A target, recipe or CLI argument is invalid."""


class LockError(SparkforgeError):
    """The lock is missing, stale, or does not match what was fetched."""


class SourceError(SparkforgeError):
    """A source could not be fetched or failed verification."""


class PatchError(SparkforgeError):
    """A patch series is malformed or a patch does not apply."""


class BuildError(SparkforgeError):
    """The build command failed (the log tail has been shown)."""

    exit_code = 1


class WheelError(SparkforgeError):
    """Repair, normalization or audit of a wheel failed."""

    exit_code = 1


class WheelhouseError(SparkforgeError):
    """The wheelhouse refused a file (name clash, invalid state)."""


class SmokeError(SparkforgeError):
    """A smoke test failed."""

    exit_code = 1


class PublishError(SparkforgeError):
    """A publish was refused or failed (overwrite, credentials, verification)."""

    exit_code = 1
