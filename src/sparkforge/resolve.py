"""Lock resolution: turn recipes into lock entries (``sparkforge lock``).

Sources are pinned by :mod:`sources`; build requirements are resolved to exact
versions with the sha256 of every wheel for every target platform, so the
build environment can be installed with ``--require-hashes`` anywhere.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename

from .digest import sha256_file
from .errors import LockError
from .lock import LockedPatch, LockedRequirement, LockedSource, LockEntry, inputs_fingerprint
from .patches import PatchSeries
from .recipes import Recipe
from .sources import resolve as resolve_source
from .targets import Target
from .workspace import Workspace


def platform_tags(manylinux: str) -> list[str]:
    """Every manylinux tag a target accepts: pip matches ``--platform`` exactly."""
    _, major, minor, machine = manylinux.split("_", 3)
    tags = [f"manylinux_{major}_{m}_{machine}" for m in range(int(minor), 16, -1)]
    return [*tags, f"manylinux2014_{machine}", f"linux_{machine}"]


def resolve_requirements(
    requires: Sequence[str], targets: Sequence[Target]
) -> list[LockedRequirement]:
    """Exact versions and wheel hashes of ``requires`` (with dependencies) for all targets."""
    if not requires:
        return []
    found: dict[str, tuple[str, set[str]]] = {}
    seen_for: set[tuple[str, str]] = set()
    for target in targets:
        if (target.manylinux, target.python) in seen_for:
            continue
        seen_for.add((target.manylinux, target.python))
        with tempfile.TemporaryDirectory(prefix="sparkforge-lock-") as tmp:
            nodot = target.python.replace(".", "")
            argv = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
                "--only-binary=:all:",
                "--python-version",
                target.python,
                "--implementation",
                "cp",
                "--abi",
                f"cp{nodot}",
                "--abi",
                "abi3",
                "--abi",
                "none",
                "-d",
                tmp,
            ]
            for tag in platform_tags(target.manylinux):
                argv += ["--platform", tag]
            result = subprocess.run([*argv, *requires], capture_output=True, text=True)
            if result.returncode != 0:
                lines = [line for line in result.stderr.splitlines() if line.strip()]
                raise LockError(
                    f"cannot resolve build requirements {list(requires)} for {target.name}: "
                    f"{lines[-1] if lines else 'pip failed'}"
                )
            for wheel in sorted(Path(tmp).glob("*.whl")):
                name, version, _, _ = parse_wheel_filename(wheel.name)
                key = canonicalize_name(name)
                previous = found.get(key)
                if previous is not None and previous[0] != str(version):
                    raise LockError(
                        f"build requirement {key} resolves to {previous[0]} on one target and "
                        f"{version} on {target.name}; pin it in the recipe's build.requires"
                    )
                found.setdefault(key, (str(version), set()))[1].add(sha256_file(wheel))
    return [
        LockedRequirement(name=name, version=version, hashes=sorted(hashes))
        for name, (version, hashes) in sorted(found.items())
    ]


def lock_entry(
    project: Path,
    recipe: Recipe,
    version: str,
    series: PatchSeries,
    targets: Sequence[Target],
    workspace: Workspace,
    *,
    previous: LockEntry | None,
    upgrade: bool,
) -> LockEntry:
    """Resolve one recipe version into a lock entry."""
    fingerprint = inputs_fingerprint(recipe, version, series)
    previous_source: LockedSource | None = previous.source if previous else None
    resolved = resolve_source(
        project, recipe, version, workspace, upgrade=upgrade, previous=previous_source
    )
    if previous is not None and previous.inputs_sha256 == fingerprint and not upgrade:
        requirements = previous.build_requires
    else:
        requirements = resolve_requirements(recipe.spec.build.requires, targets)
    return LockEntry(
        inputs_sha256=fingerprint,
        source_date_epoch=resolved.source_date_epoch,
        source=resolved.source,
        patches=[LockedPatch(name=p.name, sha256=p.sha256) for p in series.patches],
        build_requires=requirements,
    )
