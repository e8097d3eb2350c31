"""Pin a recipe version's inputs by content (lock time): the source, its assets, and
single files read from the pinned tree without materializing it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import git

from sparkforge.config.recipes import Recipe, source_root
from sparkforge.locking.lockfile import LockedSource
from sparkforge.util.digest import sha256_file
from sparkforge.util.errors import SourceError
from sparkforge.util.fetch import (
    archive_epoch,
    archive_member,
    check_sha1,
    download,
    ensure_commit,
    mirror,
    path_epoch,
    pypi_sdist,
    resolve_ref,
    tree_sha256,
    verified_archive,
)
from sparkforge.util.workspace import Workspace


@dataclass(frozen=True)
class Resolved:
    source: LockedSource
    source_date_epoch: int


def resolve(
    project: Path,
    recipe: Recipe,
    version: str,
    workspace: Workspace,
    *,
    upgrade: bool,
    previous: LockedSource | None,
) -> Resolved:
    """Pin the recipe version's source by content (lock time)."""
    spec = recipe.source
    if spec.path is not None:
        root = source_root(project, recipe)
        locked = LockedSource(kind="path", path=spec.path, tree_sha256=tree_sha256(root))
        return Resolved(locked, path_epoch(root))
    if spec.git is not None:
        ref = recipe.versions[version].ref or ""
        repo = mirror(workspace, spec.git)
        keep = (
            previous is not None and previous.kind == "git" and previous.ref == ref and not upgrade
        )
        commit = (
            previous.commit
            if keep and previous and previous.commit
            else resolve_ref(repo, spec.git, ref)
        )
        ensure_commit(repo, spec.git, commit)
        epoch = int(repo.commit(commit).committed_date)
        return Resolved(LockedSource(kind="git", git=spec.git, ref=ref, commit=commit), epoch)
    if spec.pypi is not None and previous is not None and previous.kind == "url" and not upgrade:
        url = str(previous.url)  # the sdist of a released version never changes: keep its pin
    elif spec.pypi is not None:
        url, published = pypi_sdist(spec.pypi, version)
        path = workspace.download_path(url)
        download(url, path)
        if sha256_file(path) != published:
            path.unlink()
            raise SourceError(f"{url}: sha256 differs from the one PyPI publishes; not locked")
    else:
        url = (spec.url or "").format(version=version)
    path = workspace.download_path(url)
    if previous is not None and previous.kind == "url" and previous.url == url and previous.sha256:
        path = verified_archive(workspace, url, previous.sha256)
    elif not path.exists():
        download(url, path)
    return Resolved(
        LockedSource(kind="url", url=url, sha256=sha256_file(path)), archive_epoch(path)
    )


def read_locked_file(
    project: Path, recipe: Recipe, locked: LockedSource, workspace: Workspace, relpath: str
) -> str:
    """One file of the pinned source tree, read without materializing it (lock time)."""
    try:
        if locked.kind == "path":
            return (source_root(project, recipe) / relpath).read_text(encoding="utf-8")
        if locked.kind == "git":
            repo = mirror(workspace, str(locked.git))
            return str(repo.git.show(f"{locked.commit}:{relpath}"))
        archive = verified_archive(workspace, str(locked.url), str(locked.sha256))
        return archive_member(archive, relpath)
    except (OSError, KeyError, git.GitCommandError):
        raise FileNotFoundError(relpath) from None


def resolve_git_asset(workspace: Workspace, url: str, ref: str) -> str:
    """The commit a git asset's ref names (lock time)."""
    repo = mirror(workspace, url)
    commit = resolve_ref(repo, url, ref)
    ensure_commit(repo, url, commit)
    return commit


def url_asset_sha256(workspace: Workspace, url: str, sha1: str | None) -> str:
    """Download an asset once (lock time), check the upstream sha1 if given, return its sha256."""
    path = workspace.download_path(url)
    if not path.exists():
        download(url, path)
    if sha1 is not None:
        check_sha1(path, url, sha1)
    return sha256_file(path)
