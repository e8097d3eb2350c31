"""Asset manifests: files in a pinned source that list what its build downloads.

Some upstream builds keep their download list in the source tree (onnxruntime's
``cmake/deps.txt``, triton's LLVM pin). A recipe names the manifest kind; at lock
time the file is read *from the pinned source* and expanded into assets, so the
assets move with the commit and nobody copies URLs by hand.

Each expander gets the file reader for the pinned tree and returns plain
:class:`ManifestAsset` records; the lock resolver pins and records them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from sparkforge.util.errors import LockError

ReadFile = Callable[[str], str]  # path inside the pinned source → text


@dataclass(frozen=True)
class ManifestAsset:
    name: str
    url: str
    dest: str  # relative to the build's assets directory
    sha1: str | None = None
    sha256: str | None = None
    unpack: bool = False
    platform: str | None = None


_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def onnxruntime_deps(read: ReadFile) -> list[ManifestAsset]:
    """``cmake/deps.txt``: ``name;url;sha1`` per line.

    ``build.py --cmake_deps_mirror_dir DIR`` makes CMake fetch ``https://HOST/PATH``
    from ``DIR/HOST/PATH`` and still checks the sha1, so each archive is staged at
    ``onnxruntime-deps/HOST/PATH``.
    """
    where = "cmake/deps.txt"
    assets = []
    for number, raw in enumerate(read(where).splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(";")
        if len(fields) != 3:
            raise LockError(f"{where}:{number}: expected 'name;url;sha1', got {line!r}")
        name, url, sha1 = (f.strip() for f in fields)
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.netloc:
            raise LockError(f"{where}:{number}: '{name}' has no https URL ({url!r})")
        if not _SHA1.match(sha1.lower()):
            raise LockError(f"{where}:{number}: '{name}' has no sha1 ({sha1!r})")
        dest = f"onnxruntime-deps/{parts.netloc}{parts.path}"
        assets.append(ManifestAsset(name=name, url=url, dest=dest, sha1=sha1.lower()))
    if not assets:
        raise LockError(f"{where}: lists no dependencies; is this an onnxruntime source tree?")
    return assets


# Triton's LLVM builds per target platform (names as in cmake/llvm-info.json).
_LLVM_SYSTEMS = {"linux_aarch64": "ubuntu-arm64", "linux_x86_64": "ubuntu-x64"}
_LLVM_BLOB = "https://oaitriton.blob.core.windows.net/public/llvm-builds"


def triton_llvm(read: ReadFile) -> list[ManifestAsset]:
    """Triton's prebuilt LLVM, one archive per platform, from ``cmake/llvm-info.json``.

    The file names the LLVM commit (``llvm_hash``), the build of it (``build_number``)
    and the sha256 of each system's archive (``sha256sum``). Triton's
    ``python/build_helpers.py`` (``get_llvm_package_info``) downloads
    ``llvm-{hash[:8]}-{system}-{build_number}.tar.gz``, from ``release_base_url`` when
    the file gives one, else from its public blob store; the archive's top directory
    has the same name and is dropped when staged, so ``LLVM_SYSPATH`` points at the
    tree itself. A wrong URL fails the download or the sha256 check.
    """
    where = "cmake/llvm-info.json"
    try:
        text = read(where)
    except FileNotFoundError:
        return _triton_llvm_hash_only(read)
    try:
        info = json.loads(text)
    except ValueError as exc:
        raise LockError(f"{where}: not JSON ({exc})") from None
    if not isinstance(info, dict):
        raise LockError(f"{where}: expected a JSON object")
    llvm_hash = str(info.get("llvm_hash", ""))
    if not _SHA1.match(llvm_hash):
        raise LockError(f"{where}: 'llvm_hash' is not a 40-hex commit")
    sums = info.get("sha256sum")
    build_number = info.get("build_number")
    if not isinstance(build_number, int) or isinstance(build_number, bool) or build_number < 0:
        raise LockError(f"{where}: 'build_number' is not a whole number ({build_number!r})")
    base = str(info.get("release_base_url") or _LLVM_BLOB).rstrip("/")
    assets = []
    for platform, system in _LLVM_SYSTEMS.items():
        sha256 = str(sums.get(system, "")).lower() if isinstance(sums, dict) else ""
        if not _SHA256.match(sha256):
            raise LockError(f"{where}: no sha256 for '{system}' under 'sha256sum'")
        assets.append(_llvm_archive(base, f"llvm-{llvm_hash[:8]}-{system}-{build_number}",
                                    platform, system, sha256))  # fmt: skip
    return assets


def _llvm_archive(
    base: str, name: str, platform: str, system: str, sha256: str | None
) -> ManifestAsset:
    """One platform's LLVM build ``name`` (also its top directory), unpacked at ``llvm/<system>``."""
    return ManifestAsset(name=f"llvm-{system}", url=f"{base}/{name}.tar.gz",
                         dest=f"llvm/{system}", sha256=sha256, unpack=True, platform=platform)  # fmt: skip


def _triton_llvm_hash_only(read: ReadFile) -> list[ManifestAsset]:
    """Older triton (3.7.x and before): only ``cmake/llvm-hash.txt`` names the LLVM
    commit; upstream publishes no checksum, so the lock pins the sha256 of what it
    downloads (sha256=None here means: fetch and record)."""
    where = "cmake/llvm-hash.txt"
    try:
        llvm_hash = read(where).strip()
    except FileNotFoundError:
        raise LockError(
            "the pinned triton source has neither cmake/llvm-info.json nor cmake/llvm-hash.txt"
        ) from None
    if not _SHA1.match(llvm_hash):
        raise LockError(f"{where}: {llvm_hash[:60]!r} is not a 40-hex commit")
    # setup.py of that era: name = f"llvm-{rev}-{system_suffix}", no build number.
    return [
        _llvm_archive(_LLVM_BLOB, f"llvm-{llvm_hash[:8]}-{system}", platform, system, None)
        for platform, system in _LLVM_SYSTEMS.items()
    ]


EXPANDERS: dict[str, Callable[[ReadFile], list[ManifestAsset]]] = {
    "onnxruntime-deps": onnxruntime_deps,
    "triton-llvm": triton_llvm,
}
