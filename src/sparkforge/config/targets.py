"""Targets: where wheels will run (platform, CUDA, GPU arch, Python, manylinux policy).

A target is one file, ``targets/<name>.toml``. ``dgx-spark`` is the default;
``hopper`` lets the pipeline be proven on the H100/H200 machines.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sparkforge.config.archs import CudaArch, check_arch, parse_arch
from sparkforge.util.errors import ConfigError
from sparkforge.util.tomlfile import is_file, read_toml

if TYPE_CHECKING:
    from packaging.tags import Tag

DEFAULT_TARGET = "dgx-spark"
_PLATFORMS = ("linux_aarch64", "linux_x86_64")


@dataclass(frozen=True)
class MachineSpec:
    """The reference machine of a target: sizes the job count shown in plans."""

    cores: int
    memory_gb: float  # usable by builds (after the OS)
    source: str  # where the figures come from


class _Reader:
    """Checks one target file's keys and types; every problem is one ``file: key 'k': …`` line.

    Written out rather than a pydantic model so that a command that only needs a
    target (``sparkforge inspect``) starts without importing pydantic.
    """

    def __init__(self, path: Path, data: dict[str, object]) -> None:
        self.path = path
        self.data = data

    def fail(self, key: str, detail: str) -> ConfigError:
        return ConfigError(f"{self.path}: key '{key}': {detail}")

    def text(self, key: str, *, pattern: str | None = None, default: str | None = None) -> str:
        value = self.data.get(key, default)
        if value is None:
            raise self.fail(key, "missing required key")
        if not isinstance(value, str):
            raise self.fail(
                key, f"input should be a valid string (got {type(value).__name__} {value!r})"
            )
        if pattern is not None and not re.fullmatch(pattern, value):
            raise self.fail(key, f"string should match pattern '{pattern}' (got str {value!r})")
        return value

    def texts(self, key: str, *, required: bool) -> list[str]:
        value = self.data.get(key)
        if value is None:
            if required:
                raise self.fail(key, "missing required key")
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(
                key, f"input should be a list of strings (got {type(value).__name__} {value!r})"
            )
        if required and not value:
            raise self.fail(key, "list should have at least 1 item after validation, not 0")
        return value

    def machine(self, key: str) -> MachineSpec | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.fail(key, f"input should be a table (got {type(value).__name__} {value!r})")
        unknown = sorted(set(value) - {"cores", "memory_gb", "source"})
        if unknown:
            raise self.fail(f"{key}.{unknown[0]}", "unknown key; remove it or check its spelling")
        cores, memory, source = value.get("cores"), value.get("memory_gb"), value.get("source")
        if not isinstance(cores, int) or isinstance(cores, bool) or cores < 1:
            raise self.fail(f"{key}.cores", f"input should be an integer >= 1 (got {cores!r})")
        if (not isinstance(memory, int | float) or isinstance(memory, bool) or memory <= 0
                or memory != memory or memory == float("inf")):  # fmt: skip
            raise self.fail(
                f"{key}.memory_gb", f"input should be a finite number > 0 (got {memory!r})"
            )
        if not isinstance(source, str):
            raise self.fail(f"{key}.source", "missing required key" if source is None else
                            f"input should be a valid string (got {source!r})")  # fmt: skip
        return MachineSpec(cores=cores, memory_gb=float(memory), source=source)


_KEYS = {
    "name", "description", "platform", "cuda_version", "cuda_archs", "python", "manylinux",
    "builder_image", "cuda_home", "repair_exclude", "reference_machine",
}  # fmt: skip


@dataclass(frozen=True)
class Target:
    """A validated target, with archs parsed."""

    name: str
    description: str
    platform: str
    machine: str
    cuda_version: str
    cuda_archs: tuple[CudaArch, ...]
    python: str
    manylinux: str
    builder_image: str
    cuda_home: str
    repair_exclude: tuple[str, ...]
    path: Path
    reference_machine: MachineSpec | None = None  # not part of the identity: sizes plans only

    @property
    def cuda_major(self) -> int:
        return int(self.cuda_version.split(".")[0])

    @property
    def cuda_nodot(self) -> str:
        return self.cuda_version.replace(".", "")

    @property
    def multiarch(self) -> str:
        """The Debian multiarch triple of the target machine (``aarch64-linux-gnu``)."""
        return f"{self.machine}-linux-gnu"

    def identity(self) -> dict[str, object]:
        """What about the target decides the output (goes into the build key)."""
        return {
            "name": self.name,
            "platform": self.platform,
            "cuda_version": self.cuda_version,
            "cuda_archs": [a.cmake for a in self.cuda_archs],
            "python": self.python,
            "manylinux": self.manylinux,
            "builder_image": self.builder_image,
            "cuda_home": self.cuda_home,
            "repair_exclude": list(self.repair_exclude),
        }


def available_targets(project: Path) -> list[str]:
    return sorted(p.stem for p in (project / "targets").glob("*.toml"))


def load_target(project: Path, name: str) -> Target:
    """Load ``targets/<name>.toml`` from the project directory."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name):
        raise ConfigError(f"--target: '{name}' is not a valid target name")
    path = project / "targets" / f"{name}.toml"
    if not is_file(path):
        names = available_targets(project)
        known = ", ".join(names) or "none"
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(
            f"--target: no target '{name}' ({path} not found); {hint}known targets: {known}"
        )
    data = read_toml(path, what="target")
    reader = _Reader(path, data)
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise reader.fail(unknown[0], "unknown key; remove it or check its spelling")
    target_name = reader.text("name")
    description = reader.text("description")
    platform = reader.text("platform")
    if platform not in _PLATFORMS:
        raise reader.fail(
            "platform", f"input should be 'linux_aarch64' or 'linux_x86_64' (got str {platform!r})"
        )
    cuda_version = reader.text("cuda_version", pattern=r"^\d+\.\d+$")
    archs = reader.texts("cuda_archs", required=True)
    for item in archs:
        try:
            check_arch(item)
        except ValueError as error:
            raise reader.fail("cuda_archs", str(error)) from None
    python = reader.text("python", pattern=r"^3\.\d+$")
    manylinux = reader.text("manylinux", pattern=r"^manylinux_\d+_\d+_(aarch64|x86_64)$")
    builder_image = reader.text("builder_image")
    cuda_home = reader.text("cuda_home", default="/usr/local/cuda")
    # Looked up on disk and in the builder image: a path the OS can resolve from anywhere.
    if not cuda_home.startswith("/") or any(len(p.encode()) > 255 for p in cuda_home.split("/")):
        raise reader.fail(
            "cuda_home", f"'{cuda_home}' is not an absolute path; write e.g. '/usr/local/cuda'"
        )
    repair_exclude = reader.texts("repair_exclude", required=False)
    reference_machine = reader.machine("reference_machine")
    machine = platform.removeprefix("linux_")
    if not manylinux.endswith(machine):
        raise reader.fail(
            "(top level)", f"manylinux policy {manylinux} is not for platform {platform}"
        )
    if target_name != name:
        raise ConfigError(
            f"{path}: key 'name': is '{target_name}' but the file is named '{name}.toml'"
        )
    return Target(
        name=target_name,
        description=description,
        platform=platform,
        machine=machine,
        cuda_version=cuda_version,
        cuda_archs=tuple(parse_arch(a, where=f"{path}: key 'cuda_archs'") for a in archs),
        python=python,
        manylinux=manylinux,
        builder_image=builder_image,
        cuda_home=cuda_home,
        repair_exclude=tuple(repair_exclude),
        path=path,
        reference_machine=reference_machine,
    )


def marker_environment(target: Target) -> dict[str, str]:
    """PEP 508 marker values of the target's interpreter (evaluating requirements' markers
    for the target, not for this machine)."""
    return {
        "python_version": target.python,
        "python_full_version": f"{target.python}.0",
        "implementation_version": f"{target.python}.0",
        "platform_machine": target.machine,
        "platform_system": "Linux",
        "sys_platform": "linux",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
    }


def platform_tags(manylinux: str) -> list[str]:
    """Every platform tag a system of this manylinux policy installs, newest glibc first
    (pip matches ``--platform`` exactly, so it is given them all)."""
    _, major, minor, machine = manylinux.split("_", 3)
    tags = [f"manylinux_{major}_{m}_{machine}" for m in range(int(minor), 16, -1)]
    return [*tags, f"manylinux2014_{machine}", f"linux_{machine}"]


def ordered_target_tags(target: Target, *, older_policies: bool = False) -> list[Tag]:
    """Every wheel tag an installer accepts on the target for its manylinux policy, best
    first: cp312-cp312, cp3X-abi3 (stable ABI, X <= 12), py3-none and the pure-Python tags.
    With ``older_policies``, also wheels of older manylinux policies (what pip installs)."""
    from packaging.tags import compatible_tags, cpython_tags  # start-up time: imported here

    version = tuple(int(part) for part in target.python.split("."))
    policies = platform_tags(target.manylinux) if older_policies else [target.manylinux]
    platforms = [*policies, "any"]
    return [
        *cpython_tags(version, platforms=platforms),
        *compatible_tags(version, platforms=platforms),
    ]


def target_tags(target: Target) -> frozenset[Tag]:
    """The tags of :func:`ordered_target_tags`, for membership tests."""
    return frozenset(ordered_target_tags(target))
