"""Plan-time checks against upstream's declarations: offline, before anything is fetched.

A plan is refused when it contradicts what upstream declares (recorded in the
lock by :mod:`upstream`) or what the wheel will need at run time:

* **build requirements**: every requirement of upstream's ``[build-system]``
  must be met by the recipe's locked ``build.requires`` or by a needed
  recipe's version (PEP 517 front-ends check this before compiling anything);
* **pairings**: a needed recipe's version must satisfy upstream's pin on it,
  and the wheel's own runtime pins must agree with upstream's;
* **CUDA libraries**: a library the wheel declares at run time (cuDNN, NCCL,
  cuSPARSELt as ``nvidia-*`` wheels) must be in the builder at the same major
  version and no newer than the declared one: PyTorch refuses a runtime cuDNN
  older than the one it was compiled against, and a library missing at build
  time is switched off with only a CMake warning.

Every conflict is one line naming both sides. A recipe can waive a declared
requirement in ``[upstream] waive`` with a reason; the plan shows the waiver.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from sparkforge.config.recipes import Recipe
from sparkforge.config.targets import Target, marker_environment
from sparkforge.locking.lockfile import LockEntry

#: ``nvidia-*`` wheels that carry a library the builder compiles against, by library.
LIBRARY_WHEELS: dict[str, str] = {
    "nvidia-cudnn-cu13": "cudnn",
    "nvidia-cudnn-cu12": "cudnn",
    "nvidia-nccl-cu13": "nccl",
    "nvidia-nccl-cu12": "nccl",
    "nvidia-cusparselt-cu13": "cusparselt",
    "nvidia-cusparselt-cu12": "cusparselt",
}
LIBRARY_NAMES = {"cudnn": "cuDNN", "nccl": "NCCL", "cusparselt": "cuSPARSELt"}


@dataclass(frozen=True)
class Need:
    """A recipe this build builds against, at the version it uses.

    ``installed``: satisfied by a distribution the build interpreter already has
    (``--installed-need``), not by this wheelhouse: an unreviewed combination."""

    recipe: str
    dist: str
    version: str
    installed: bool = False


@dataclass(frozen=True)
class BuilderLibraries:
    """The CUDA library versions where the build compiles, and where that is known from."""

    versions: Mapping[str, str]  # "cudnn" -> "9.13.0.50"
    source: str


def applies(requirement: Requirement, target: Target) -> bool:
    marker: Marker | None = requirement.marker
    return marker is None or marker.evaluate(marker_environment(target))


def _satisfies(version: str, specifier: SpecifierSet) -> bool:
    try:
        return Version(version) in specifier or specifier.contains(version, prereleases=True)
    except InvalidVersion:
        return False


def check(
    recipe: Recipe,
    version: str,
    entry: LockEntry,
    target: Target,
    needs: Sequence[Need],
    libraries: BuilderLibraries | None,
) -> list[str]:
    """Every conflict of this plan, one line each (empty when consistent)."""
    label = f"{recipe.name} {version}"
    waived = {canonicalize_name(name) for name in recipe.upstream_for(version).waive}
    needed = {canonicalize_name(n.dist): n for n in needs}
    runtime = [r for r in map(Requirement, recipe.runtime_requires(version)) if applies(r, target)]
    conflicts: list[str] = []
    declared = entry.upstream
    if declared is not None:
        locked = {canonicalize_name(r.name): r.version for r in entry.build_requires}
        origin = f"upstream's pyproject.toml [build-system] ({declared.read_from})"
        for text in declared.build_requires:
            requirement = Requirement(text)
            name = canonicalize_name(requirement.name)
            if name in waived or not applies(requirement, target):
                continue
            if name in needed:
                conflicts += _need_conflict(label, needed[name], requirement, origin)
            elif name not in locked:
                conflicts.append(
                    f"{label}: {origin} requires {requirement}, which {recipe.path} build.requires "
                    f"does not list; add it (or waive it in [upstream] waive with a reason)"
                )
            elif not _satisfies(locked[name], requirement.specifier):
                conflicts.append(
                    f"{label}: {origin} requires {requirement}, but {recipe.path} build.requires "
                    f"pins {name}=={locked[name]}; pin a version in that range"
                )
        for pin in declared.pins:
            requirement = Requirement(pin.requirement)
            name = canonicalize_name(requirement.name)
            if name in waived or not applies(requirement, target):
                continue
            where = f"upstream's {pin.file} ({declared.read_from})"
            if name in needed:
                conflicts += _need_conflict(label, needed[name], requirement, where)
            for own in runtime:
                if canonicalize_name(own.name) == name and not _agree(
                    own.specifier, requirement.specifier
                ):
                    conflicts.append(
                        f"{label}: {recipe.path} [runtime] requires {own}, but {where} pairs it "
                        f"with {requirement}; declare the version upstream pairs with"
                    )
    for own in runtime:
        name = canonicalize_name(own.name)
        if name in needed and needed[name].installed:
            continue  # the wheel declares its pin; the installed one is recorded as unreviewed
        if name in needed and not _satisfies(needed[name].version, own.specifier):
            conflicts.append(
                f"{label}: {recipe.path} [runtime] requires {own}, but it builds against "
                f"{needed[name].recipe} {needed[name].version}; make them the same version"
            )
    conflicts += _library_conflicts(label, recipe, runtime, libraries)
    return conflicts


def _need_conflict(label: str, need: Need, requirement: Requirement, origin: str) -> list[str]:
    if _satisfies(need.version, requirement.specifier):
        return []
    if need.installed:
        return [
            f"{UNREVIEWED}{label}: {origin} requires {requirement}; built against the installed "
            f"{need.dist} {need.version} (--installed-need)"
        ]
    return [
        f"{label}: {origin} requires {requirement}, but it builds against {need.recipe} "
        f"{need.version}; pin the version upstream pairs with (versions.*.needs)"
    ]


#: Prefix of a finding that is recorded, not refused: the user chose the combination.
UNREVIEWED = "unreviewed: "


def split(findings: Sequence[str]) -> tuple[list[str], list[str]]:
    """(conflicts that refuse the plan, unreviewed combinations recorded in it)."""
    notes = [f.removeprefix(UNREVIEWED) for f in findings if f.startswith(UNREVIEWED)]
    return [f for f in findings if not f.startswith(UNREVIEWED)], notes


def _agree(ours: SpecifierSet, theirs: SpecifierSet) -> bool:
    """Whether our exact pin (if any) satisfies upstream's specifier."""
    exact = [s.version for s in ours if s.operator in ("==", "===") and "*" not in s.version]
    return all(_satisfies(v, theirs) for v in exact)


def _release(text: str) -> tuple[int, ...]:
    """``9.13.0.50-1`` / ``2.27.7-1+cuda13.0`` / ``0.8.0.*`` -> the first three release numbers."""
    upstream = text.split("-", 1)[0].split("+", 1)[0].removesuffix(".*").removesuffix("*")
    return Version(upstream).release[:3]


def _library_conflicts(
    label: str, recipe: Recipe, runtime: Sequence[Requirement], libraries: BuilderLibraries | None
) -> list[str]:
    if libraries is None:  # not known where this plan would run
        return []
    conflicts: list[str] = []
    for requirement in runtime:
        library = LIBRARY_WHEELS.get(canonicalize_name(requirement.name))
        if library is None:
            continue
        pinned = [s.version for s in requirement.specifier if s.operator in ("==", ">=", "~=")]
        if not pinned:
            continue
        name = LIBRARY_NAMES[library]
        have = libraries.versions.get(library)
        if have is None:
            conflicts.append(
                f"{label}: the wheel declares {requirement} ({recipe.path} [runtime] requires), "
                f"but the builder has no {name} ({libraries.source}); the build would switch it "
                f"off with only a warning. Install {name} where the build runs"
            )
            continue
        built, runs = _release(have), _release(pinned[0])
        if built[:1] != runs[:1] or built > runs:
            conflicts.append(
                f"{label}: the wheel declares {requirement} ({recipe.path} [runtime] requires), "
                f"but the builder compiles against {name} {have} ({libraries.source}); a runtime "
                f"{name} older than the build's is refused: build against {pinned[0]} or declare "
                f"the builder's version"
            )
    return conflicts
