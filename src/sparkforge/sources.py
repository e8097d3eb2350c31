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
import json
import os
import posixpath
import re
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import git

from . import faults
from .digest import sha1_file, sha256_file
from .errors import SourceError
from .lock import SHA1_HEX, LockedAsset, LockedSource
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
    path = workspace.git_mirror(url)
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
    reason = (lines[-1] if lines else "").removeprefix("stderr: ").strip("'").strip()
    return reason or f"git exited with {exc.status}"


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


def _verified_archive(workspace: Workspace, url: str, expected: str) -> Path:
    path = workspace.download_path(url)
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
    repo = _mirror(workspace, url)
    _ensure_commit(repo, url, commit)
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
        raise SourceError(f"cannot check out {url} at {commit}: {_git_reason(exc)}") from None
    if checkout.head.commit.hexsha != commit:
        raise SourceError(
            f"{dest}: checkout is at {checkout.head.commit.hexsha}, lock says {commit}"
        )
    if submodules:
        for path, sub_url, sub_commit in _submodule_urls(checkout, url, commit):
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


def _submodule_urls(repo: git.Repo, url: str, commit: str) -> list[tuple[str, str, str]]:
    """(path, URL, recorded commit) of each submodule of ``commit`` in ``repo`` (a mirror
    or a checkout): .gitmodules and the gitlinks of that commit's tree."""
    try:
        text = str(repo.git.show(f"{commit}:.gitmodules"))
    except git.GitCommandError:
        return []
    with tempfile.NamedTemporaryFile("w", suffix=".gitmodules") as handle:
        handle.write(text + "\n")
        handle.flush()
        try:
            listed = str(repo.git.config("-f", handle.name, "--get-regexp",
                                         r"^submodule\..*\.(path|url)$"))  # fmt: skip
        except git.GitCommandError:
            return []
    paths: dict[str, str] = {}
    urls: dict[str, str] = {}
    for line in listed.splitlines():
        key, _, value = line.partition(" ")
        name, _, field = key.removeprefix("submodule.").rpartition(".")
        (paths if field == "path" else urls)[name] = value.strip()
    found = []
    for name, path in sorted(paths.items(), key=lambda item: item[1]):
        entry = str(repo.git.ls_tree(commit, "--", path)).split()
        if len(entry) < 3 or entry[1] != "commit":
            continue  # listed in .gitmodules but not a gitlink at this commit
        sub_url = urls.get(name, "")
        if sub_url.startswith(("./", "../")):  # relative to the superproject's URL
            base = url.rstrip("/")
            sub_url = posixpath.normpath(posixpath.join(base, sub_url))
            sub_url = sub_url.replace(":/", "://", 1) if "://" in base else sub_url
        if not sub_url:
            raise SourceError(f"{url}: submodule {path} has no URL in .gitmodules")
        found.append((path, sub_url, entry[2]))
    return found


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
    if spec.pypi is not None and previous is not None and previous.kind == "url" and not upgrade:
        url = str(previous.url)  # the sdist of a released version never changes: keep its pin
    elif spec.pypi is not None:
        url, published = pypi_sdist(spec.pypi, version)
        path = workspace.download_path(url)
        _download(url, path)
        if sha256_file(path) != published:
            path.unlink()
            raise SourceError(f"{url}: sha256 differs from the one PyPI publishes; not locked")
    else:
        url = (spec.url or "").format(version=version)
    path = workspace.download_path(url)
    if previous is not None and previous.kind == "url" and previous.url == url and previous.sha256:
        path = _verified_archive(workspace, url, previous.sha256)
    elif not path.exists():
        _download(url, path)
    return Resolved(
        LockedSource(kind="url", url=url, sha256=sha256_file(path)), _archive_epoch(path)
    )


PYPI_JSON = "https://pypi.org/pypi/{name}/json"
# PyPI file URLs: /packages/<2 hex>/<2 hex>/<60 hex>/<file>; mirrors may serve them relative.
_PYPI_FILE = re.compile(r"packages/([0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{60}/[^/]+)$")


def pypi_sdist(project: str, version: str) -> tuple[str, str]:
    """The canonical URL and published sha256 of ``project``'s sdist for ``version``."""
    url = PYPI_JSON.format(name=project)
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data = json.load(response)
    except OSError as exc:
        raise SourceError(f"cannot read {url}: {exc}; check the name and network") from None
    files = data.get("releases", {}).get(version)
    if not files:
        raise SourceError(f"{url}: {project} has no release {version} on PyPI")
    sdists = [f for f in files if f.get("packagetype") == "sdist"]
    if len(sdists) != 1:
        raise SourceError(
            f"{project} {version} has {len(sdists)} sdists on PyPI, not one; use a git source"
        )
    match = _PYPI_FILE.search(str(sdists[0].get("url", "")))
    if match is None:
        raise SourceError(f"{url}: unexpected sdist URL {sdists[0].get('url')!r}")
    return f"https://files.pythonhosted.org/packages/{match.group(1)}", sdists[0]["digests"][
        "sha256"
    ]


def read_locked_file(
    project: Path, recipe: Recipe, locked: LockedSource, workspace: Workspace, relpath: str
) -> str:
    """One file of the pinned source tree, read without materializing it (lock time)."""
    try:
        if locked.kind == "path":
            return (_path_root(project, recipe) / relpath).read_text(encoding="utf-8")
        if locked.kind == "git":
            repo = _mirror(workspace, str(locked.git))
            return str(repo.git.show(f"{locked.commit}:{relpath}"))
        archive = _verified_archive(workspace, str(locked.url), str(locked.sha256))
        return _archive_member(archive, relpath)
    except (OSError, KeyError, git.GitCommandError):
        raise FileNotFoundError(relpath) from None


def _archive_member(path: Path, relpath: str) -> str:
    """``relpath`` below the archive's single top-level directory."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.split("/", 1)[-1] == relpath]
            return archive.read(names[0]).decode() if names else archive.read(relpath).decode()
    with tarfile.open(path) as archive:
        for member in archive.getmembers():
            if member.isfile() and member.name.split("/", 1)[-1] == relpath:
                handle = archive.extractfile(member)
                if handle is not None:
                    return handle.read().decode()
    raise KeyError(relpath)


# ------------------------------------------------------------------------ assets


def resolve_git_asset(workspace: Workspace, url: str, ref: str) -> str:
    """The commit a git asset's ref names (lock time)."""
    repo = _mirror(workspace, url)
    commit = _resolve_ref(repo, url, ref)
    _ensure_commit(repo, url, commit)
    return commit


def url_asset_sha256(workspace: Workspace, url: str, sha1: str | None) -> str:
    """Download an asset once (lock time), check the upstream sha1 if given, return its sha256."""
    path = workspace.download_path(url)
    if not path.exists():
        _download(url, path)
    if sha1 is not None:
        _check_sha1(path, url, sha1)
    return sha256_file(path)


def _check_sha1(path: Path, url: str, expected: str) -> None:
    actual = sha1_file(path)
    if actual != expected:
        path.unlink()
        raise SourceError(
            f"sha1 mismatch for {url}: the pinned manifest says {expected}, got {actual}; "
            "nothing was used"
        )


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
                path = _verified_archive(workspace, url, asset.sha256)
            else:
                if not path.exists():
                    _download(url, path)
                _check_sha1(path, url, str(asset.sha1))
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
        _checkout(
            workspace, str(locked.git), str(locked.commit), dest, recipe.spec.source.submodules
        )
        return
    _extract(_verified_archive(workspace, str(locked.url), str(locked.sha256)), dest)
