"""Sources at build time: a work tree holding exactly the locked source, its assets
staged beside it, each verified by content (commit or sha256) before use.

Three kinds of source: ``git`` (the locked commit checked out from the workspace's
bare mirror, submodules recursively), ``url`` (an archive verified by sha256 and
extracted), ``path`` (a directory of this project, checked against its tree hash).
Nothing falls back: a hash that differs or a commit that is missing is an error
naming what to do. Pinning them (lock time) is ``sparkforge.locking.pins``.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import git

from sparkforge.config.recipes import Recipe, source_root
from sparkforge.locking.lockfile import LockedAsset, LockedSource
from sparkforge.util.errors import SourceError
from sparkforge.util.fetch import (
    check_sha1,
    download,
    ensure_commit,
    git_reason,
    mirror,
    submodule_urls,
    tree_files,
    tree_sha256,
    verified_archive,
)
from sparkforge.util.workspace import Workspace

__all__ = ["materialize", "stage_assets", "submodule_excludes", "tree_sha256"]


# ---------------------------------------------------------------- path sources


# ----------------------------------------------------------------- git sources


# ----------------------------------------------------------------- url sources


def _extract(path: Path, dest: Path) -> None:
    """Extract an archive into ``dest``, dropping a single top-level directory."""
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest.parent))
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for name in archive.namelist():
                    parts = PurePosixPath(name).parts
                    if name.startswith("/") or ".." in parts:
                        raise SourceError(
                            f"{path}: member '{name}' escapes the archive; refusing it"
                        )
                archive.extractall(tmp)
        else:
            with tarfile.open(path) as archive:
                try:
                    archive.extractall(tmp, filter="data")
                except tarfile.FilterError as exc:
                    raise SourceError(f"{path}: {exc}; refusing the archive") from None
        entries = list(tmp.iterdir())
        top = entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp
        os.replace(top, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _checkout(
    workspace: Workspace,
    url: str,
    commit: str,
    dest: Path,
    submodules: bool,
    exclude: Sequence[str] = (),
) -> None:
    """A work tree of ``url`` at exactly ``commit``; submodules at the commits it records.

    Every repository, submodules included, comes from its bare mirror in the workspace
    (so a bundle's mirrors serve an offline machine). ``exclude`` paths (from this
    tree's root, across submodule boundaries) are not checked out (sparse checkout), and
    a submodule under one is not fetched at all.
    """
    repo = mirror(workspace, url)
    ensure_commit(repo, url, commit)
    try:
        # The work tree's repository borrows the mirror's objects (alternates): nothing is
        # copied, and a mirror holding only what a checkout reads (a bundle's) serves it.
        dest.mkdir(parents=True, exist_ok=True)
        checkout = git.Repo.init(dest)
        objects = Path(checkout.git_dir) / "objects"
        (objects / "info").mkdir(parents=True, exist_ok=True)
        (objects / "info" / "alternates").write_text(f"{Path(repo.git_dir, 'objects').resolve()}\n")
        if (Path(repo.git_dir) / "shallow").is_file():  # history the mirror does not have
            shutil.copyfile(Path(repo.git_dir) / "shallow", Path(checkout.git_dir) / "shallow")
        if exclude:
            patterns = [f"!/{path.strip('/')}/" for path in exclude]
            checkout.git.sparse_checkout("set", "--no-cone", "/*", *patterns)
        checkout.git.checkout("--detach", commit)
    except git.GitCommandError as exc:
        raise SourceError(f"cannot check out {url} at {commit}: {git_reason(exc)}") from None
    if checkout.head.commit.hexsha != commit:
        raise SourceError(
            f"{dest}: checkout is at {checkout.head.commit.hexsha}, lock says {commit}"
        )
    if submodules:
        for path, sub_url, sub_commit in submodule_urls(checkout, url, commit):
            inner = submodule_excludes(path, exclude)
            if inner is None:
                continue
            target = dest / path
            shutil.rmtree(target, ignore_errors=True)
            _checkout(workspace, sub_url, sub_commit, target, True, inner)


def submodule_excludes(path: str, exclude: Sequence[str]) -> list[str] | None:
    """The ``exclude`` paths that fall inside the submodule at ``path``, relative to it;
    None when the submodule itself is excluded (then it is not fetched at all)."""
    paths = [e.strip("/") for e in exclude]
    if any(path == e or path.startswith(e + "/") for e in paths):
        return None
    return [e[len(path) + 1 :] for e in paths if e.startswith(path + "/")]


# ------------------------------------------------------------------ public API


# ------------------------------------------------------------------------ assets


def stage_assets(
    assets: Sequence[LockedAsset], workspace: Workspace, root: Path, platform: str
) -> list[LockedAsset]:
    """Put every asset for ``platform`` under ``root``, each verified; returns those staged."""
    staged = []
    for asset in assets:
        if asset.platform is not None and asset.platform != platform:
            continue
        dest = root / asset.dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        if asset.kind == "git":
            _checkout(workspace, str(asset.git), str(asset.commit), dest, asset.submodules,
                      asset.exclude)  # fmt: skip
        else:
            url = str(asset.url)
            path = workspace.download_path(url)
            if asset.sha256 is not None:
                path = verified_archive(workspace, url, asset.sha256)
            else:
                if not path.exists():
                    download(url, path)
                check_sha1(path, url, str(asset.sha1))
            if asset.unpack:
                _extract(path, dest)
            else:
                shutil.copyfile(path, dest)
        staged.append(asset)
    return staged


def materialize(
    project: Path, recipe: Recipe, locked: LockedSource, workspace: Workspace, dest: Path
) -> None:
    """Create ``dest`` holding exactly the locked source (build time)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if locked.kind == "path":
        root = source_root(project, recipe)
        actual = tree_sha256(root)
        if actual != locked.tree_sha256:
            raise SourceError(
                f"{root}: source tree changed since it was locked (tree sha256 {actual[:12]}…, "
                f"lock {str(locked.tree_sha256)[:12]}…); run `nox -s lock -- {recipe.name}`"
            )
        for path in tree_files(root):
            target = dest / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target, follow_symlinks=False)
        return
    if locked.kind == "git":
        _checkout(workspace, str(locked.git), str(locked.commit), dest, recipe.source.submodules)
        return
    _extract(verified_archive(workspace, str(locked.url), str(locked.sha256)), dest)
