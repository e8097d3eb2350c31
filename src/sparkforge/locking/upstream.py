"""Upstream's own declarations, read from the pinned source at lock time.

What upstream states about its build (the PEP 517 backend and ``[build-system]
requires`` of ``pyproject.toml``) and about the projects its release pairs with
(pins in requirement files, or files holding only a version, such as PyTorch's
``.ci/docker/triton_version.txt``) is recorded in the lock, so that every plan
can be checked against it offline (:mod:`consistency`). A setuptools project
without ``pyproject.toml`` gets PEP 517's default (legacy setuptools backend).
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterable

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from sparkforge.config.recipes import UpstreamSpec
from sparkforge.locking.lockfile import DeclaredPin, UpstreamDeclared
from sparkforge.util.errors import LockError

ReadFile = Callable[[str], str]  # path inside the pinned source -> text (FileNotFoundError)

#: PEP 517: a source tree without [build-system] builds with setuptools' legacy backend.
LEGACY_BACKEND = "setuptools.build_meta:__legacy__"
LEGACY_REQUIRES = ["setuptools>=40.8.0"]


def read_declarations(
    read: ReadFile, spec: UpstreamSpec, built_here: Iterable[str], *, where: str
) -> UpstreamDeclared:
    """Upstream's declarations in the pinned source that ``read`` reads.

    ``built_here`` are the distributions this repository's recipes build: only pins
    on those are kept. ``where`` names the pinned source in error messages.
    """
    backend, requires = _build_system(read, where, spec.project)
    dists = {canonicalize_name(d) for d in built_here}
    pins: list[DeclaredPin] = []
    for path in spec.requirements:
        for requirement in _requirement_lines(read, path, where, seen=set()):
            if canonicalize_name(requirement.name) in dists:
                pins.append(DeclaredPin(requirement=str(requirement), file=path))
    for path, project in spec.version_files.items():
        version = _read(read, path, where).strip()
        try:
            requirement = Requirement(f"{project}=={version}")
        except InvalidRequirement:
            raise LockError(
                f"{where}: {path} should hold a version of {project}, not {version[:60]!r}"
            ) from None
        pins.append(DeclaredPin(requirement=str(requirement), file=path))
    return UpstreamDeclared(
        read_from="pinned source", build_backend=backend, build_requires=requires, pins=pins
    )


def _read(read: ReadFile, path: str, where: str) -> str:
    try:
        return read(path)
    except FileNotFoundError:
        raise LockError(
            f"{where}: the pinned source has no {path}, which the recipe's [upstream] names; "
            "fix the path in the recipe"
        ) from None


def _build_system(read: ReadFile, where: str, project: str) -> tuple[str, list[str]]:
    path = f"{project.strip('/')}/pyproject.toml" if project else "pyproject.toml"
    try:
        text = read(path)
    except FileNotFoundError:
        return LEGACY_BACKEND, list(LEGACY_REQUIRES)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LockError(f"{where}: {path} is not valid TOML ({exc})") from None
    system = data.get("build-system")
    if not isinstance(system, dict):
        return LEGACY_BACKEND, list(LEGACY_REQUIRES)
    requires = system.get("requires", [])
    if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
        raise LockError(f"{where}: pyproject.toml [build-system] requires is not a list of strings")
    for item in requires:
        try:
            Requirement(item)
        except InvalidRequirement as exc:
            raise LockError(
                f"{where}: pyproject.toml [build-system] requires {item!r}: {exc}"
            ) from None
    return str(system.get("build-backend") or LEGACY_BACKEND), list(requires)


def _requirement_lines(
    read: ReadFile, path: str, where: str, *, seen: set[str]
) -> list[Requirement]:
    """Requirements of a pip requirement file, following ``-r`` includes inside the source."""
    if path in seen:
        return []
    seen.add(path)
    found: list[Requirement] = []
    directory = path.rpartition("/")[0]
    for raw in _read(read, path, where).splitlines():
        line = raw.split(" #", 1)[0].split("\t#", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-r ", "--requirement ")):
            included = line.split(None, 1)[1].strip()
            found += _requirement_lines(
                read, f"{directory}/{included}" if directory else included, where, seen=seen
            )
            continue
        if line.startswith("-"):  # -c, -e, --index-url …: not requirements
            continue
        try:
            found.append(Requirement(line))
        except InvalidRequirement:
            continue  # a URL or path requirement: not a pin on a released project
    return found
