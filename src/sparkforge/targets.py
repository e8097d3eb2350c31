"""Targets: where wheels will run (platform, CUDA, GPU arch, Python, manylinux policy).

A target is one file, ``targets/<name>.toml``. ``dgx-spark`` is the default;
``hopper`` lets the pipeline be proven on the H100/H200 machines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from packaging.tags import Tag, compatible_tags, cpython_tags
from pydantic import Field, field_validator, model_validator

from .archs import CudaArch, check_arch, parse_arch
from .errors import ConfigError
from .tomlfile import StrictModel, is_file, load_model

DEFAULT_TARGET = "dgx-spark"


class MachineSpec(StrictModel):
    """The reference machine of a target: sizes the job count shown in plans."""

    cores: int = Field(ge=1)
    memory_gb: float = Field(gt=0, allow_inf_nan=False)  # usable by builds (after the OS)
    source: str  # where the figures come from


class TargetFile(StrictModel):
    """The schema of ``targets/<name>.toml``."""

    name: str
    description: str
    platform: Literal["linux_aarch64", "linux_x86_64"]
    cuda_version: str = Field(pattern=r"^\d+\.\d+$")
    cuda_archs: list[str] = Field(min_length=1)
    python: str = Field(pattern=r"^3\.\d+$")
    manylinux: str = Field(pattern=r"^manylinux_\d+_\d+_(aarch64|x86_64)$")
    builder_image: str
    cuda_home: str = "/usr/local/cuda"
    repair_exclude: list[str] = Field(default_factory=list)
    reference_machine: MachineSpec | None = None

    @field_validator("cuda_archs")
    @classmethod
    def _archs_parse(cls, value: list[str]) -> list[str]:
        for item in value:
            check_arch(item)
        return value

    @field_validator("cuda_home")
    @classmethod
    def _cuda_home(cls, value: str) -> str:
        # Looked up on disk and in the builder image: a path the OS can resolve from anywhere.
        if not value.startswith("/") or any(len(p.encode()) > 255 for p in value.split("/")):
            raise ValueError(f"'{value}' is not an absolute path; write e.g. '/usr/local/cuda'")
        return value

    @model_validator(mode="after")
    def _policy_matches_platform(self) -> TargetFile:
        machine = self.platform.removeprefix("linux_")
        if not self.manylinux.endswith(machine):
            raise ValueError(
                f"manylinux policy {self.manylinux} is not for platform {self.platform}"
            )
        return self


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
        known = ", ".join(available_targets(project)) or "none"
        raise ConfigError(
            f"--target: no target '{name}' ({path} not found); known targets: {known}"
        )
    data = load_model(TargetFile, path, what="target")
    if data.name != name:
        raise ConfigError(
            f"{path}: key 'name': is '{data.name}' but the file is named '{name}.toml'"
        )
    return Target(
        name=data.name,
        description=data.description,
        platform=data.platform,
        machine=data.platform.removeprefix("linux_"),
        cuda_version=data.cuda_version,
        cuda_archs=tuple(parse_arch(a, where=f"{path}: key 'cuda_archs'") for a in data.cuda_archs),
        python=data.python,
        manylinux=data.manylinux,
        builder_image=data.builder_image,
        cuda_home=data.cuda_home,
        repair_exclude=tuple(data.repair_exclude),
        path=path,
        reference_machine=data.reference_machine,
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


def target_tags(target: Target) -> frozenset[Tag]:
    """Every wheel tag an installer accepts on the target for its manylinux policy:
    cp312-cp312, cp3X-abi3 (stable ABI, X <= 12), py3-none and the pure-Python tags."""
    version = tuple(int(part) for part in target.python.split("."))
    platforms = [target.manylinux, "any"]
    return frozenset(
        (
            *cpython_tags(version, platforms=platforms),
            *compatible_tags(version, platforms=platforms),
        )
    )
