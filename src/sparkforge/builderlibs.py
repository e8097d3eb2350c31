"""Which CUDA libraries (cuDNN, NCCL, cuSPARSELt) a build compiles against, and their versions.

For the container runner the answer comes from ``builder.toml`` (what NVIDIA's
base image provides, from its published Dockerfiles) and from the
``ARG``s of ``Dockerfile.builder`` that pin what the image adds, overridden by
``--build-arg``: known offline, before any image exists. For the host runner it
is read from the version macros of the headers the compiler would find.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from pydantic import Field

from .consistency import BuilderLibraries
from .errors import ConfigError
from .tomlfile import StrictModel, is_file, load_model

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
    for arg, library in facts.args.items():
        value = args.get(arg, "")
        if value:
            versions[library] = value
        else:
            versions.pop(library, None)
    return BuilderLibraries(versions, f"{base_image} per builder.toml, + {dockerfile.name} ARGs")


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
