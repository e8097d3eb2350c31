"""Which CUDA libraries (cuDNN, NCCL, cuSPARSELt) a build compiles against, and their versions.

For the container runner the answer comes from ``builder.toml`` (what NVIDIA's
base image provides, from its published Dockerfiles), from the ``ARG``s of
``Dockerfile.builder`` that pin what the image adds, overridden by
``--build-arg``, and from the pins of ``builder-tools.txt`` for libraries the
image takes from PyPI wheels: known offline, before any image exists. For the host runner it
is read from the version macros of the headers the compiler would find.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from pydantic import Field

from sparkforge.locking.consistency import BuilderLibraries
from sparkforge.util.errors import ConfigError
from sparkforge.util.models import StrictModel, load_model
from sparkforge.util.tomlfile import is_file

#: Header, and the macros holding major/minor/patch, per library.
HEADERS: dict[str, tuple[tuple[str, ...], tuple[str, str, str]]] = {
    "cudnn": (("cudnn_version.h", "cudnn_version_v9.h"),
              ("CUDNN_MAJOR", "CUDNN_MINOR", "CUDNN_PATCHLEVEL")),
    "nccl": (("nccl.h",), ("NCCL_MAJOR", "NCCL_MINOR", "NCCL_PATCH")),
    "cusparselt": (("cusparseLt.h",),
                   ("CUSPARSELT_VER_MAJOR", "CUSPARSELT_VER_MINOR", "CUSPARSELT_VER_PATCH")),
}  # fmt: skip


class BaseImageFacts(StrictModel):
    """What one base image holds, as its publisher's Dockerfiles state it."""

    source: str  # where these facts are from
    user: dict[str, int] = Field(default_factory=dict)  # accounts that already exist: name -> uid
    env: dict[str, str] = Field(default_factory=dict)
    arch_env: dict[str, dict[str, str]] = Field(default_factory=dict)  # amd64/arm64 -> env
    held: dict[str, str] = Field(default_factory=dict)  # apt package -> held version
    libraries: dict[str, str] = Field(default_factory=dict)  # library -> package version
    repository: dict[str, list[str]] = Field(default_factory=dict)  # apt package -> versions
    python: str = ""  # the distribution's python3 (X.Y)


class BuilderFile(StrictModel):
    """The schema of ``builder.toml``."""

    bases: dict[str, BaseImageFacts] = Field(default_factory=dict)
    # Dockerfile.builder ARGs that pin a library the image adds: ARG name -> library.
    args: dict[str, str] = Field(default_factory=dict)
    # builder-tools.txt distributions that provide a library: distribution -> library.
    tools: dict[str, str] = Field(default_factory=dict)


def load_builder_file(project: Path) -> BuilderFile:
    path = project / "builder.toml"
    if not is_file(path):
        return BuilderFile()
    return load_model(BuilderFile, path, what="builder facts")


_ARG = re.compile(r"^\s*ARG\s+(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:=(?P<value>.*))?$")


def dockerfile_args(dockerfile: Path) -> dict[str, str]:
    """The ``ARG NAME=default`` values of a Dockerfile (quotes removed)."""
    try:
        lines = dockerfile.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"{dockerfile}: cannot read ({exc.strerror})") from None
    found: dict[str, str] = {}
    for line in lines:
        match = _ARG.match(line)
        if match and match["value"] is not None:
            found[match["name"]] = match["value"].strip().strip("\"'")
    return found


def container_libraries(
    project: Path, dockerfile: Path, base_image: str, build_args: Mapping[str, str]
) -> BuilderLibraries | None:
    """The builder image's libraries; None when the base is not described in builder.toml."""
    facts = load_builder_file(project)
    base = facts.bases.get(base_image)
    if base is None:
        return None
    versions = dict(base.libraries)
    args = {**dockerfile_args(dockerfile), **build_args}
    for arg in facts.args:
        if arg in base.env:
            # In a RUN step an inherited ENV wins over a build ARG of the same name.
            raise ConfigError(
                f"{dockerfile}: ARG {arg} is shadowed by the base image's ENV {arg} "
                f"({base_image}, builder.toml); rename the ARG (and its builder.toml [args] key)"
            )
    for arg, library in facts.args.items():
        value = args.get(arg, "")
        if value:
            versions[library] = value
        else:
            versions.pop(library, None)
    pins = tool_pins(dockerfile.parent / "builder-tools.txt")
    for dist, library in facts.tools.items():
        if canonicalize_name(dist) in pins:
            versions[library] = pins[canonicalize_name(dist)]
    return BuilderLibraries(
        versions, f"{base_image} per builder.toml, + {dockerfile.name} ARGs and builder-tools.txt"
    )


def tool_pins(path: Path) -> dict[str, str]:
    """``name==version`` pins of a hashed requirements file (builder-tools.txt)."""
    if not is_file(path):
        return {}
    pins: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = line.split("#", 1)[0].split(" --hash", 1)[0].strip()
        if not text:
            continue
        try:
            requirement = Requirement(text)
        except InvalidRequirement as exc:
            raise ConfigError(f"{path}:{number}: not a requirement ({exc})") from None
        spec = next(iter(requirement.specifier), None)
        if spec is not None and spec.operator == "==":
            pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def host_libraries(cuda_home: str, machine: str) -> BuilderLibraries:
    """Library versions from the headers a host build would include."""
    directories = [Path(cuda_home) / "include", Path("/usr/include"),
                   Path(f"/usr/include/{machine}-linux-gnu"), Path("/usr/local/include")]  # fmt: skip
    versions: dict[str, str] = {}
    for library, (names, macros) in HEADERS.items():
        for directory in directories:
            found = next((directory / n for n in names if is_file(directory / n)), None)
            if found is None:
                continue
            version = _header_version(found, macros)
            if version:
                versions[library] = version
                break
    where = ", ".join(str(d) for d in directories)
    return BuilderLibraries(versions, f"headers on this host under {where}")


def _header_version(path: Path, macros: tuple[str, str, str]) -> str | None:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    parts = []
    for macro in macros:
        match = re.search(rf"^\s*#\s*define\s+{macro}\s+(\d+)", text, re.MULTILINE)
        if match is None:
            return None
        parts.append(match[1])
    return ".".join(parts)
