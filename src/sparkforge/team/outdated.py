"""``sparkforge outdated``: per recipe, what is locked, what upstream released, and whether
upstream's own wheel for the target already runs on the target GPU.

The index is read through PyPI's JSON API (``<index>/<project>/json``). For the
newest release, the wheel an installer on the target would pick (by the target's
tags, best first) is downloaded, checked against the index's sha256, judged with
the same reader and rules as ``sparkforge inspect``, and deleted; the verdict is
cached under the workspace by the wheel's sha256, so a second run reads no wheel.
The answer per recipe is "pip install" when that wheel runs on every arch of the
target, else "build".
"""

from __future__ import annotations

import hashlib
import http.client
import json
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from sparkforge.config.recipes import Recipe
from sparkforge.config.targets import Target, ordered_target_tags
from sparkforge.util.errors import SparkforgeError
from sparkforge.util.files import write_atomic
from sparkforge.util.workspace import Workspace
from sparkforge.wheel.inspect import judge

DEFAULT_INDEX = "https://pypi.org/pypi"
# Bump when the audit's rules or the cached fields change: old verdicts are then re-read.
VERDICT_FORMAT = 1
_CHUNK = 1 << 20

Progress = Callable[[str], None]
_VERDICT_KEYS = {"wheel", "sha256", "verdict", "runs", "summary", "reasoning"}


class IndexError_(SparkforgeError):
    """The package index could not be read."""


@dataclass(frozen=True)
class UpstreamFile:
    filename: str
    url: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Release:
    """The newest release of a project on the index and its files."""

    version: str
    files: tuple[UpstreamFile, ...]


@dataclass
class Row:
    """One recipe's line in the table (and one object of ``--json``)."""

    recipe: str
    dist: str
    listed: list[str]  # the recipe's versions (and versions locked on demand)
    unlocked: list[str]  # listed versions with no lock entry yet
    default: str
    newest: str | None
    moved: bool  # upstream released something newer than every listed release
    wheel: str | None = None
    verdict: str | None = None  # the audit's word for the worst arch, or None (not judged)
    runs: bool | None = None
    answer: str = ""
    reasoning: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def newest_release(index: str, dist: str) -> Release | None:
    """The newest final release of ``dist`` that has files, or None if the index has none."""
    url = f"{index.rstrip('/')}/{dist}/json"
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data = json.load(response)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise IndexError_(f"cannot read {url}: HTTP {exc.code}; check --index-url") from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise IndexError_(f"cannot read {url}: {exc}; check --index-url and the network") from None
    try:
        return _newest(data, url)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise IndexError_(
            f"{url} is not a PyPI JSON API response ({type(exc).__name__}: {exc}); "
            "check --index-url"
        ) from None


def _newest(data: Any, url: str) -> Release | None:
    """The newest final release with files in a PyPI JSON API document."""
    best: tuple[Version, str] | None = None
    for text, files in data.get("releases", {}).items():
        try:
            version = Version(text)
        except InvalidVersion:
            continue
        live = [f for f in files if not f.get("yanked")]
        if version.is_prerelease or version.is_devrelease or not live:
            continue
        if best is None or version > best[0]:
            best = (version, text)
    if best is None:
        return None
    files = tuple(  # a mirror may give URLs relative to the JSON document
        UpstreamFile(f["filename"], urljoin(url, f["url"]), f["digests"]["sha256"],
                     int(f.get("size", 0)))
        for f in data["releases"][best[1]]
        if not f.get("yanked")
    )  # fmt: skip
    return Release(best[1], files)


def pick_wheel(files: Sequence[UpstreamFile], target: Target) -> UpstreamFile | None:
    """The wheel an installer on the target would choose: the one whose best tag ranks
    highest among the target's tags (cp312 before abi3 before py3-none)."""
    rank = {tag: i for i, tag in enumerate(ordered_target_tags(target, older_policies=True))}
    best: tuple[int, UpstreamFile] | None = None
    for upstream in files:
        if not upstream.filename.endswith(".whl"):
            continue
        try:
            tags = parse_wheel_filename(upstream.filename)[3]
        except InvalidWheelFilename:
            continue
        ranks = [rank[tag] for tag in tags if tag in rank]
        if ranks and (best is None or min(ranks) < best[0]):
            best = (min(ranks), upstream)
    return best[1] if best else None


def _newest_locked(versions: Sequence[str]) -> Version | None:
    released = []
    for text in versions:
        try:
            released.append(Version(text))
        except InvalidVersion:
            continue  # "main" and other branches
    return max(released, default=None)


class VerdictCache:
    """Verdicts of upstream wheels by sha256, target and arch list, under the workspace."""

    def __init__(self, workspace: Workspace) -> None:
        self.root = workspace.root / "verdicts"

    def _path(self, sha256: str, target: Target, cuda_required: bool) -> Path:
        archs = "-".join(a.cmake for a in target.cuda_archs)
        cpu = "gpu" if cuda_required else "any"
        return self.root / f"v{VERDICT_FORMAT}-{sha256}-{target.name}-{archs}-{cpu}.json"

    def get(self, sha256: str, target: Target, cuda_required: bool) -> dict[str, Any] | None:
        """The cached verdict, or None when there is none or it is not a whole one."""
        try:
            data = json.loads(self._path(sha256, target, cuda_required).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or not set(data) >= _VERDICT_KEYS:
            return None
        return data

    def put(
        self, sha256: str, target: Target, cuda_required: bool, verdict: dict[str, Any]
    ) -> None:
        path = self._path(sha256, target, cuda_required)
        try:
            write_atomic(path, json.dumps(verdict, indent=2, sort_keys=True).encode())
        except OSError as exc:
            raise IndexError_(
                f"cannot write the verdict cache {path.parent}: {exc.strerror}; check the "
                "workspace (--workspace) is writable"
            ) from None


def _download(upstream: UpstreamFile, directory: Path, progress: Progress) -> Path:
    """Fetch one wheel into ``directory``, checking the index's sha256 as it streams."""
    dest = directory / upstream.filename
    digest = hashlib.sha256()
    size_mb = upstream.size / 1e6
    progress(f"downloading {upstream.filename} ({size_mb:.0f} MB) to judge it")
    try:
        with urllib.request.urlopen(upstream.url, timeout=120) as response, dest.open("wb") as out:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise IndexError_(f"cannot download {upstream.url}: {exc}; check the network") from None
    if digest.hexdigest() != upstream.sha256:
        raise IndexError_(
            f"{upstream.url}: sha256 {digest.hexdigest()} is not the index's {upstream.sha256}; "
            "the download is corrupt or the index changed; nothing was judged"
        )
    return dest


def judge_upstream(
    upstream: UpstreamFile,
    target: Target,
    *,
    cuda_required: bool,
    cache: VerdictCache,
    scratch: Path,
    progress: Progress,
) -> dict[str, Any]:
    """The audit verdict of one upstream wheel for the target (cached by its sha256)."""
    cached = cache.get(upstream.sha256, target, cuda_required)
    if cached is not None:
        return cached
    try:
        scratch.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IndexError_(f"cannot create {scratch}: {exc.strerror}; check --workspace") from None
    with tempfile.TemporaryDirectory(dir=scratch, prefix="outdated-") as tmp:
        wheel = _download(upstream, Path(tmp), progress)
        archs = {arch.name: arch.sm for arch in target.cuda_archs}
        judgement = judge(wheel, target.name, target.machine, archs, cuda_required=cuda_required)
    worst = judgement.worst_audit
    verdict = {
        "wheel": upstream.filename,
        "sha256": upstream.sha256,
        "verdict": judgement.verdict,
        "runs": judgement.ok,
        "summary": judgement.platform_problem or (worst.summary if worst else ""),
        "reasoning": list(worst.reasoning) if worst else [],
    }
    cache.put(upstream.sha256, target, cuda_required, verdict)
    return verdict


def row_for(
    recipe: Recipe,
    locked: Sequence[str],
    target: Target,
    *,
    index: str,
    audit: bool,
    cache: VerdictCache,
    scratch: Path,
    progress: Progress,
) -> Row:
    """One recipe: its locked versions against the index's newest and upstream's wheel."""
    dist = recipe.dist
    release = newest_release(index, dist)
    listed = sorted({*recipe.versions, *locked}, key=version_order)
    newest_listed = _newest_locked(listed)
    row = Row(
        recipe=recipe.name,
        dist=dist,
        listed=listed,
        unlocked=[v for v in listed if v not in locked],
        default=recipe.default_version(),
        newest=release.version if release else None,
        moved=bool(release and (newest_listed is None or Version(release.version) > newest_listed)),
    )
    if release is None:
        row.answer = f"build: no release on {index}"
        return row
    wheel = pick_wheel(release.files, target)
    if wheel is None:
        row.answer = f"build: no {target.platform} wheel for Python {target.python} upstream"
        return row
    row.wheel = wheel.filename
    if not audit:
        row.answer = "not judged (--no-audit)"
        return row
    verdict = judge_upstream(
        wheel, target, cuda_required=recipe.cuda, cache=cache, scratch=scratch,
        progress=progress,
    )  # fmt: skip
    row.verdict, row.runs = verdict["verdict"], verdict["runs"]
    row.reasoning = [verdict["summary"], *verdict["reasoning"]]
    if row.runs and row.verdict == "no-cuda-code":  # a recipe with cuda = false (triton)
        row.answer = (
            f"pip install {dist}=={release.version}: upstream's wheel has no device code "
            "(none expected)"
        )
    elif row.runs:
        row.answer = f"pip install {dist}=={release.version}: upstream's wheel is {row.verdict}"
    else:
        row.answer = f"build: upstream's wheel is {row.verdict}"
    return row


def version_order(text: str) -> tuple[int, Version | str]:
    """Releases in version order, then branches (``main``) by name."""
    try:
        return (0, Version(text))
    except InvalidVersion:
        return (1, text)


def wheel_tags(filename: str | None) -> str:
    """``cp312-cp312-manylinux_2_28_aarch64`` from a wheel's file name ("-" for none)."""
    if filename is None:
        return "-"
    return "-".join(filename.removesuffix(".whl").split("-")[-3:])
