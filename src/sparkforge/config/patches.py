"""Patch series: ``patches/<recipe>/<version>/series`` + numbered patches.

Every patch starts with a header saying why it exists (``Why:``) and when it
can be dropped (``Drop-when:``). Patches are checked, then applied, one at a
time in series order; a patch that does not apply is reported with its file
and the hunk that failed.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from sparkforge.util.errors import PatchError
from sparkforge.util.tomlfile import exists, is_file

_HEADER_KEYS = ("why:", "drop-when:")


@dataclass(frozen=True)
class Patch:
    name: str
    path: Path
    sha256: str
    why: str
    # A command that fails without the patch and passes with it (header ``Proof:``), run in
    # the source tree; ``{python}`` and ``{patch_dir}`` are filled in.
    proof: str | None = None


@dataclass(frozen=True)
class PatchSeries:
    directory: Path
    patches: tuple[Patch, ...]


def _header(text: str) -> str:
    """The part of a patch before the first diff."""
    return re.split(r"^(?:diff --git |--- )", text, maxsplit=1, flags=re.MULTILINE)[0]


def load_series(project: Path, recipe: str, version: str) -> PatchSeries:
    """Read the series for a recipe version; no directory means no patches."""
    directory = project / "patches" / recipe / version
    series_file = directory / "series"
    if not exists(directory):
        return PatchSeries(directory, ())
    if not is_file(series_file):
        raise PatchError(
            f"{directory}: patch directory without a 'series' file; list the patches in order there"
        )
    patches = []
    listed: set[str] = set()
    try:
        lines = series_file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise PatchError(
            f"{series_file}: not UTF-8 text ({exc.reason} at byte {exc.start}); "
            "list one patch file name per line"
        ) from None
    for number, raw in enumerate(lines, start=1):
        name = raw.split("#", 1)[0].strip()
        if not name:
            continue
        path = directory / name
        if "/" in name or not is_file(path):
            raise PatchError(f"{series_file}:{number}: patch '{name}' not found in {directory}")
        if name in listed:
            raise PatchError(f"{series_file}:{number}: patch '{name}' is listed twice")
        listed.add(name)
        data = path.read_bytes()
        header = _header(data.decode("utf-8", errors="replace"))
        # Header lines, not words anywhere: "explains why: …" is no Why: line.
        starts = [line.lstrip().lower() for line in header.splitlines()]
        missing = [key for key in _HEADER_KEYS if not any(s.startswith(key) for s in starts)]
        if missing:
            raise PatchError(
                f"{path}: header lacks {' and '.join(repr(k.title()) for k in missing)}; "
                "say why the patch exists and when it can be dropped"
            )
        why = next(line for line in header.splitlines() if line.lower().lstrip().startswith("why:"))
        proof = next((line.split(":", 1)[1].strip() for line in header.splitlines()
                      if line.lower().lstrip().startswith("proof:")), None)  # fmt: skip
        patches.append(
            Patch(name, path, hashlib.sha256(data).hexdigest(), why.split(":", 1)[1].strip(), proof)
        )
    unlisted = sorted(p.name for p in directory.glob("*.patch") if p.name not in listed)
    if unlisted:
        raise PatchError(
            f"{series_file}: {unlisted[0]} is in {directory} but not in the series; list it or delete it"
        )
    return PatchSeries(directory, tuple(patches))
