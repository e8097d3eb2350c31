"""Build environments: a venv per (interpreter, locked requirements), cached.

Requirements are installed with ``--require-hashes`` from the lock, so the same
bytes are used on every machine whichever index serves them. An environment is
published to its final path only when complete, so an interrupted install is
never reused.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from . import faults
from .errors import BuildError
from .lock import LockedRequirement
from .resolve import platform_tags


def requirements_text(requirements: Sequence[LockedRequirement]) -> str:
    return "".join(r.pip_line() + "\n" for r in sorted(requirements, key=lambda r: r.name))


def env_path(
    python_version: str, requirements: Sequence[LockedRequirement], envs: Path, *, flavour: str
) -> Path:
    """Where the venv for this runner flavour, interpreter and requirement set lives."""
    text = requirements_text(requirements)
    key = hashlib.sha256(f"{flavour}\n{python_version}\n{text}".encode()).hexdigest()[:16]
    return envs / f"py{python_version}-{key}"


def stage_tools(requirements_file: Path, *, manylinux: str, dest: Path) -> None:
    """Stage the builder image's tool wheels (hash-pinned in ``requirements_file``)."""
    dest.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--require-hashes", "--no-deps", "--only-binary=:all:", "-d", str(dest),
            "-r", str(requirements_file)]  # fmt: skip
    for tag in platform_tags(manylinux):
        argv += ["--platform", tag]
    _run(argv, f"download the builder tools in {requirements_file.name} for {manylinux}")


def stage_wheels(
    requirements: Sequence[LockedRequirement], *, python: str, manylinux: str, dest: Path
) -> None:
    """Download the locked wheels for the target's platform into ``dest``, hash-checked.

    A build that runs without network (the container runner) installs from here.
    """
    if not requirements:
        return
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as req_file:
        req_file.write(requirements_text(requirements))
        req_file.flush()
        nodot = python.replace(".", "")
        argv = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                "--require-hashes", "--no-deps", "--only-binary=:all:", "--python-version", python,
                "--implementation", "cp", "--abi", f"cp{nodot}", "--abi", "abi3", "--abi", "none",
                "-d", str(dest), "-r", req_file.name]  # fmt: skip
        for tag in platform_tags(manylinux):
            argv += ["--platform", tag]
        _run(argv, f"download the locked build requirements for {manylinux}")


def build_env(
    python: str,
    python_version: str,
    requirements: Sequence[LockedRequirement],
    final: Path,
    local_wheels: Sequence[Path] = (),
) -> Path:
    """The venv at ``final`` (see :func:`env_path`) with exactly ``requirements``; made on first use."""
    text = requirements_text(requirements)
    if (final / ".complete").exists():
        return final
    # Scripts in a venv hard-code its path, so it is built in place; the marker is
    # written last and a directory without it is discarded and rebuilt.
    if final.exists():
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    req_file = final.parent / f".{final.name}.requirements.txt"
    req_file.write_text(text)
    uv = shutil.which("uv")
    if uv:  # same hashes, same bytes; uv is several times faster than pip here
        _run([uv, "venv", "--quiet", "--seed", "--python", python, str(final)], "create a venv")
        install = [uv, "pip", "install", "--quiet", "--python", str(final / "bin" / "python")]
    else:
        _run([python, "-m", "venv", str(final)], "create a venv")
        install = [
            str(final / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ]
    faults.point("env:partial")
    if requirements:
        _run(
            [*install, "--require-hashes", "--no-deps", "--only-binary=:all:", "-r", str(req_file)],
            "install the locked build requirements",
        )
    if local_wheels:  # the wheelhouse's own builds (e.g. torch for vllm): exactly these files
        _run([*install, "--no-deps", "--no-index", *map(str, local_wheels)],
             "install the needed recipes' wheels from the wheelhouse")  # fmt: skip
    req_file.unlink()
    (final / ".complete").write_text(text)
    return final


def _run(argv: list[str], what: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit code {result.returncode}"
        raise BuildError(f"cannot {what} with {argv[0]}: {reason}")
