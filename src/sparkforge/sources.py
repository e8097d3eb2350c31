"""Sources: resolve (at lock time) and materialize (at build time) a verified tree.

Three kinds, each pinned by content:

* ``git``: a bare mirror per URL in the workspace (GitPython), the locked commit
  checked out, submodules recursively;
* ``url``: an archive downloaded once into the workspace and verified by sha256
  before every use;
* ``path``: a directory of this project (the probe), pinned by a tree hash.

Nothing falls back: a ref that does not resolve, a hash that differs or a
commit that is missing is an error naming what to do.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import git

from . import faults
from .digest import sha256_file
from .errors import SourceError
from .lock import SHA1_HEX, LockedSource
from .recipes import Recipe
from .workspace import Workspace

# Never part of a path source: VCS data and build output next to the sources.
_IGNORED = {".git", "__pycache__", "build", "dist", ".pytest_cache", "_skbuild"}


@dataclass(frozen=True)
class Resolved:
    source: LockedSource
    source_date_epoch: int


# ---------------------------------------------------------------- path sources


def _tree_files(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in _IGNORED and not d.endswith(".egg-info")
        )
        for name in sorted(filenames):
            yield Path(dirpath) / name


def tree_sha256(root: Path) -> str:
    """Content hash of a directory: relative paths, exec bits and file hashes."""
    digest = hashlib.sha256()
    for path in _tree_files(root):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            entry = f"L {rel} {os.readlink(path)}\n"
        else:
            mode = "X" if os.access(path, os.X_OK) else "F"
            entry = f"{mode} {rel} {sha256_file(path)}\n"
        digest.update(entry.encode())
    return digest.hexdigest()


def _path_epoch(root: Path) -> int:
    """Last commit time of the directory in its git repository, else newest mtime."""
    try:
        out = subprocess.run(
            ["git", "log", "-1", "--format=%ct", "--", "."],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if out:
            return int(out)
    except (OSError, subprocess.CalledProcessError):
        pass
    return max((int(p.lstat().st_mtime) for p in _tree_files(root)), default=0)


def _path_root(project: Path, recipe: Recipe) -> Path:
    rel = recipe.spec.source.path or ""
    root = (project / rel).resolve()
    if not root.is_dir():
        raise SourceError(f"{recipe.path}: key 'source.path': directory {root} does not exist")
    return root


# ----------------------------------------------------------------- git sources


def _mirror(workspace: Workspace, url: str) -> git.Repo:
    """A bare mirror of ``url`` in the workspace, created on first use."""
    path = workspace.git_mirrors / (hashlib.sha256(url.encode()).hexdigest()[:16] + ".git")
    if (path / "HEAD").exists():
        return git.Repo(path)
    workspace.git_mirrors.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".mirror-", dir=workspace.git_mirrors))
    try:
        git.Repo.clone_from(url, tmp, mirror=True)
    except git.GitCommandError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SourceError(
            f"cannot mirror {url}: {_git_reason(exc)}; check the URL and your network"
        ) from None
    os.replace(tmp, path)
    return git.Repo(path)


def _git_reason(exc: git.GitCommandError) -> str:
    lines = [line.strip() for line in str(exc.stderr).splitlines() if line.strip()]
    return (lines[-1] if lines else str(exc)).removeprefix("stderr: ").strip("'")


def _has_commit(repo: git.Repo, commit: str) -> bool:
    try:
        return bool(repo.git.cat_file("-t", commit) == "commit")
    except git.GitCommandError:
        return False


def _ensure_commit(repo: git.Repo, url: str, commit: str) -> None:
    if _has_commit(repo, commit):
        return
    try:
        repo.git.fetch("--prune", "origin", "+refs/*:refs/*")
    except git.GitCommandError as exc:
        raise SourceError(f"cannot update mirror of {url}: {_git_reason(exc)}") from None
    if not _has_commit(repo, commit):
        raise SourceError(
            f"commit {commit} is not in {url} (force-pushed away?); re-lock to a commit that exists"
        )


def _resolve_ref(repo: git.Repo, url: str, ref: str) -> str:
    if SHA1_HEX.match(ref):
        return ref
    try:
        repo.git.fetch("--prune", "origin", "+refs/*:refs/*")
        return str(repo.git.rev_parse("--verify", f"{ref}^{{commit}}"))
    except git.GitCommandError:
        raise SourceError(
            f"ref '{ref}' does not exist in {url}; use an existing tag, branch or commit"
        ) from None


def check_submodules(repo: git.Repo, url: str) -> None:
    """Every submodule must be at exactly the commit its superproject records.

    ``git submodule status`` marks a checkout at another commit with ``+`` and an
    uninitialized one with ``-`` (``U``: merge conflict); any of them is refused.
    """
    for line in str(repo.git.submodule("status", "--recursive")).splitlines():
        if line[:1] in "+-U" and line.strip():
            commit, path = line[1:].split()[:2]
            state = {"+": f"is at {commit}, not the commit", "-": "is not checked out at the commit",
                     "U": "has conflicts instead of the commit"}[line[0]]  # fmt: skip
            raise SourceError(
                f"{url}: submodule {path} {state} the superproject records; refusing the tree "
                "(delete the build directory and retry; report it if it persists)"
            )


# ----------------------------------------------------------------- url sources


def _download(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".download-", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            out.write(response.read(1 << 16))
            out.flush()
            faults.point("download:partial")
            shutil.copyfileobj(response, out, 1 << 20)
    except OSError as exc:
        os.unlink(tmp)
        raise SourceError(f"cannot download {url}: {exc}; check the URL and your network") from None
    os.replace(tmp, dest)


def _archive_path(workspace: Workspace, url: str) -> Path:
    name = PurePosixPath(url.split("?")[0]).name or "archive"
    return workspace.downloads / hashlib.sha256(url.encode()).hexdigest()[:16] / name


def _verified_archive(workspace: Workspace, url: str, expected: str) -> Path:
    path = _archive_path(workspace, url)
    if not path.exists():
        _download(url, path)
    actual = sha256_file(path)
    if actual != expected:
        path.unlink()
        raise SourceError(
            f"sha256 mismatch for {url}: lock says {expected}, got {actual}; the file changed "
            "upstream or the download is corrupt. Nothing was used; re-lock only if you trust it"
        )
    return path


def _archive_epoch(path: Path) -> int:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            times = [dt.datetime(*info.date_time, tzinfo=dt.UTC) for info in archive.infolist()]
            return int(max(times).timestamp()) if times else 0
    with tarfile.open(path) as archive:
        return max((int(m.mtime) for m in archive.getmembers()), default=0)


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


# ------------------------------------------------------------------ public API


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
    spec = recipe.spec.source
    if spec.path is not None:
        root = _path_root(project, recipe)
        locked = LockedSource(kind="path", path=spec.path, tree_sha256=tree_sha256(root))
        return Resolved(locked, _path_epoch(root))
    if spec.git is not None:
        ref = recipe.spec.versions[version].ref or ""
        repo = _mirror(workspace, spec.git)
        keep = (
            previous is not None and previous.kind == "git" and previous.ref == ref and not upgrade
        )
        commit = (
            previous.commit
            if keep and previous and previous.commit
            else _resolve_ref(repo, spec.git, ref)
        )
        _ensure_commit(repo, spec.git, commit)
        epoch = int(repo.commit(commit).committed_date)
        return Resolved(LockedSource(kind="git", git=spec.git, ref=ref, commit=commit), epoch)
    url = (spec.url or "").format(version=version)
    path = _archive_path(workspace, url)
    if previous is not None and previous.kind == "url" and previous.url == url and previous.sha256:
        path = _verified_archive(workspace, url, previous.sha256)
    else:
        _download(url, path)
    return Resolved(
        LockedSource(kind="url", url=url, sha256=sha256_file(path)), _archive_epoch(path)
    )


def materialize(
    project: Path, recipe: Recipe, locked: LockedSource, workspace: Workspace, dest: Path
) -> None:
    """Create ``dest`` holding exactly the locked source (build time)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if locked.kind == "path":
        root = _path_root(project, recipe)
        actual = tree_sha256(root)
        if actual != locked.tree_sha256:
            raise SourceError(
                f"{root}: source tree changed since it was locked (tree sha256 {actual[:12]}…, "
                f"lock {str(locked.tree_sha256)[:12]}…); run `nox -s lock -- {recipe.name}`"
            )
        for path in _tree_files(root):
            target = dest / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target, follow_symlinks=False)
        return
    if locked.kind == "git":
        url, commit = str(locked.git), str(locked.commit)
        repo = _mirror(workspace, url)
        _ensure_commit(repo, url, commit)
        try:
            checkout = git.Repo.clone_from(repo.git_dir, dest, no_checkout=True)
            checkout.git.checkout("--detach", commit)
            if recipe.spec.source.submodules:
                checkout.git.submodule("update", "--init", "--recursive", "--jobs", "4")
                check_submodules(checkout, url)
        except git.GitCommandError as exc:
            raise SourceError(f"cannot check out {url} at {commit}: {_git_reason(exc)}") from None
        if checkout.head.commit.hexsha != commit:
            raise SourceError(
                f"{dest}: checkout is at {checkout.head.commit.hexsha}, lock says {commit}"
            )
        return
    _extract(_verified_archive(workspace, str(locked.url), str(locked.sha256)), dest)
