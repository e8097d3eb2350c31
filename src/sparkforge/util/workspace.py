"""The workspace: one directory holding every cache and scratch area.

Default ``$XDG_CACHE_HOME/sparkforge`` (``~/.cache/sparkforge``); override with
``--workspace`` or ``SPARKFORGE_WORKSPACE``. Nothing in it is precious: it can
be deleted at any time and is rebuilt from the lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import platformdirs

from sparkforge.util.errors import SparkforgeError
from sparkforge.util.files import write_atomic


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def locate(cls, override: Path | None = None) -> Workspace:
        env = os.environ.get("SPARKFORGE_WORKSPACE")
        root = override or (Path(env) if env else Path(platformdirs.user_cache_dir("sparkforge")))
        return cls(root.expanduser().resolve())

    @property
    def git_mirrors(self) -> Path:
        return self.root / "git"

    def download_path(self, url: str) -> Path:
        """Where the archive downloaded from ``url`` is kept (fetched, or from a bundle)."""
        name = PurePosixPath(url.split("?")[0]).name or "archive"
        return self.downloads / hashlib.sha256(url.encode()).hexdigest()[:16] / name

    def git_mirror(self, url: str) -> Path:
        """Where the bare mirror of ``url`` lives (fetched, or seeded from a bundle)."""
        return self.git_mirrors / (hashlib.sha256(url.encode()).hexdigest()[:16] + ".git")

    @property
    def bundle_wheels(self) -> Path | None:
        """The locked build requirements of a bundle this workspace was seeded from."""
        path = self.root / "bundle-wheels"
        return path if path.is_dir() else None

    def bundle_need(self, key: str) -> Path | None:
        """A bundle's copy of the wheel a needed recipe's build with ``key`` published."""
        found = sorted((self.root / "bundle-needs" / key).glob("*.whl"))
        return found[0] if found else None

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    @property
    def builds(self) -> Path:
        return self.root / "builds"

    @property
    def envs(self) -> Path:
        return self.root / "envs"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def ccache(self) -> Path:
        return self.root / "ccache"

    @property
    def history_file(self) -> Path:
        return self.root / "history.json"

    @contextmanager
    def exclusive(self, *, wait: bool, note: Callable[[str], None]) -> Iterator[None]:
        """Hold the workspace for one run: a second run waits (or, with ``wait=False``,
        fails), so two runs never interleave in the same caches and build trees."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / ".lock"
        with path.open("a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = path.read_text().strip() or "another sparkforge run"
                if not wait:
                    raise SparkforgeError(
                        f"{self.root}: workspace in use by {holder}; wait for it to finish, "
                        "or use another --workspace"
                    ) from None
                note(f"waiting for {holder} to finish with workspace {self.root} …")
                fcntl.flock(handle, fcntl.LOCK_EX)
            handle.seek(0)
            handle.truncate()
            handle.write(f"sparkforge pid {os.getpid()}")
            handle.flush()
            try:
                yield
            finally:
                handle.seek(0)
                handle.truncate()
                fcntl.flock(handle, fcntl.LOCK_UN)

    def expected_seconds(self, key: str) -> dict[str, float]:
        """Phase durations of the previous build of ``key`` (recipe@target)."""
        try:
            data = json.loads(self.history_file.read_text())
        except (OSError, ValueError):
            return {}
        value = data.get(key, {})
        return {str(k): float(v) for k, v in value.items()} if isinstance(value, dict) else {}

    def record_durations(self, key: str, durations: dict[str, float]) -> None:
        try:
            data = json.loads(self.history_file.read_text())
        except (OSError, ValueError):
            data = {}
        data[key] = durations
        write_atomic(self.history_file, json.dumps(data, indent=1, sort_keys=True).encode())


def wheelhouse_dir(chosen: Path | None, project: Path) -> Path:
    """The wheelhouse a command works on: ``--wheelhouse``, else ``<project>/wheelhouse``."""
    return (chosen or project / "wheelhouse").resolve()
