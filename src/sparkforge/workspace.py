"""The workspace: one directory holding every cache and scratch area.

Default ``$XDG_CACHE_HOME/sparkforge`` (``~/.cache/sparkforge``); override with
``--workspace`` or ``SPARKFORGE_WORKSPACE``. Nothing in it is precious: it can
be deleted at any time and is rebuilt from the lock.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs


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
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.history_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self.history_file)
