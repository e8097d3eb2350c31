"""Progress and logs for long work.

Every line of every step goes to one log file. On a terminal the current phase
shows live (elapsed, expected from the previous build, last output line);
elsewhere (CI) a line per phase plus a heartbeat every minute. A failure prints
the log tail and the log path.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.markup import escape

from sparkforge.util import faults

TAIL_LINES = 40
HEARTBEAT_SECONDS = 60.0


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class BuildLog:
    """A log file plus the console view of it."""

    def __init__(self, path: Path, console: Console, expected: dict[str, float]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.console = console
        self.expected = expected
        self.durations: dict[str, float] = {}
        self._file: TextIO = path.open("w", encoding="utf-8", errors="replace")
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._lock = threading.Lock()
        self._last = ""

    def close(self) -> None:
        self._file.close()

    def line(self, text: str) -> None:
        """One line of tool output: into the log, the tail and the live view."""
        with self._lock:
            self._file.write(text + "\n")
            self._file.flush()
            self._tail.append(text)
            if text.strip():
                self._last = text.strip()

    def note(self, text: str) -> None:
        """A pipeline message: shown and logged."""
        self.line(f"[sparkforge] {text}")
        self.console.print(f"  {escape(text)}", highlight=False)

    def tail(self) -> list[str]:
        with self._lock:
            return list(self._tail)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time one phase; show it live and remember its duration."""
        expected = self.expected.get(name)
        hint = f" (last time {_clock(expected)})" if expected else ""
        self.line(f"[sparkforge] phase {name} started")
        faults.point(f"phase:{name}")
        start = time.monotonic()
        stop = threading.Event()
        if self.console.is_terminal:
            status = self.console.status(f"{name}{hint}")
            status.start()

            def refresh() -> None:
                while not stop.wait(0.5):
                    elapsed = _clock(time.monotonic() - start)
                    last = escape(self._last[-90:])
                    status.update(f"[bold]{name}[/] {elapsed}{hint}  [dim]{last}[/]")

            watcher = threading.Thread(target=refresh, daemon=True)
        else:
            status = None
            self.console.print(f"▶ {name}{hint}", highlight=False)

            def heartbeat() -> None:
                while not stop.wait(HEARTBEAT_SECONDS):
                    elapsed = _clock(time.monotonic() - start)
                    self.console.print(
                        f"  … {name} {elapsed}: {self._last[-100:]}", highlight=False, markup=False
                    )

            watcher = threading.Thread(target=heartbeat, daemon=True)
        watcher.start()
        ok = False
        try:
            yield
            ok = True
        finally:
            stop.set()
            watcher.join()
            if status is not None:
                status.stop()
            seconds = time.monotonic() - start
            self.durations[name] = round(seconds, 3)
            mark = "[green]✓[/]" if ok else "[red]✗[/]"
            self.console.print(f"{mark} {name} {seconds:.1f} s{hint}", highlight=False)
            self.line(f"[sparkforge] phase {name} {'done' if ok else 'failed'} in {seconds:.1f} s")

    def show_failure(self) -> None:
        """Print the log tail and where the whole log is."""
        self.console.print(f"[red]last {TAIL_LINES} lines of the log:[/]")
        for text in self.tail():
            self.console.print(f"  {text}", highlight=False, markup=False)
        self.console.print(f"full log: {self.path}", highlight=False, markup=False)
