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
from typing import Any

from packaging.utils import canonicalize_name, parse_wheel_filename

from sparkforge.config.patches import PatchSeries, load_series
from sparkforge.config.recipes import Recipe, available_recipes, load_recipe
from sparkforge.config.targets import Target, platform_tags
from sparkforge.locking.lockfile import (
    LockedAsset,
    LockedPatch,
    LockedRequirement,
    LockedSource,
    LockEntry,
    inputs_fingerprint,
)
from sparkforge.locking.manifests import EXPANDERS
from sparkforge.locking.pins import read_locked_file, resolve_git_asset, url_asset_sha256
from sparkforge.locking.pins import resolve as resolve_source
from sparkforge.locking.upstream import read_declarations
from sparkforge.util.digest import sha256_file
from sparkforge.util.errors import LockError, SourceError
from sparkforge.util.workspace import Workspace


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
    """Resolve one recipe version into a lock entry.

    An entry seeded from public records (``seeded``) is resolved afresh against the
    source, which confirms it (or shows what differs in the lock's diff).
    """
    fingerprint = inputs_fingerprint(recipe, version, series)
    if previous is not None and previous.seeded:
        previous = previous.model_copy(update={"assets": [], "upstream": None})
    previous_source: LockedSource | None = previous.source if previous else None
    resolved = resolve_source(
        project, recipe, version, workspace, upgrade=upgrade, previous=previous_source
    )
    # Same inputs, same pinned source, no upgrade: nothing to re-resolve.
    unchanged = (
        previous is not None
        and previous.inputs_sha256 == fingerprint
        and previous.source == resolved.source
        and not upgrade
    )
    if unchanged and previous is not None and not previous.seeded:
        requirements, assets = previous.build_requires, previous.assets
    else:
        requirements = resolve_requirements(recipe.build_requires(version), targets)
        assets = resolve_assets(project, recipe, version, resolved.source, workspace,
                                previous=previous.assets if previous and not upgrade else [])  # fmt: skip
    upstream = previous.upstream if unchanged and previous is not None else None
    if upstream is None:
        pin = resolved.source.commit or resolved.source.sha256 or resolved.source.tree_sha256
        upstream = read_declarations(
            lambda rel: read_locked_file(project, recipe, resolved.source, workspace, rel),
            recipe.upstream_for(version),
            built_here(project),
            where=f"{recipe.name} {version} ({resolved.source.kind} {pin})",
        )
    return LockEntry(
        inputs_sha256=fingerprint,
        source_date_epoch=resolved.source_date_epoch,
        source=resolved.source,
        patches=[LockedPatch(name=p.name, sha256=p.sha256) for p in series.patches],
        build_requires=requirements,
        assets=assets,
        upstream=upstream,
    )


def built_here(project: Path) -> list[str]:
    """The distributions this repository's recipes build."""
    return [load_recipe(project, name).dist for name in available_recipes(project)]


def resolve_assets(
    project: Path,
    recipe: Recipe,
    version: str,
    source: LockedSource,
    workspace: Workspace,
    *,
    previous: Sequence[LockedAsset],
) -> list[LockedAsset]:
    """Pin the version's assets: its own (commit or sha256) and its manifests' (as listed)."""
    spec = recipe.versions[version]
    kept = {a.name: a for a in previous if a.origin is None}
    assets: list[LockedAsset] = []
    for name, asset in spec.assets.items():
        old = kept.get(name)
        common: dict[str, Any] = {"name": name, "dest": name, "env": asset.env,
                                  "platform": asset.platform}  # fmt: skip
        if asset.git is not None:
            same = old is not None and old.git == asset.git and old.ref == asset.ref
            commit = (
                old.commit
                if same and old
                else resolve_git_asset(workspace, asset.git, str(asset.ref))
            )
            assets.append(LockedAsset(kind="git", git=asset.git, ref=asset.ref, commit=commit,
                                      submodules=asset.submodules, exclude=asset.exclude,
                                      **common))  # fmt: skip
        else:
            url = str(asset.url)
            same = old is not None and old.url == url and old.sha256 is not None
            sha256 = old.sha256 if same and old else url_asset_sha256(workspace, url, None)
            assets.append(LockedAsset(kind="url", url=url, sha256=sha256, unpack=asset.unpack,
                                      **common))  # fmt: skip
    for manifest in spec.manifests:
        expand = EXPANDERS[manifest.kind]
        try:
            listed = expand(lambda rel: read_locked_file(project, recipe, source, workspace, rel))
        except FileNotFoundError as missing:
            raise SourceError(
                f"{recipe.path}: manifest '{manifest.kind}' of version '{version}' needs {missing} "
                "in the pinned source, which has no such file; check the manifest kind"
            ) from None
        for item in listed:
            sha256 = item.sha256
            if sha256 is None and item.sha1 is None:  # upstream pins nothing: pin what we fetch
                old = next((a for a in previous if a.origin and a.url == item.url), None)
                sha256 = old.sha256 if old else url_asset_sha256(workspace, item.url, None)
            assets.append(LockedAsset(kind="url", name=item.name, dest=item.dest, url=item.url,
                                      sha256=sha256, sha1=item.sha1, unpack=item.unpack,
                                      platform=item.platform, env=manifest.env,
                                      origin=manifest.kind))  # fmt: skip
    names = [a.name for a in assets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise LockError(
            f"{recipe.path}: version '{version}' lists asset '{duplicates[0]}' twice "
            "(own assets and manifests share one namespace)"
        )
    return assets


def lock_on_demand(
    project: Path, recipe: Recipe, version: str, targets: Sequence[Target], workspace: Workspace
) -> LockEntry:
    """Lock a version the recipe does not list (see :meth:`Recipe.with_version`): its
    source pinned as any other (sdist by sha256, git tag by commit), marked as derived."""
    if version not in recipe.derived:
        raise LockError(f"{recipe.path}: version '{version}' is listed; lock it with the others")
    series = load_series(project, recipe.name, version)
    entry = lock_entry(
        project, recipe, version, series, targets, workspace, previous=None, upgrade=False
    )
    return entry.model_copy(update={"derived_from": recipe.derived[version]})
