"""Running a command, written once: every output line to a sink as it comes, the
command in its own process group so Ctrl-C, SIGTERM and a time limit stop it and
everything it started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

#: Where a command's output lines go, one call per line.
LineSink = Callable[[str], None]
#: Runs a command with an environment somewhere (host or container): exit code and output tail.
Executor = Callable[[list[str], dict[str, str]], tuple[int, list[str]]]


class TimeLimitExceeded(Exception):
    """A command ran past its time limit and was stopped."""


def _stop(process: subprocess.Popen[str], on_stop: Callable[[], None] | None = None) -> None:
    """``on_stop``, then SIGTERM to the command's whole process group (SIGKILL if it
    lingers), then ``on_stop`` once more: a container the engine created only after the
    first call (the client was still starting it) goes too. An interruption of the first
    ``on_stop`` does not skip the kill."""
    try:
        if on_stop is not None:
            on_stop()
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            try:
                process.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue
        if on_stop is not None:
            on_stop()


def stream(
    argv: list[str], *, env: dict[str, str] | None, cwd: Path | None, sink: LineSink,
    timeout: float | None = None, on_stop: Callable[[], None] | None = None,
) -> int:  # fmt: skip
    """Run ``argv``, every output line to ``sink``; Ctrl-C (and SIGTERM/SIGHUP, which the
    CLI turns into it) and the time limit stop the child and everything it started (its
    own process group), after ``on_stop`` (a container runner removes its container)."""
    process = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, bufsize=1, text=True, errors="replace", start_new_session=True,
    )  # fmt: skip
    stdout = process.stdout
    assert stdout is not None

    def pump() -> None:
        for line in stdout:
            sink(line.rstrip("\n"))

    reader = threading.Thread(target=pump)
    reader.start()
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(process, on_stop)
        raise TimeLimitExceeded from None
    except KeyboardInterrupt:
        _stop(process, on_stop)
        raise
    finally:
        reader.join()


def stream_tail(
    argv: Sequence[str], *, env: dict[str, str] | None, sink: LineSink | None, keep: int
) -> tuple[int, list[str]]:
    """:func:`stream`, also returning the last ``keep`` output lines."""
    tail: list[str] = []

    def both(line: str) -> None:
        tail.append(line)
        del tail[:-keep]
        if sink is not None:
            sink(line)

    return stream(list(argv), env=env, cwd=None, sink=both), tail
