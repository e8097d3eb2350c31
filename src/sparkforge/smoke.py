"""Smoke tests: install a wheel by name from the wheelhouse index into a fresh
venv and run the recipe's standalone ``smoke.py`` there.

The wheel comes only from the wheelhouse index (``--index-url``, user pip
configuration ignored), never from PyPI. The script's exit code decides: 0
passed, 77 skipped (no CUDA device), anything else failed. The script learns
the target's arch from ``SPARKFORGE_TARGET_SM`` (e.g. ``121``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import SmokeError
from .index import Wheelhouse

SKIPPED = 77


@dataclass(frozen=True)
class SmokeResult:
    status: str  # "passed", "skipped" or "failed"
    exit_code: int
    output: str
    installer: str


def _installer_argv(
    venv_python: Path, index_url: str, requirement: str, extra: list[str]
) -> tuple[str, list[list[str]]]:
    """Install commands: the wheel from the wheelhouse alone, then the smoke requirements."""
    uv = shutil.which("uv")
    if uv:
        base = [uv, "pip", "install", "--python", str(venv_python), "--no-config", "--quiet"]
        steps = [[*base, "--index-url", index_url, "--no-deps", requirement]]
        if extra:
            steps.append([*base, *extra])
        return "uv", steps
    base = [str(venv_python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    steps = [[*base, "--isolated", "--index-url", index_url, "--no-deps", requirement]]
    if extra:
        steps.append([*base, *extra])
    return "pip", steps


def run_smoke(
    *,
    script: Path,
    dist: str,
    version: str | None,
    wheelhouse: Path,
    python: str,
    requires: list[str],
    require_gpu: bool,
    target_sm: int,
) -> SmokeResult:
    """Create a venv, install ``dist`` from the wheelhouse index, run ``script``."""
    if not script.is_file():
        raise SmokeError(f"{script}: smoke script not found; every recipe needs one")
    house = Wheelhouse(wheelhouse)
    if not house.wheels(dist):
        raise SmokeError(
            f"{wheelhouse}: no {dist} wheel in the wheelhouse; build it first (nox -s build-…)"
        )
    requirement = f"{dist}=={version}" if version else dist
    with tempfile.TemporaryDirectory(prefix="sparkforge-smoke-") as tmp:
        venv = Path(tmp) / "venv"
        made = subprocess.run([python, "-m", "venv", str(venv)], capture_output=True, text=True)
        if made.returncode != 0:
            raise SmokeError(f"cannot create a venv with {python}: {made.stderr.strip()[-200:]}")
        venv_python = venv / "bin" / "python"
        installer, steps = _installer_argv(venv_python, house.index_url(), requirement, requires)
        for argv in steps:
            done = subprocess.run(argv, capture_output=True, text=True)
            if done.returncode != 0:
                lines = [line for line in done.stderr.splitlines() if line.strip()]
                raise SmokeError(
                    f"cannot install {requirement} from {house.index_url()}: {lines[-1] if lines else 'failed'}"
                )
        # The script compares the device with the target: on another GPU it runs
        # its generic checks and says so ("other GPU mode").
        env = {**os.environ, "SPARKFORGE_TARGET_SM": str(target_sm)}
        ran = subprocess.run(
            [str(venv_python), str(script)], capture_output=True, text=True, cwd=tmp, env=env
        )
    output = ran.stdout + ran.stderr
    if ran.returncode == 0:
        status = "passed"
    elif ran.returncode == SKIPPED and not require_gpu:
        status = "skipped"
    else:
        status = "failed"
    return SmokeResult(status, ran.returncode, output, installer)
