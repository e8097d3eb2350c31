"""Bundles: one plan's verified inputs in one file, for a machine with no network.

``sparkforge bundle RECIPE …`` fetches and verifies what the build of one plan reads
(as a build would) and writes it into one ``.tar.xz``:

* ``project/``: the files that decide the build (the recipe, its patch series,
  the targets, ``lock.toml``, the builder files);
* ``git/``: for the git source and every git asset, submodules included, a pack of
  exactly the objects of the locked commit's tree (minus the asset's ``exclude``
  paths), without history;
* ``downloads/``: the locked archives (an sdist, url assets) as fetched;
* ``wheels/``: the locked build requirements for the target's platform and Python;
* ``needs/``: this wheelhouse's builds of the needed recipes, by build key;
* ``manifest.json``: every member's sha256, and what each is.

``build --from-bundle FILE`` verifies the whole file against its manifest and every
input against the bundled lock (sha256 of archives and wheels, git's own object ids
when packs are indexed, the locked commit of every repository), seeds a fresh
workspace from it and builds with no index and no download.
"""

from __future__ import annotations

import json
import lzma
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import git

from sparkforge import __version__
from sparkforge.building.buildenv import stage_wheels
from sparkforge.building.plan import BuildPlan
from sparkforge.sources.materialize import (
    materialize,
    stage_assets,
    submodule_excludes,
)
from sparkforge.util.digest import sha256_file
from sparkforge.util.errors import SourceError
from sparkforge.util.fetch import mirror, submodule_urls
from sparkforge.util.workspace import Workspace
from sparkforge.wheelhouse.store import Wheelhouse

BUNDLE_FORMAT = 1
#: The files of a project that decide a build, besides the recipe's own directory.
PROJECT_FILES = ("lock.toml", "Dockerfile.builder", "builder.toml", "builder-tools.txt",
                 "engines.toml")  # fmt: skip


class BundleError(SourceError):
    """A bundle is unreadable, incomplete, or does not match its manifest or lock."""


@dataclass(frozen=True)
class GitSnapshot:
    """The objects of one commit's tree (no history), minus excluded paths."""

    url: str
    commit: str
    exclude: tuple[str, ...]


def git_snapshots(
    workspace: Workspace, url: str, commit: str, submodules: bool, exclude: Sequence[str]
) -> list[GitSnapshot]:
    """The repository and, recursively, the submodules a checkout of ``commit`` reads."""
    found = [GitSnapshot(url, commit, tuple(exclude))]
    if not submodules:
        return found
    repo = mirror(workspace, url)
    for path, sub_url, sub_commit in submodule_urls(repo, url, commit):
        inner = submodule_excludes(path, exclude)
        if inner is not None:
            found += git_snapshots(workspace, sub_url, sub_commit, True, inner)
    return found


def _pack(workspace: Workspace, snapshot: GitSnapshot, dest: Path) -> Path:
    """A pack of the commit and its tree's objects, excluded paths' blobs left out."""
    repo = mirror(workspace, snapshot.url)
    listing = str(repo.git.ls_tree("-r", "-t", "--full-tree", snapshot.commit))
    oids = [snapshot.commit, str(repo.git.rev_parse(f"{snapshot.commit}^{{tree}}"))]
    excluded = [e.strip("/") for e in snapshot.exclude]
    for line in listing.splitlines():
        meta, _, path = line.partition("\t")
        kind, oid = meta.split()[1:3]
        if kind == "commit":  # a gitlink: the submodule is its own snapshot
            continue
        if kind == "blob" and any(path == e or path.startswith(e + "/") for e in excluded):
            continue
        oids.append(oid)
    done = subprocess.run(["git", "pack-objects", "--stdout", "-q"], cwd=repo.git_dir,
                          input="\n".join(oids).encode(), capture_output=True)  # fmt: skip
    if done.returncode != 0:
        raise BundleError(
            f"cannot pack {snapshot.url}@{snapshot.commit}: {done.stderr.decode().strip()[-200:]}"
        )
    dest.write_bytes(done.stdout)
    return dest


def write(plan: BuildPlan, out: Path, note: Callable[[str], None]) -> tuple[Path, dict[str, Any]]:
    """Write the bundle of ``plan`` to ``out``; returns it and its manifest."""
    workspace = plan.workspace
    entry = plan.lock
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sparkforge-bundle-", dir=out.parent) as tmp:
        # Fetch and verify everything as a build would (the workspace caches keep it).
        materialize(plan.project, plan.recipe, entry.source, workspace, Path(tmp) / "src")
        stage_assets(plan.assets, workspace, Path(tmp) / "assets", plan.target.platform)
        note(
            f"fetched and verified {plan.recipe.name} {plan.version} and {len(plan.assets)} assets"
        )
        root = Path(tmp) / "bundle"
        project = root / "project"
        shutil.copytree(plan.recipe.directory, project / "recipes" / plan.recipe.name)
        if plan.series.patches:
            shutil.copytree(plan.series.directory,
                            project / "patches" / plan.recipe.name / plan.version)  # fmt: skip
        shutil.copytree(plan.project / "targets", project / "targets")
        for need in plan.need_keys:  # recipes the build reads needs' dists and versions from
            shutil.copytree(plan.project / "recipes" / need, project / "recipes" / need)
        for name in PROJECT_FILES:
            if (plan.project / name).is_file():
                shutil.copy2(plan.project / name, project / name)
        if entry.source.kind == "path":  # a directory of this project (the probe)
            materialize(plan.project, plan.recipe, entry.source, workspace,
                        project / str(entry.source.path))  # fmt: skip
        manifest: dict[str, Any] = {
            "format": BUNDLE_FORMAT, "sparkforge": __version__, "recipe": plan.recipe.name,
            "version": plan.version, "target": plan.target.name, "build_key": plan.build_key,
            "need_keys": plan.need_keys, "need_versions": plan.need_versions,
        }  # fmt: skip
        # Archives: the source (url) and url assets, as the workspace keeps them.
        urls = [(entry.source.url, entry.source.sha256)] if entry.source.kind == "url" else []
        urls += [(a.url, a.sha256 or a.sha1) for a in plan.assets if a.kind == "url"]
        archives = []
        for url, pin in urls:
            path = workspace.download_path(str(url))
            if not path.is_file():
                raise BundleError(f"{url} is not in the workspace; run the build's sources first")
            rel = path.relative_to(workspace.root)
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, root / rel)
            archives.append({"url": url, "path": rel.as_posix(), "pin": pin})
        manifest["archives"] = archives
        # Git: the source and git assets, with their submodules.
        repos: list[GitSnapshot] = []
        if entry.source.kind == "git":
            repos += git_snapshots(workspace, str(entry.source.git), str(entry.source.commit),
                                   plan.recipe.source.submodules, ())  # fmt: skip
        for asset in plan.assets:
            if asset.kind == "git":
                repos += git_snapshots(workspace, str(asset.git), str(asset.commit),
                                       asset.submodules, asset.exclude)  # fmt: skip
        packs = []
        (root / "git").mkdir()
        for number, snapshot in enumerate(dict.fromkeys(repos)):
            pack = _pack(workspace, snapshot, root / "git" / f"{number:03d}.pack")
            packs.append({"url": snapshot.url, "commit": snapshot.commit,
                          "exclude": list(snapshot.exclude), "path": f"git/{pack.name}"})  # fmt: skip
            note(
                f"packed {snapshot.url}@{snapshot.commit[:12]} ({pack.stat().st_size / 1e6:.1f} MB)"
            )
        manifest["git"] = packs
        # Wheels: the locked build requirements for the target, hash-checked by pip.
        stage_wheels(entry.build_requires, python=plan.target.python,
                     manylinux=plan.target.manylinux, dest=root / "wheels")  # fmt: skip
        (root / "wheels").mkdir(exist_ok=True)
        # Needs: this wheelhouse's builds, by key (an installed need stays where it is).
        needs = {}
        house = Wheelhouse(plan.wheelhouse)
        for need, key in plan.need_keys.items():
            found = house.built(key) if key and need not in plan.installed_needs else None
            if found is not None:
                (root / "needs" / key).mkdir(parents=True)
                shutil.copy2(found, root / "needs" / key / found.name)
                needs[need] = f"needs/{key}/{found.name}"
            else:
                note(f"{need} is not in the wheelhouse: the far side provides it "
                     "(build it there, or --installed-need)")  # fmt: skip
        manifest["needs"] = needs
        manifest["files"] = {
            p.relative_to(root).as_posix(): sha256_file(p)
            for p in sorted(root.rglob("*")) if p.is_file()
        }  # fmt: skip
        (root / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        partial = out.with_name(f".{out.name}.partial")
        with lzma.open(partial, "wb", preset=6) as xz, tarfile.open(fileobj=xz, mode="w") as tar:
            for path in sorted(root.rglob("*")):
                tar.add(path, arcname=path.relative_to(root).as_posix(), recursive=False)
        partial.replace(out)
    return out, manifest


@dataclass(frozen=True)
class Unpacked:
    """A verified bundle, unpacked: its project, and a workspace seeded from it."""

    project: Path
    workspace: Workspace
    manifest: dict[str, Any]


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    for member in tar:
        name = Path(member.name)
        if (
            member.name.startswith("/")
            or ".." in name.parts
            or not (member.isfile() or member.isdir())
        ):
            raise BundleError(f"bundle member {member.name!r} is not a plain relative path")
        yield member


def unpack(bundle: Path, dest: Path) -> Unpacked:
    """Verify ``bundle`` against its manifest, unpack it under ``dest`` and seed a fresh
    workspace there: archives in the download cache, git packs indexed into bare mirrors
    (git checks every object id), wheels and needs where the build takes them from."""
    staging = dest / "bundle"
    try:
        with lzma.open(bundle, "rb") as xz, tarfile.open(fileobj=xz, mode="r|") as tar:
            for member in _members(tar):
                tar.extract(member, staging, filter="data")
    except (OSError, lzma.LZMAError, tarfile.TarError) as exc:
        raise BundleError(f"{bundle}: not a readable sparkforge bundle ({exc})") from None
    try:
        manifest = json.loads((staging / "manifest.json").read_text())
    except (OSError, ValueError):
        raise BundleError(f"{bundle}: no readable manifest.json; not a sparkforge bundle") from None
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(
            f"{bundle}: bundle format {manifest.get('format')}, this sparkforge reads {BUNDLE_FORMAT}"
        )
    files: dict[str, str] = manifest["files"]
    present = {p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file()} - {
        "manifest.json"
    }
    if present != set(files):
        extra = sorted(present ^ set(files))
        raise BundleError(
            f"{bundle}: members and manifest differ ({extra[0]}); the file is damaged"
        )
    for rel, digest in files.items():
        if sha256_file(staging / rel) != digest:
            raise BundleError(
                f"{bundle}: {rel} does not match its sha256 in the manifest; the file is damaged"
            )
    workspace = Workspace(dest / "workspace")
    for archive in manifest["archives"]:
        target = workspace.root / archive["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(staging / archive["path"], target)  # verified against the lock when used
    for pack in manifest["git"]:
        _index(workspace, staging / pack["path"], pack["url"], pack["commit"])
    shutil.copytree(staging / "wheels", workspace.root / "bundle-wheels")
    for _need, rel in dict(manifest["needs"]).items():
        key = Path(rel).parent.name
        (workspace.root / "bundle-needs" / key).mkdir(parents=True)
        shutil.copy2(staging / rel, workspace.root / "bundle-needs" / key / Path(rel).name)
    return Unpacked(staging / "project", workspace, manifest)


def _index(workspace: Workspace, pack: Path, url: str, commit: str) -> None:
    """A bare mirror for ``url`` holding the pack (shallow at ``commit``)."""
    path = workspace.git_mirror(url)
    if not (path / "HEAD").exists():
        git.Repo.init(path, bare=True)
    done = subprocess.run(["git", "index-pack", "--stdin", "--fix-thin"], cwd=path,
                          stdin=pack.open("rb"), capture_output=True)  # fmt: skip
    if done.returncode != 0:
        raise BundleError(f"git refuses the pack of {url}: {done.stderr.decode().strip()[-200:]}")
    repo = git.Repo(path)
    try:
        kind = repo.git.cat_file("-t", commit)
    except git.GitCommandError:
        kind = ""
    if kind != "commit":
        raise BundleError(f"the pack of {url} does not hold the locked commit {commit}")
    with (path / "shallow").open("a") as shallow:
        shallow.write(commit + "\n")
    # A branch, so that a clone of this mirror (a checkout) fetches the commit.
    repo.git.update_ref(f"refs/heads/sparkforge/{commit}", commit)
