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

from sparkforge.config.targets import platform_tags
from sparkforge.locking.lockfile import LockedRequirement
from sparkforge.util import faults
from sparkforge.util.errors import BuildError


def requirements_text(requirements: Sequence[LockedRequirement]) -> str:
    return "".join(r.pip_line() + "\n" for r in sorted(requirements, key=lambda r: r.name))


def env_contents(requirements: Sequence[LockedRequirement], local_wheels: Sequence[Path]) -> str:
    """What a complete venv holds (its ``.complete`` marker): a venv with other contents,
    e.g. other wheels from the wheelhouse, is rebuilt rather than reused."""
    return requirements_text(requirements) + "".join(f"{p.name}\n" for p in sorted(local_wheels))


def is_complete(final: Path, contents: str) -> bool:
    marker = final / ".complete"
    return marker.is_file() and marker.read_text() == contents


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


def _download_for(python: str, manylinux: str, dest: Path) -> list[str]:
    """``pip download`` of binary wheels into ``dest`` for another machine: the target's
    CPython (its own ABI, the stable ABI or none) and every manylinux tag it accepts."""
    nodot = python.replace(".", "")
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--only-binary=:all:", "--python-version", python, "--implementation", "cp",
            "--abi", f"cp{nodot}", "--abi", "abi3", "--abi", "none", "-d", str(dest)]  # fmt: skip
    for tag in platform_tags(manylinux):
        argv += ["--platform", tag]
    return argv


def stage_wheels(
    requirements: Sequence[LockedRequirement],
    *,
    python: str,
    manylinux: str,
    dest: Path,
    find_links: Path | None = None,
) -> None:
    """Download the locked wheels for the target's platform into ``dest``, hash-checked
    (from ``find_links`` alone when given: a bundle's wheels).

    A build that runs without network (the container runner) installs from here.
    """
    if not requirements:
        return
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as req_file:
        req_file.write(requirements_text(requirements))
        req_file.flush()
        argv = [*_download_for(python, manylinux, dest), "--require-hashes", "--no-deps",
                "-r", req_file.name]  # fmt: skip
        if find_links is not None:
            argv += ["--no-index", "--find-links", str(find_links)]
        _run(argv, f"download the locked build requirements for {manylinux}")


def upstream_wheels(
    dist: str, version: str, *, python: str, manylinux: str, dest: Path
) -> list[Path]:
    """Upstream's published wheel of ``dist`` ``version`` for the target (PyPI), with the
    wheels of what it declares (Requires-Dist), downloaded once into ``dest``. Only a
    preflight that asks for it uses this; these are not locked, and the log says so."""
    where = dest / f"{dist}-{version}-py{python}-{manylinux}"
    marker = where / ".complete"
    if not marker.exists():
        shutil.rmtree(where, ignore_errors=True)
        where.mkdir(parents=True)
        _run(
            [*_download_for(python, manylinux, where), f"{dist}=={version}"],
            f"download upstream's {dist} {version} wheel for {manylinux}",
        )
        marker.write_text("")
    found = sorted(where.glob("*.whl"))
    if not any(p.name.startswith(f"{dist.replace('-', '_')}-{version}") for p in found):
        raise BuildError(f"upstream publishes no {dist} {version} wheel for {manylinux}")
    return found


def build_env(
    python: str,
    python_version: str,
    requirements: Sequence[LockedRequirement],
    final: Path,
    local_wheels: Sequence[Path] = (),
    site_dirs: Sequence[str] = (),
    find_links: Path | None = None,
) -> Path:
    """The venv at ``final`` (see :func:`env_path`) with exactly ``requirements``; made on first use."""
    text = requirements_text(requirements)
    contents = env_contents(requirements, local_wheels) + "".join(f"{d}\n" for d in site_dirs)
    if is_complete(final, contents):
        return final
    # Scripts in a venv hard-code its path, so it is built in place; the marker is
    # written last and a directory without it is discarded and rebuilt.
    if final.exists():
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    req_file = final.parent / f".{final.name}.requirements.txt"
    req_file.write_text(text)
    uv = shutil.which("uv")
    if uv and find_links is not None:  # offline: --seed would download pip, which no build uses
        _run([uv, "venv", "--quiet", "--python", python, str(final)], "create a venv")
        install = [uv, "pip", "install", "--quiet", "--python", str(final / "bin" / "python")]
    elif uv:  # same hashes, same bytes; uv is several times faster than pip here
        _run([uv, "venv", "--quiet", "--seed", "--python", python, str(final)], "create a venv")
        install = [uv, "pip", "install", "--quiet", "--python", str(final / "bin" / "python")]
    elif find_links is not None:  # offline without uv: no ensurepip needed, this pip installs
        _run([python, "-m", "venv", "--without-pip", str(final)], "create a venv")
        install = [sys.executable, "-m", "pip", "--python", str(final / "bin" / "python"),
                   "install", "--quiet", "--disable-pip-version-check"]  # fmt: skip
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
        # From a bundle's wheels alone (no index) when given one; hashes are checked either way.
        source = ["--no-index", "--find-links", str(find_links)] if find_links else []
        _run(
            [*install, *source, "--require-hashes", "--no-deps", "--only-binary=:all:", "-r",
             str(req_file)],
            "install the locked build requirements",
        )  # fmt: skip
    if local_wheels:  # the wheelhouse's own builds (e.g. torch for vllm): exactly these files
        _run([*install, "--no-deps", "--no-index", *map(str, local_wheels)],
             "install the needed recipes' wheels from the wheelhouse")  # fmt: skip
    if site_dirs:  # after the venv's own site-packages, so the locked requirements win
        (site,) = final.glob("lib/python*/site-packages")
        (site / "_sparkforge_installed_needs.pth").write_text("".join(f"{d}\n" for d in site_dirs))
    req_file.unlink()
    (final / ".complete").write_text(contents)
    return final


def _run(argv: list[str], what: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit code {result.returncode}"
        raise BuildError(f"cannot {what} with {argv[0]}: {reason}")
