"""Apply a patch series to a source tree, one patch at a time in series order; a patch
that does not apply is reported with its file and the hunk that failed. Proofs: each
patch's check command must fail without it and pass with it."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from sparkforge.config.patches import Patch, PatchSeries
from sparkforge.util.errors import PatchError

_FAILED = re.compile(r"error: patch failed: (?P<file>.+):(?P<line>\d+)")


_HUNK = re.compile(r"^@@ -(?P<start>\d+)(?:,\d+)? \+\d+(?:,\d+)? @@")


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
