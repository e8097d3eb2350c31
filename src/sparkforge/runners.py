"""Runners execute build steps; a recipe never knows which one it gets.

The host runner runs commands here with subprocess. It can only build for a
target whose platform is this machine's; anything else is refused with the
alternative named (the container runner builds other platforms).
"""

from __future__ import annotations

import glob
import os
import platform
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .errors import ConfigError
from .targets import Target

LineSink = Callable[[str], None]


class Runner(Protocol):
    name: str

    def check(self, target: Target) -> None:
        """Raise ConfigError when this runner cannot build for ``target`` here."""

    def identity(self, target: Target) -> dict[str, str]:
        """What about the runner decides the output (part of the build key)."""

    def python(self, version: str) -> str:
        """Path of an interpreter of ``version`` (e.g. "3.12") where commands run."""

    def run(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, sink: LineSink) -> int:
        """Run ``argv``; every output line goes to ``sink``; returns the exit code."""


def _output(argv: Sequence[str]) -> str:
    """stdout of a successful command, "" if it cannot run or fails."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def _last_line(argv: Sequence[str]) -> str:
    lines = _output(argv).splitlines()
    return lines[-1] if lines else ""


def nvcc_version(cuda_home: str) -> str | None:
    """``13.0.88`` for the nvcc under ``cuda_home``, or None when there is none."""
    nvcc = Path(cuda_home) / "bin" / "nvcc"
    if not nvcc.exists():
        return None
    text = _output([str(nvcc), "--version"])
    match = re.search(r"V(\d+\.\d+\.\d+)", text)
    return match[1] if match else None


@dataclass
class HostRunner:
    """Runs build steps on this machine."""

    name: str = "host"
    _pythons: dict[str, str] = field(default_factory=dict)

    def check(self, target: Target) -> None:
        machine = platform.machine()
        if machine != target.machine:
            raise ConfigError(
                f"--target {target.name}: the host runner on this {machine} machine cannot build "
                f"{target.platform} wheels; build on an {target.machine} machine (e.g. the DGX Spark "
                f"itself) or use the container runner with emulation"
            )
        found = nvcc_version(target.cuda_home)
        if found is None:
            raise ConfigError(
                f"{target.path}: key 'cuda_home': no nvcc at {target.cuda_home}/bin/nvcc; install "
                f"the CUDA {target.cuda_version} toolkit there or point cuda_home at it"
            )
        if not found.startswith(target.cuda_version + "."):
            raise ConfigError(
                f"{target.path}: key 'cuda_version': target needs CUDA {target.cuda_version} but "
                f"{target.cuda_home}/bin/nvcc is {found}; install CUDA {target.cuda_version} there"
            )

    def identity(self, target: Target) -> dict[str, str]:
        gcc = _last_line(["gcc", "-dumpfullversion"])
        return {
            "runner": self.name,
            "machine": platform.machine(),
            "nvcc": nvcc_version(target.cuda_home) or "",
            "gcc": gcc,
            "python": self._version_of(self.python(target.python)),
        }

    def python(self, version: str) -> str:
        if version not in self._pythons:
            self._pythons[version] = find_python(version)
        return self._pythons[version]

    @staticmethod
    def _version_of(python: str) -> str:
        return _last_line([python, "-c", "import platform; print(platform.python_version())"])

    def run(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, sink: LineSink) -> int:
        process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            bufsize=1,
            text=True,
            errors="replace",
        )
        stdout = process.stdout
        assert stdout is not None

        def pump() -> None:
            for line in stdout:
                sink(line.rstrip("\n"))

        reader = threading.Thread(target=pump)
        reader.start()
        try:
            code = process.wait()
        except KeyboardInterrupt:
            process.terminate()
            process.wait()
            raise
        finally:
            reader.join()
        return code


def find_python(version: str) -> str:
    """An interpreter that really is Python ``version``.

    Looked up as ``SPARKFORGE_PYTHON`` (if it is that version), ``python<version>`` on
    PATH, pyenv's and uv's installs. A pyenv shim that refuses to run is skipped.
    """
    candidates = [os.environ.get("SPARKFORGE_PYTHON", ""), shutil.which(f"python{version}") or ""]
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates += sorted(
        glob.glob(str(pyenv_root / "versions" / f"{version}.*" / "bin" / f"python{version}")),
        reverse=True,
    )
    if shutil.which("uv"):
        candidates.append(_last_line(["uv", "python", "find", "--no-project", version]))
    for candidate in filter(None, candidates):
        found = _last_line([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        if found == version:
            return str(Path(candidate).absolute())
    raise ConfigError(
        f"target needs Python {version} and none was found (looked at SPARKFORGE_PYTHON, "
        f"python{version} on PATH, pyenv, uv); install it or set SPARKFORGE_PYTHON to its path"
    )
