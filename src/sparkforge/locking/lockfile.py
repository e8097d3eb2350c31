"""The lock: resolved, immutable inputs per recipe version (``lock.toml``).

The lock holds facts only: the commit SHA of a git source (never a branch), the
sha256 of an archive or of a local source tree, the sha256 of every patch, the
exact build requirements with their wheel hashes, and ``source_date_epoch``.
``inputs_sha256`` fingerprints what the lock was resolved from (the recipe's
source, version and requirements, and the patch series); when those change the
entry is stale and builds refuse until ``nox -s lock`` runs again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import Field, ValidationError, model_validator

from sparkforge.config.patches import PatchSeries
from sparkforge.config.recipes import Recipe
from sparkforge.util.digest import SHA1_HEX
from sparkforge.util.errors import LockError
from sparkforge.util.files import exclusive, write_atomic
from sparkforge.util.models import StrictModel, describe_validation_error
from sparkforge.util.tomlfile import parse_toml

LOCK_FORMAT = 1
SHA256_HEX = r"^[0-9a-f]{64}$"


class LockedSource(StrictModel):
    kind: Literal["path", "git", "url"]
    path: str | None = None
    tree_sha256: str | None = Field(default=None, pattern=SHA256_HEX)
    git: str | None = None
    ref: str | None = None
    commit: str | None = None
    url: str | None = None
    sha256: str | None = Field(default=None, pattern=SHA256_HEX)

    @model_validator(mode="after")
    def _complete(self) -> LockedSource:
        needed = {
            "path": ("path", "tree_sha256"),
            "git": ("git", "commit"),
            "url": ("url", "sha256"),
        }
        for key in needed[self.kind]:
            if getattr(self, key) is None:
                raise ValueError(f"a {self.kind} source needs '{key}'")
        if self.kind == "git" and not SHA1_HEX.match(self.commit or ""):
            raise ValueError(
                f"commit '{self.commit}' is not a 40-hex commit SHA (branch or tag names are "
                "never locked)"
            )
        return self


class LockedAsset(StrictModel):
    """A staged input: an archive pinned by digest or a repository pinned by commit."""

    name: str
    kind: Literal["url", "git"]
    dest: str  # relative path under the build's assets directory
    url: str | None = None
    sha256: str | None = Field(default=None, pattern=SHA256_HEX)
    # Where only the upstream manifest's digest is known (onnxruntime's cmake/deps.txt).
    sha1: str | None = Field(default=None, pattern=r"^[0-9a-f]{40}$")
    unpack: bool = False
    git: str | None = None
    ref: str | None = None
    commit: str | None = None
    submodules: bool = False
    # Paths not checked out (git assets); left out of lock.toml while empty.
    exclude: list[str] = Field(default_factory=list, exclude_if=lambda paths: not paths)
    env: str | None = None
    platform: str | None = None
    origin: str | None = None  # the manifest it was expanded from, if any

    @model_validator(mode="after")
    def _pinned(self) -> LockedAsset:
        if self.kind == "url" and (self.url is None or (self.sha256 is None and self.sha1 is None)):
            raise ValueError(
                f"asset '{self.name}': a url asset needs 'url' and 'sha256' (or 'sha1')"
            )
        if self.kind == "git" and (self.git is None or not SHA1_HEX.match(self.commit or "")):
            raise ValueError(f"asset '{self.name}': a git asset needs 'git' and a 40-hex 'commit'")
        if self.dest.startswith("/") or ".." in self.dest.split("/"):
            raise ValueError(
                f"asset '{self.name}': dest '{self.dest}' must stay inside the assets directory"
            )
        return self

    def pin(self) -> str:
        """The content pin, as shown in plans."""
        if self.kind == "git":
            return f"{self.git}@{self.commit}"
        digest = f"sha256:{self.sha256}" if self.sha256 else f"sha1:{self.sha1} (upstream manifest)"
        return f"{self.url} {digest}"


class LockedPatch(StrictModel):
    name: str
    sha256: str = Field(pattern=SHA256_HEX)


class LockedRequirement(StrictModel):
    name: str
    version: str
    hashes: list[str] = Field(min_length=1)

    def pip_line(self) -> str:
        hashes = " ".join(f"--hash=sha256:{h}" for h in sorted(self.hashes))
        return f"{self.name}=={self.version} {hashes}"


class DeclaredPin(StrictModel):
    """A requirement upstream states on a project this repository also builds."""

    requirement: str
    file: str  # where upstream states it (a path in the pinned source)


class UpstreamDeclared(StrictModel):
    """What upstream declares for its build and its pairings, read from the pinned source.

    ``read_from`` says where the record came from: the pinned source itself
    (``sparkforge lock``), or public records named there when the source could not be
    read (``seeded: …``); a lock that reaches the source replaces a seeded record.
    """

    read_from: str
    build_backend: str
    build_requires: list[str] = Field(default_factory=list)
    pins: list[DeclaredPin] = Field(default_factory=list)

    @property
    def seeded(self) -> bool:
        return self.read_from.startswith("seeded")


class LockEntry(StrictModel):
    inputs_sha256: str = Field(pattern=SHA256_HEX)
    source_date_epoch: int = Field(ge=0)
    source: LockedSource
    patches: list[LockedPatch] = Field(default_factory=list)
    build_requires: list[LockedRequirement] = Field(default_factory=list)
    assets: list[LockedAsset] = Field(default_factory=list)
    upstream: UpstreamDeclared | None = None
    # Set when the entry was seeded from public records (named here) instead of being
    # resolved against the source; `sparkforge lock` with network clears it.
    seeded: str | None = None
    # Set for a version the recipe does not list, locked on demand (``--version``): the
    # listed version whose settings it borrows. Plans and provenance call it unreviewed.
    derived_from: str | None = Field(default=None, exclude_if=lambda value: value is None)

    def fingerprint(self) -> str:
        """sha256 of the entry itself (part of the build key)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


class LockFile(StrictModel):
    format: int
    # Builder base images: reference (as in targets/*.toml) → the digest that pins it.
    builder: dict[str, str] = Field(default_factory=dict)
    recipes: dict[str, dict[str, LockEntry]] = Field(default_factory=dict)


def inputs_fingerprint(recipe: Recipe, version: str, series: PatchSeries) -> str:
    """What a lock entry was resolved from; a change makes the entry stale."""
    spec = recipe
    # Keys added after format 1 are left out while unset, so older entries stay current;
    # a version's extra environment changes the build key, not the lock.
    source = spec.source.model_dump(mode="json")
    if source["pypi"] is None:
        del source["pypi"]
    # Which versions of the needed recipes it builds against is a build-key matter too.
    # Its own build command and preflight decide the build key (the recipe's digest), and
    # its own build requirements are counted with the shared ones below.
    version_spec = spec.versions[version].model_dump(
        mode="json",
        exclude={"env", "needs", "runtime", "requires", "command", "preflight", "upstream"},
    )
    for key in ("assets", "manifests"):
        if not version_spec[key]:
            del version_spec[key]
    blob: dict[str, object] = {
        "source": source,
        "version": version,
        "version_spec": version_spec,
        "build_requires": recipe.build_requires(version),
        "patches": [(p.name, p.sha256) for p in series.patches],
    }
    # Where upstream's declarations are read from (not the waivers: a plan-time matter).
    upstream = recipe.upstream_for(version).model_dump(
        mode="json", exclude={"waive"}, exclude_defaults=True
    )
    if upstream:
        blob["upstream"] = upstream
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def read_lock(path: Path) -> LockFile:
    """Read ``lock.toml``; a missing file is an empty lock."""
    if not path.exists():
        return LockFile(format=LOCK_FORMAT)
    try:
        data: dict[str, Any] = parse_toml(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise LockError(f"{path}: cannot read the lock ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise LockError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); "
            "run `nox -s lock` to rewrite it"
        ) from None
    except ValueError as exc:
        raise LockError(
            f"{path}: malformed TOML ({exc}); run `nox -s lock` to rewrite it"
        ) from None
    try:
        lock = LockFile.model_validate(data)
    except ValidationError as exc:
        raise LockError(
            describe_validation_error(path, exc) + "; run `nox -s lock` to rewrite it"
        ) from None
    if lock.format != LOCK_FORMAT:
        raise LockError(
            f"{path}: key 'format': is {lock.format}, this sparkforge reads {LOCK_FORMAT}"
        )
    return lock


def write_lock(path: Path, lock: LockFile) -> None:
    """Write ``lock.toml`` atomically, keys sorted so diffs stay small."""
    data = lock.model_dump(mode="json", exclude_none=True)
    if not data["builder"]:
        del data["builder"]
    data["recipes"] = {
        name: {version: data["recipes"][name][version] for version in sorted(data["recipes"][name])}
        for name in sorted(data["recipes"])
    }
    header = (
        "# Written by `sparkforge lock` (nox -s lock). Facts only: commit SHAs, sha256 of\n"
        "# every archive, tree and patch, exact build requirements. Do not edit by hand.\n"
    )
    write_atomic(path, (header + tomli_w.dumps(data)).encode("utf-8"))


@contextmanager
def updating(path: Path, note: Callable[[str], None] | None = None) -> Iterator[LockFile]:
    """lock.toml read, changed by the block and written back, one writer at a time (an
    advisory lock beside it): two runs locking on demand at once keep both entries.
    Nothing is written when the block raises."""
    with exclusive(path.with_name(f".{path.name}.writer"), note):
        lock = read_lock(path)
        yield lock
        write_lock(path, lock)


def entry_for(
    lock: LockFile, lock_path: Path, recipe: Recipe, version: str, series: PatchSeries
) -> LockEntry:
    """The current lock entry for ``recipe``/``version``, or a LockError naming the fix."""
    entry = lock.recipes.get(recipe.name, {}).get(version)
    fix = f"run `nox -s lock -- {recipe.name}`"
    if entry is None:
        if version in recipe.derived:
            raise LockError(
                f"{lock_path}: no lock entry for {recipe.name} {version} (a version the recipe "
                f"does not list); a build locks it on the spot, or run `nox -s lock -- "
                f"{recipe.name} --version {version}`"
            )
        raise LockError(f"{lock_path}: no lock entry for {recipe.name} {version}; {fix}")
    locked = {p.name: p.sha256 for p in entry.patches}
    for patch in series.patches:
        if locked.get(patch.name) != patch.sha256:
            raise LockError(
                f"{patch.path}: sha256 {patch.sha256[:12]}… differs from {lock_path} "
                f"({(locked.get(patch.name) or 'absent')[:12]}…); review the patch, then {fix}"
            )
    expected = inputs_fingerprint(recipe, version, series)
    if entry.upstream is None:
        raise LockError(
            f"{lock_path}: lock entry for {recipe.name} {version} has no record of upstream's "
            f"declarations (written by an older sparkforge); {fix}"
        )
    if entry.inputs_sha256 != expected:
        raise LockError(
            f"{lock_path}: lock entry for {recipe.name} {version} is stale (the recipe's source, "
            f"requirements or patches changed since it was locked); {fix}"
        )
    return entry
