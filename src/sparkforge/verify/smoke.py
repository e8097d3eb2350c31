"""Smoke tests: install a wheel by name from the wheelhouse index into a fresh
venv and run the recipe's standalone ``smoke.py`` there.

The wheel comes only from the wheelhouse index (``--index-url``, user pip
configuration ignored), never from PyPI. The script's exit code decides: 0
passed, 77 skipped (no CUDA device), anything else failed. The script learns
the target's arch from ``SPARKFORGE_TARGET_SM`` (e.g. ``121``).
"""

from __future__ import annotations

import email.parser
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from sparkforge.building.containers import check_gpu_runtime
from sparkforge.building.runners import ContainerRunner
from sparkforge.config.targets import Target
from sparkforge.util.errors import SmokeError
from sparkforge.wheelhouse.store import Wheelhouse

SKIPPED = 77


@dataclass(frozen=True)
class SmokeResult:
    status: str  # "passed", "skipped" or "failed"
    exit_code: int
    output: str
    installer: str


def declared_dependencies(house: Wheelhouse, dists: Sequence[str]) -> list[str]:
    """Requires-Dist of the newest wheel of each of ``dists`` (from the .metadata
    sidecars), minus extras-only lines and what the wheelhouse itself provides."""
    provided = {w.project for w in house.wheels()}
    found: list[str] = []
    for dist in dists:
        stored = house.wheels(dist)
        if not stored:
            continue
        message = email.parser.BytesParser().parsebytes(stored[-1].metadata.read_bytes())
        for line in message.get_all("Requires-Dist") or []:
            requirement = Requirement(line)
            if requirement.marker is not None and "extra" in str(requirement.marker):
                continue
            if canonicalize_name(requirement.name) not in provided and line not in found:
                found.append(line)
    return found


def _installer_argv(
    venv_python: Path, index_url: str, requirement: str, extra: list[str],
    also: Sequence[str] = (),
) -> tuple[str, list[list[str]]]:  # fmt: skip
    """Install commands: the wheel (and the wheelhouse builds it needs) from the
    wheelhouse alone, then the smoke requirements."""
    uv = shutil.which("uv")
    if uv:
        base = [uv, "pip", "install", "--python", str(venv_python), "--no-config", "--quiet"]
        steps = [[*base, "--index-url", index_url, "--no-deps", requirement, *also]]
        if extra:
            steps.append([*base, *extra])
        return "uv", steps
    base = [str(venv_python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    steps = [[*base, "--isolated", "--index-url", index_url, "--no-deps", requirement, *also]]
    if extra:
        steps.append([*base, *extra])
    return "pip", steps


def _status(code: int, require_gpu: bool) -> str:
    if code == 0:
        return "passed"
    return "skipped" if code == SKIPPED and not require_gpu else "failed"


#: Exit code of the container smoke script when installing (not the test) failed.
_INSTALL_FAILED = 90


def run_smoke_in_container(*, runner: ContainerRunner, target: Target, script: Path, dist: str,
                           version: str | None, wheelhouse: Path, requires: list[str],
                           require_gpu: bool, scratch: Path,
                           also: Sequence[str] = ()) -> SmokeResult:  # fmt: skip
    """The same smoke test inside the builder image, with the GPUs passed in.

    The wheelhouse is mounted at its own path and used as the only index for the
    wheel; the smoke requirements come from the default index (network on).
    """
    if not Wheelhouse(wheelhouse).wheels(dist):
        raise SmokeError(
            f"{wheelhouse}: no {dist} wheel in the wheelhouse; build it first (nox -s build-…)"
        )
    check_gpu_runtime(runner.engine)
    runner.prepare(target, lambda line: None)
    requirement = f"{dist}=={version}" if version else dist
    index = Wheelhouse(wheelhouse).index_url()
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="smoke-", dir=scratch) as tmp:
        shutil.copy2(script, Path(tmp) / "smoke.py")
        venv = f"{tmp}/venv"
        extra = (
            f"{venv}/bin/pip install -q {shlex.join(requires)} || exit {_INSTALL_FAILED}; "
            if requires
            else ""
        )
        program = (
            f"python3 -m venv {venv} || exit {_INSTALL_FAILED}; "
            f"{venv}/bin/pip install -q --isolated --index-url {index} --no-deps "
            f"{shlex.join([requirement, *also])} "
            f"|| exit {_INSTALL_FAILED}; {extra}exec {venv}/bin/python {tmp}/smoke.py"
        )
        lines: list[str] = []
        code = runner.run(["sh", "-c", program], env={"HOME": tmp, "SPARKFORGE_TARGET_SM":
                          str(target.cuda_archs[0].sm)}, cwd=Path(tmp), sink=lines.append,
                          gpus=True, network=True, extra_mounts=(wheelhouse,))  # fmt: skip
    output = "\n".join(lines) + "\n"
    if code == _INSTALL_FAILED:
        raise SmokeError(
            f"cannot install {requirement} from {index} in {runner.engine.name}: {lines[-1] if lines else 'failed'}"
        )
    return SmokeResult(_status(code, require_gpu), code, output, f"pip in {runner.engine.name}")


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
    also: Sequence[str] = (),
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
        installer, steps = _installer_argv(
            venv_python, house.index_url(), requirement, requires, also
        )
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
    return SmokeResult(_status(ran.returncode, require_gpu), ran.returncode, output, installer)
