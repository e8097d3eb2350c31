"""Fetching, written once for lock time and build time alike.

Bare git mirrors in the workspace (GitPython), downloads that land whole or not at
all, archives verified by sha256, the content hash of a directory tree, and PyPI's
published sdist for a release. Every failure is one :class:`SourceError` line.
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
from collections.abc import Iterator
from pathlib import Path

import git

from sparkforge.util import faults
from sparkforge.util.digest import SHA1_HEX, sha1_file, sha256_file
from sparkforge.util.errors import SourceError
from sparkforge.util.files import atomic_output
from sparkforge.util.workspace import Workspace

# Never part of a path source: VCS data and build output next to the sources.
_IGNORED = {".git", "__pycache__", "build", "dist", ".pytest_cache", "_skbuild"}


def tree_files(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in _IGNORED and not d.endswith(".egg-info")
        )
        for name in sorted(filenames):
            yield Path(dirpath) / name


def tree_sha256(root: Path) -> str:
    """Content hash of a directory: relative paths, exec bits and file hashes."""
    digest = hashlib.sha256()
    for path in tree_files(root):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            entry = f"L {rel} {os.readlink(path)}\n"
        else:
            mode = "X" if os.access(path, os.X_OK) else "F"
            entry = f"{mode} {rel} {sha256_file(path)}\n"
        digest.update(entry.encode())
    return digest.hexdigest()


def path_epoch(root: Path) -> int:
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
    return max((int(p.lstat().st_mtime) for p in tree_files(root)), default=0)


def mirror(workspace: Workspace, url: str) -> git.Repo:
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
            f"cannot mirror {url}: {git_reason(exc)}; check the URL and your network"
        ) from None
    os.replace(tmp, path)
    return git.Repo(path)


def git_reason(exc: git.GitCommandError) -> str:
    lines = [line.strip() for line in str(exc.stderr).splitlines() if line.strip()]
    reason = (lines[-1] if lines else "").removeprefix("stderr: ").strip("'").strip()
    return reason or f"git exited with {exc.status}"


def _has_commit(repo: git.Repo, commit: str) -> bool:
    try:
        return bool(repo.git.cat_file("-t", commit) == "commit")
    except git.GitCommandError:
        return False


def ensure_commit(repo: git.Repo, url: str, commit: str) -> None:
    if _has_commit(repo, commit):
        return
    try:
        repo.git.fetch("--prune", "origin", "+refs/*:refs/*")
    except git.GitCommandError as exc:
        raise SourceError(f"cannot update mirror of {url}: {git_reason(exc)}") from None
    if not _has_commit(repo, commit):
        raise SourceError(
            f"commit {commit} is not in {url} (force-pushed away?); re-lock to a commit that exists"
        )


def resolve_ref(repo: git.Repo, url: str, ref: str) -> str:
    if SHA1_HEX.match(ref):
        return ref
    try:
        repo.git.fetch("--prune", "origin", "+refs/*:refs/*")
        return str(repo.git.rev_parse("--verify", f"{ref}^{{commit}}"))
    except git.GitCommandError:
        raise SourceError(
            f"ref '{ref}' does not exist in {url}; use an existing tag, branch or commit"
        ) from None


def download(url: str, dest: Path) -> None:
    """``url`` into ``dest``, whole or not at all."""
    try:
        with atomic_output(dest) as out, urllib.request.urlopen(url, timeout=60) as response:
            out.write(response.read(1 << 16))
            out.flush()
            faults.point("download:partial")
            shutil.copyfileobj(response, out, 1 << 20)
    except OSError as exc:
        raise SourceError(f"cannot download {url}: {exc}; check the URL and your network") from None


def verified_archive(workspace: Workspace, url: str, expected: str) -> Path:
    path = workspace.download_path(url)
    if not path.exists():
        download(url, path)
    actual = sha256_file(path)
    if actual != expected:
        path.unlink()
        raise SourceError(
            f"sha256 mismatch for {url}: lock says {expected}, got {actual}; the file changed "
            "upstream or the download is corrupt. Nothing was used; re-lock only if you trust it"
        )
    return path


def archive_epoch(path: Path) -> int:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            times = [dt.datetime(*info.date_time, tzinfo=dt.UTC) for info in archive.infolist()]
            return int(max(times).timestamp()) if times else 0
    with tarfile.open(path) as archive:
        return max((int(m.mtime) for m in archive.getmembers()), default=0)


def submodule_urls(repo: git.Repo, url: str, commit: str) -> list[tuple[str, str, str]]:
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


def archive_member(path: Path, relpath: str) -> str:
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


def check_sha1(path: Path, url: str, expected: str) -> None:
    actual = sha1_file(path)
    if actual != expected:
        path.unlink()
        raise SourceError(
            f"sha1 mismatch for {url}: the pinned manifest says {expected}, got {actual}; "
            "nothing was used"
        )
