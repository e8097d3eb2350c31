"""Patch series: ``patches/<recipe>/<version>/series`` + numbered patches.

Every patch starts with a header saying why it exists (``Why:``) and when it
can be dropped (``Drop-when:``). Patches are checked, then applied, one at a
time in series order; a patch that does not apply is reported with its file
and the hunk that failed.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import PatchError
from .tomlfile import exists, is_file

_HEADER_KEYS = ("why:", "drop-when:")
_FAILED = re.compile(r"error: patch failed: (?P<file>.+):(?P<line>\d+)")
_HUNK = re.compile(r"^@@ -(?P<start>\d+)(?:,\d+)? \+\d+(?:,\d+)? @@")


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


def _failed_hunk(patch: Path, stderr: str) -> str:
    """Name the hunk git reported as failing, e.g. ``CMakeLists.txt @@ -1042,7 +1042,8 @@``."""
    match = _FAILED.search(stderr)
    if not match:
        last = stderr.strip().splitlines()[-1] if stderr.strip() else "git apply failed"
        return last.removeprefix("error: ")
    target, line = match["file"], int(match["line"])
    current: str | None = None
    for text in patch.read_text(encoding="utf-8", errors="replace").splitlines():
        if text.startswith("+++ "):
            current = text[4:].split("\t")[0].removeprefix("b/")
        hunk = _HUNK.match(text)
        if hunk and current == target and int(hunk["start"]) == line:
            return f"hunk '{text.split('@@')[1].strip()}' in {target}"
    return f"hunk at {target}:{line}"


@dataclass(frozen=True)
class ProofOutcome:
    code: int
    last_line: str


def run_proof(patch: Patch, tree: Path) -> ProofOutcome:
    """Run ``patch``'s proof command in ``tree``; its exit code and last output line."""
    assert patch.proof is not None
    argv = [word.replace("{python}", sys.executable).replace("{patch_dir}", str(patch.path.parent))
            for word in shlex.split(patch.proof)]  # fmt: skip
    try:
        done = subprocess.run(argv, cwd=tree, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise PatchError(f"{patch.path}: proof command {argv[0]} not found") from None
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return ProofOutcome(done.returncode, lines[-1] if lines else "(no output)")


def prove_series(series: PatchSeries, source: Path, *, label: str) -> list[str]:
    """Run each proof of ``series`` on a copy of the pristine ``source``: with the patches
    before it applied, it must fail; with the patch too, it must pass. One line each."""
    lines = []
    for patch in (p for p in series.patches if p.proof):
        tree = source.parent / f"prove-{patch.name}"
        shutil.copytree(source, tree, symlinks=True)
        apply_series(series, tree, label=label, upto=patch.name)
        without = run_proof(patch, tree)
        apply_series(PatchSeries(series.directory, (patch,)), tree, label=label)
        with_it = run_proof(patch, tree)
        outcome = (f"without it: {without.last_line} (exit {without.code}); with it: "
                   f"{with_it.last_line} (exit {with_it.code})")  # fmt: skip
        if without.code == 0 or with_it.code != 0:
            raise PatchError(
                f"{patch.path}: its proof must fail without the patch and pass with it; {outcome}"
            )
        lines.append(f"{label} {patch.name}: {outcome}")
    return lines


def apply_series(series: PatchSeries, tree: Path, *, label: str, upto: str | None = None) -> None:
    """Check and apply each patch in order to ``tree`` (those before ``upto`` only, if
    given); ``label`` names recipe and version."""
    # Outside a checkout, git apply must not find an enclosing repository and apply
    # paths relative to it; the ceiling stops the search at the tree itself.
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(tree.resolve().parent)}
    for patch in series.patches:
        if patch.name == upto:
            return
        base = ["git", "apply", "-p1", "--whitespace=nowarn"]
        check = subprocess.run(
            [*base, "--check", "--verbose", str(patch.path)],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
        )
        if check.returncode != 0:
            raise PatchError(
                f"{patch.path}: {_failed_hunk(patch.path, check.stderr)} does not apply to {label}; "
                "refresh the patch against the locked source or drop it from the series"
            )
        subprocess.run([*base, str(patch.path)], cwd=tree, env=env, check=True, capture_output=True)
