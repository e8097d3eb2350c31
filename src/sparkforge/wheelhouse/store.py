"""The wheelhouse: an immutable wheel store and the static pip index over it.

Layout under the root::

    files/<wheel>                     immutable; same name, other bytes is an error
    files/<wheel>.metadata            PEP 658 core metadata (the wheel's METADATA)
    files/<wheel>.provenance.json     provenance, written once with the wheel
    .index/<generation>/              one complete index (content-addressed id)
    simple -> .index/<generation>     symlink, swapped atomically
    .lock                             serializes writers (flock)

Each generation holds ``index.html`` (PEP 503) and ``index.json`` (PEP 691,
API 1.1) at the root and per project, with PEP 658/714 metadata hashes and
PEP 700 ``versions``, ``size`` and ``upload-time``. Links are relative
(``../../files/<wheel>``) and resolve against ``simple/<project>/``, whether pip
reads ``file://<root>/simple`` or a web server serves the root; the index is
only meant to be reached through ``simple``. A server that wants PEP 691 JSON
by content negotiation maps ``application/vnd.pypi.simple.v1+json`` to the
``index.json`` beside each ``index.html``.

``upload-time`` is the mtime of ``files/<wheel>``: ``publish`` sets it to the
moment the wheel was stored and never touches the file again, so regenerating
the index gives the same bytes. Copies of a wheelhouse must keep mtimes
(``rsync -a``, ``cp -a``).

Every instant is valid for a reader: sidecars land before their wheel, the
wheel before the index that lists it, and a new index generation is complete
before ``simple`` points at it; old generations are removed only afterwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from itertools import groupby
from pathlib import Path
from typing import Any
from urllib.parse import quote

from packaging.metadata import parse_email
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from sparkforge.util import faults
from sparkforge.util.digest import sha256_file
from sparkforge.util.errors import WheelhouseError
from sparkforge.util.files import temp_beside, write_atomic
from sparkforge.wheel.repair import read_metadata
from sparkforge.wheelhouse.provenance import Provenance

API_VERSION = "1.1"
_FILES = "files"
_INDEX = ".index"
_SIMPLE = "simple"
_KEYS = "keys"  # keys/<build key> → the wheel filename that build produced
_METADATA_SUFFIX = ".metadata"
_PROVENANCE_SUFFIX = ".provenance.json"
#: The browsable page at the wheelhouse root (static file and served at "/").
PAGE = "index.html"


@dataclass(frozen=True)
class StoredWheel:
    """A wheel in ``files/``, as the index lists it."""

    path: Path
    filename: str
    sha256: str
    size: int
    project: str  # normalized (PEP 503)
    version: str
    provenance: Path

    @property
    def metadata(self) -> Path:
        """The PEP 658 sidecar."""
        return self.path.with_name(self.filename + _METADATA_SUFFIX)


class Wheelhouse:
    """Publishes wheels into ``root`` and keeps its index in step."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = root / _FILES

    def index_url(self) -> str:
        """The ``file://`` URL to give pip or uv as ``--index-url``."""
        return (self.root.absolute() / _SIMPLE).as_uri()

    def remember_build(self, build_key: str, filename: str) -> None:
        """Record that the build with ``build_key`` produced the stored ``filename``.

        Several build keys can produce the same bytes (e.g. a changed recipe
        comment); the store keeps the first provenance, and this record lets the
        next build with any of those keys be a no-op.
        """
        (self.root / _KEYS).mkdir(parents=True, exist_ok=True)
        write_atomic(self.root / _KEYS / build_key, filename.encode())

    def built(self, build_key: str) -> Path | None:
        """The stored wheel a build key produced, if it is still there."""
        try:
            filename = (self.root / _KEYS / build_key).read_text().strip()
        except (OSError, UnicodeDecodeError):
            return None
        wheel = self.files / filename
        return wheel if "/" not in filename and wheel.is_file() else None

    def publish(self, wheel: Path, provenance: bytes) -> StoredWheel:
        """Store ``wheel`` with its sidecars, then regenerate the index.

        Publishing the same bytes again returns the stored entry and keeps the
        first provenance (the store is immutable). Different bytes under the
        same name are refused and nothing changes.
        """
        name, version = _check_name(wheel, "check the build's output and its normalize step")
        metadata = read_metadata(wheel)
        _check_metadata(metadata, wheel, name, version)
        _check_provenance(provenance, wheel)
        target = self.files / wheel.name
        with self._locked():
            if target.exists():
                digest = sha256_file(wheel)
                self._accept_existing(target, digest, metadata, provenance)
            else:
                digest = self._store(wheel, target, metadata, provenance)
            faults.point("publish:stored")
            self._regenerate()
        return _stored(target, digest)

    def wheels(self, project: str | None = None) -> list[StoredWheel]:
        """Stored wheels (of one project if given), by project, version, file name."""
        if not self.files.is_dir():
            return []
        wanted = None if project is None else canonicalize_name(project)
        found: list[tuple[str, Version, str, Path]] = []
        for path in self.files.glob("*.whl"):
            if path.name.startswith("."):
                continue  # a temp file of a publish in progress
            name, version = _check_name(path, "remove it from the wheelhouse")
            if wanted is None or name == wanted:
                found.append((name, version, path.name, path))
        return [
            _stored(path, _recorded_sha256(path) or sha256_file(path))
            for _, _, _, path in sorted(found)
        ]

    def regenerate_index(self) -> Path:
        """Rebuild the index from ``files/``; return the generation directory now served."""
        with self._locked():
            return self._regenerate()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time: two regenerations could otherwise delete each other's.

        A wheelhouse whose ``simple`` is not a symlink is refused before anything
        is written, so the refusal leaves it exactly as it was."""
        simple = self.root / _SIMPLE
        if simple.exists() and not simple.is_symlink():
            raise WheelhouseError(
                f"{simple} is not a symlink, so the index cannot be swapped atomically; "
                "move it away and run the publish again"
            )
        self.files.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _accept_existing(
        self, target: Path, digest: str, metadata: bytes, provenance: bytes
    ) -> None:
        existing = sha256_file(target)
        if existing != digest:
            raise WheelhouseError(
                f"{target} already exists with different content (sha256 {existing}, "
                f"new {digest}); bump the version or local label, or remove it deliberately"
            )
        # Restore sidecars deleted by hand, so the index can list the wheel again.
        for sidecar, data in _sidecars(target, metadata, provenance).items():
            if not sidecar.exists():
                write_atomic(sidecar, data)

    def _store(self, wheel: Path, target: Path, metadata: bytes, provenance: bytes) -> str:
        """Copy the wheel in, sidecars first: the wheel's appearance commits the publish.

        Returns the sha256 of the bytes actually stored (hashed while copying).
        """
        for sidecar, data in _sidecars(target, metadata, provenance).items():
            write_atomic(sidecar, data)
        digest = hashlib.sha256()
        with temp_beside(target) as temp:
            with wheel.open("rb") as reader, temp.open("wb") as writer:
                while chunk := reader.read(1 << 20):
                    digest.update(chunk)
                    writer.write(chunk)
                    faults.point("store:copying")
                writer.flush()
                os.fsync(writer.fileno())
            now = int(time.time())
            os.utime(temp, (now, now))  # the upload-time the index will show
            os.link(temp, target)  # unlike rename, never replaces an existing file
        return digest.hexdigest()

    def _regenerate(self) -> Path:
        wheels = self.wheels()  # listed once: the index and the page show the same files
        pages = _render(wheels)
        generation = _generation_id(pages)
        index_dir = self.root / _INDEX
        final = index_dir / generation
        if self._current_generation() != generation or not final.is_dir():
            index_dir.mkdir(exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=index_dir, prefix=".staging-"))
            for relative, data in pages.items():
                (staging / relative).parent.mkdir(parents=True, exist_ok=True)
                (staging / relative).write_bytes(data)
            staging.chmod(0o755)
            if final.exists():
                shutil.rmtree(final)  # left by a regeneration that died before the swap
            staging.rename(final)
            faults.point("index:written")
            self._point_simple_at(generation)
        # The page a person browses, beside simple/ (which it does not touch): written
        # whole or not at all, after the index it links to.
        page = browse_page(wheels)
        with contextlib.suppress(FileNotFoundError):
            if (self.root / PAGE).read_bytes() == page:
                page = b""  # unchanged: a republish of the same bytes leaves it as it is
        if page:
            write_atomic(self.root / PAGE, page)
        for stale in index_dir.iterdir():
            if stale.name != generation:
                shutil.rmtree(stale)
        return final

    def _current_generation(self) -> str | None:
        simple = self.root / _SIMPLE
        return Path(os.readlink(simple)).name if simple.is_symlink() else None

    def _point_simple_at(self, generation: str) -> None:
        """Swap the ``simple`` symlink with one rename, so readers see old or new, never none."""
        simple = self.root / _SIMPLE
        if simple.exists() and not simple.is_symlink():
            raise WheelhouseError(
                f"{simple} is not a symlink, so the index cannot be swapped atomically; "
                "move it away and run the publish again"
            )
        temp = self.root / f".{_SIMPLE}.swap"
        temp.unlink(missing_ok=True)
        os.symlink(f"{_INDEX}/{generation}", temp)
        os.replace(temp, simple)


def _check_name(wheel: Path, fix: str) -> tuple[str, Version]:
    try:
        name, version, _, _ = parse_wheel_filename(wheel.name)
    except InvalidWheelFilename as exc:
        raise WheelhouseError(f"{wheel} is not a valid wheel file name ({exc}); {fix}") from exc
    return name, version


def _check_metadata(metadata: bytes, wheel: Path, name: str, version: Version) -> None:
    """pip rejects a wheel whose METADATA disagrees with its name: refuse it before storing."""
    raw, _ = parse_email(metadata)
    try:
        matches = (
            canonicalize_name(raw.get("name", "")) == name
            and Version(raw.get("version", "")) == version
        )
    except InvalidVersion:
        matches = False
    if not matches:
        raise WheelhouseError(
            f"{wheel} METADATA says {raw.get('name')} {raw.get('version')}, "
            "which does not match its file name; rebuild or renormalize the wheel"
        )


def _check_provenance(provenance: bytes, wheel: Path) -> None:
    try:
        json.loads(provenance)
    except ValueError as exc:
        raise WheelhouseError(
            f"provenance for {wheel.name} is not valid JSON ({exc}); "
            "regenerate it before publishing"
        ) from exc


def _sidecars(target: Path, metadata: bytes, provenance: bytes) -> dict[Path, bytes]:
    return {
        target.with_name(target.name + _METADATA_SUFFIX): metadata,
        target.with_name(target.name + _PROVENANCE_SUFFIX): provenance,
    }


def provenance_of(wheel: Path) -> Provenance | None:
    """The wheel's provenance statement, or None when it is missing or unreadable."""
    return Provenance.read(wheel.with_name(wheel.name + _PROVENANCE_SUFFIX))


def describe(wheel: StoredWheel) -> dict[str, Any]:
    """What the wheelhouse knows about one wheel, from the file and its provenance: for
    ``sparkforge list`` and the browsable page. Fields the provenance lacks are empty,
    never guessed."""
    provenance = provenance_of(wheel.path) or Provenance.empty()
    built = datetime.fromtimestamp(int(wheel.path.stat().st_mtime), tz=UTC)
    return {
        "project": wheel.project,
        "version": wheel.version,
        "file": wheel.filename,
        "size": wheel.size,
        "sha256": wheel.sha256,
        "recipe": provenance.external.recipe,
        "target": str(provenance.external.target.get("name", "")),
        "build_key": provenance.internal.build_key,
        "audit": provenance.verdicts(),
        "built": built.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _recorded_sha256(wheel: Path) -> str | None:
    """The sha256 recorded as the provenance subject when the wheel was published.

    Listing this value rather than re-hashing keeps regeneration cheap with
    multi-GB wheels, and a file damaged on disk later fails pip's hash check
    instead of being listed with its damaged hash.
    """
    provenance = provenance_of(wheel)
    return provenance.subject_sha256(wheel.name) if provenance else None


def _stored(path: Path, digest: str) -> StoredWheel:
    name, version = _check_name(path, "remove it from the wheelhouse")
    return StoredWheel(
        path=path,
        filename=path.name,
        sha256=digest,
        size=path.stat().st_size,
        project=name,
        version=str(version),
        provenance=path.with_name(path.name + _PROVENANCE_SUFFIX),
    )


def _generation_id(pages: Mapping[str, bytes]) -> str:
    """Content-addressed, so an unchanged index keeps its generation."""
    digest = hashlib.sha256()
    for relative in sorted(pages):
        digest.update(relative.encode() + b"\0" + hashlib.sha256(pages[relative]).digest())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class _FileEntry:
    """What both page formats say about one wheel."""

    wheel: StoredWheel
    url: str
    metadata_sha256: str
    requires_python: str | None
    upload_time: str
    audit: dict[str, str]


def _entry(wheel: StoredWheel) -> _FileEntry:
    try:
        metadata = wheel.metadata.read_bytes()
    except FileNotFoundError as exc:
        raise WheelhouseError(
            f"{wheel.metadata} is missing; publish {wheel.filename} again to restore it"
        ) from exc
    raw, _ = parse_email(metadata)
    mtime = datetime.fromtimestamp(int(wheel.path.stat().st_mtime), tz=UTC)
    return _FileEntry(
        wheel=wheel,
        # From simple/<project>/ up to the root; quote() keeps "+" of local versions safe.
        url=f"../../{_FILES}/{quote(wheel.filename)}",
        metadata_sha256=hashlib.sha256(metadata).hexdigest(),
        requires_python=raw.get("requires_python"),
        upload_time=mtime.strftime("%Y-%m-%dT%H:%M:%SZ"),
        audit=(provenance_of(wheel.path) or Provenance.empty()).verdicts(),
    )


def _render(wheels: Sequence[StoredWheel]) -> dict[str, bytes]:
    """Every page of the index, keyed by path relative to the generation directory."""
    pages: dict[str, bytes] = {}
    projects: list[str] = []
    for project, group in groupby(wheels, key=lambda wheel: wheel.project):
        entries = [_entry(wheel) for wheel in group]
        projects.append(project)
        pages[f"{project}/index.html"] = _project_html(project, entries)
        pages[f"{project}/index.json"] = _project_json(project, entries)
    pages["index.html"] = _root_html(projects)
    pages["index.json"] = _json({"meta": {"api-version": API_VERSION},
                                 "projects": [{"name": name} for name in projects]})  # fmt: skip
    return pages


def _html_page(title: str, links: Sequence[str]) -> bytes:
    body = "".join(f"    {link}<br>\n" for link in links)
    return (
        "<!DOCTYPE html>\n<html>\n  <head>\n"
        f'    <meta name="pypi:repository-version" content="{API_VERSION}">\n'
        f"    <title>{escape(title)}</title>\n  </head>\n  <body>\n"
        f"    <h1>{escape(title)}</h1>\n{body}  </body>\n</html>\n"
    ).encode()


def _root_html(projects: Sequence[str]) -> bytes:
    return _html_page(
        "Simple index",
        [f'<a href="{escape(name)}/">{escape(name)}</a>' for name in projects],
    )


def _project_html(project: str, entries: Sequence[_FileEntry]) -> bytes:
    links = []
    for entry in entries:
        attributes = [f'href="{escape(entry.url)}#sha256={entry.wheel.sha256}"']
        if entry.requires_python:
            attributes.append(f'data-requires-python="{escape(entry.requires_python)}"')
        attributes.append(f'data-core-metadata="sha256={entry.metadata_sha256}"')
        attributes.append(f'data-dist-info-metadata="sha256={entry.metadata_sha256}"')
        link = f"<a {' '.join(attributes)}>{escape(entry.wheel.filename)}</a>"
        if entry.audit:  # what the wheel runs on, from the build's audit gate
            verdicts = ", ".join(f"{arch}: {verdict}" for arch, verdict in entry.audit.items())
            link += f" <small>({escape(verdicts)})</small>"
        links.append(link)
    return _html_page(f"Links for {project}", links)


def _project_json(project: str, entries: Sequence[_FileEntry]) -> bytes:
    files = []
    for entry in entries:
        item: dict[str, object] = {
            "filename": entry.wheel.filename,
            "url": entry.url,
            "hashes": {"sha256": entry.wheel.sha256},
            "core-metadata": {"sha256": entry.metadata_sha256},
            "dist-info-metadata": {"sha256": entry.metadata_sha256},
            "size": entry.wheel.size,
            "upload-time": entry.upload_time,
        }
        if entry.requires_python:
            item["requires-python"] = entry.requires_python
        if entry.audit:  # PEP 691 reserves keys with a leading underscore for the index
            item["_sparkforge_audit"] = entry.audit
        files.append(item)
    versions = sorted({entry.wheel.version for entry in entries}, key=Version)
    return _json(
        {"meta": {"api-version": API_VERSION}, "name": project, "versions": versions,
         "files": files}
    )  # fmt: skip


def _json(document: Mapping[str, object]) -> bytes:
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


_PAGE_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:80em}"
    "table{border-collapse:collapse;margin-bottom:2em}"
    "th,td{border-bottom:1px solid #ddd;padding:.3em .8em;text-align:left;vertical-align:top}"
    "td.size{text-align:right}.bad{color:#b00}.good{color:#070}code{font-size:90%}"
)
_VERDICT_CLASS = {"native": "good", "compatible": "good", "family": "good", "ptx-jit": "good",
                  "will-not-run": "bad", "wrong-platform": "bad"}  # fmt: skip


def _size_text(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"


def browse_page(wheels: Sequence[StoredWheel]) -> bytes:
    """One HTML page for a person: per project, each wheel's version, target, audit
    verdicts, size, build date, build key and links to the file, its provenance and the
    project's PEP 503 page. Links are relative, so the page works served and as a file."""
    sections = []
    rows_total = 0
    for project, group in groupby(wheels, key=lambda wheel: wheel.project):
        rows = []
        for wheel in sorted(group, key=lambda w: (Version(w.version), w.filename), reverse=True):
            info = describe(wheel)
            verdicts = "<br>".join(
                f'<span class="verdict {_VERDICT_CLASS.get(v, "")}">'
                f"{escape(arch)}: {escape(v)}</span>" for arch, v in info["audit"].items()
            ) or "-"  # fmt: skip
            file_url = f"{_FILES}/{quote(wheel.filename)}"
            provenance = (f'<a href="{escape(file_url + _PROVENANCE_SUFFIX)}">provenance</a>'
                          if wheel.provenance.is_file() else "-")  # fmt: skip
            rows.append(
                "<tr>"
                f'<td class="version">{escape(wheel.version)}</td>'
                f'<td class="target">{escape(info["target"]) or "-"}</td>'
                f'<td class="verdicts">{verdicts}</td>'
                f'<td class="size">{_size_text(wheel.size)}</td>'
                f'<td class="built">{escape(info["built"])}</td>'
                f'<td class="key"><code>{escape(info["build_key"][:12]) or "-"}</code></td>'
                f'<td><a class="file" href="{escape(file_url)}">{escape(wheel.filename)}</a>'
                f"<br><small>sha256 {wheel.sha256[:16]}…</small></td>"
                f'<td class="provenance">{provenance}</td>'
                "</tr>"
            )
        rows_total += len(rows)
        sections.append(
            f'<section class="project" id="{escape(project)}"><h2>{escape(project)} '
            f'<small><a href="{_SIMPLE}/{escape(project)}/">simple index</a></small></h2>'
            "<table><thead><tr><th>version</th><th>target</th><th>audit</th><th>size</th>"
            "<th>built (UTC)</th><th>build key</th><th>wheel</th><th>provenance</th></tr>"
            f"</thead><tbody>{''.join(rows)}</tbody></table></section>"
        )
    body = "".join(sections) or "<p>No wheels yet: build a recipe (nox -s build-…).</p>"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>sparkforge wheelhouse</title>"
        f"<style>{_PAGE_STYLE}</style></head><body>"
        f"<h1>sparkforge wheelhouse</h1><p>{rows_total} wheel(s). pip and uv use "
        f'<a href="{_SIMPLE}/">{_SIMPLE}/</a> (PEP 503/691); this page is for people.</p>'
        f"{body}</body></html>\n"
    ).encode()
