"""Publish the wheelhouse to a team index: an upload API through twine, or a static copy.

``sparkforge publish --to URL [PROJECT ...]`` (docs/publishing.md). Whatever
the destination, the same rules hold:

* **Never overwrite.** A file already there under the same name must have the
  same sha256 (it is skipped: "already there"); a different one refuses the
  whole publish before anything is sent.
* **Check first, then send one wheel at a time**, each complete and verified
  before the next, and a wheel that another one of the batch requires before
  the one that requires it.
* **A failed or killed publish leaves the destination as it was**, as far as
  its protocol allows: every file it lists is complete with its listed hash;
  wheels sent before the failure stay (verified, or complete and unverified
  when killed in between) and the next run skips them as already there.

Destinations:

* ``http(s)://…``: an upload API (pypiserver, devpi, Artifactory, GitLab …)
  through ``twine upload``, credentials from ``TWINE_USERNAME`` /
  ``TWINE_PASSWORD`` or keyring, never from the command line. What is there is
  read from the PEP 503 simple page of each project; after each upload the
  file is downloaded again through the href its page gives and its sha256
  compared. Such indexes keep wheels only: ``.metadata`` is derived by the
  server (or not at all) and provenance stays in the wheelhouse (PEP 740
  attestations are the only kind twine uploads, and ours are not those).
* a directory (``/srv/wheels`` or ``file:///srv/wheels``): a wheelhouse of
  its own, written through :class:`~sparkforge.wheelhouse.store.Wheelhouse` (temp name
  then link, sidecars before the wheel, index swapped atomically last).
* ``rsync://host/module/path`` or ``[user@]host:/path``: the remote wheelhouse
  is mirrored into the workspace, the wheels are published into the mirror
  like a directory, and rsync pushes the files first and the index last.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from html.parser import HTMLParser
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol, cast
from urllib.parse import SplitResult, unquote, urljoin, urlsplit

from packaging.metadata import parse_email
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from sparkforge.util import faults
from sparkforge.util.digest import sha256_file
from sparkforge.util.errors import ConfigError, PublishError
from sparkforge.util.workspace import Workspace
from sparkforge.wheel.repair import read_metadata
from sparkforge.wheelhouse.store import StoredWheel, Wheelhouse

if TYPE_CHECKING:
    import requests

#: Where a publish reports its progress, one line at a time.
Report = Callable[[str], None]


class Destination(Protocol):
    """Where wheels go; one implementation per protocol."""

    label: str

    def existing(self, wheels: Sequence[StoredWheel]) -> dict[str, str]:
        """File name → sha256 of those of ``wheels`` already there."""
        ...

    def read(self, filename: str) -> AbstractContextManager[IO[bytes]]:
        """The bytes there under ``filename`` (one that ``existing`` reported)."""
        ...

    def send(self, wheel: StoredWheel) -> str:
        """Transfer one wheel (and what the destination keeps beside it) and verify it;
        return how it was checked, for the report."""
        ...

    def finish(self) -> None:
        """Make what was sent visible, where the protocol needs a last step."""
        ...


@dataclass
class Outcome:
    """File names sent (in the order sent) and found already there."""

    sent: list[str]
    already_there: list[str]


def publish(
    wheelhouse: Path, destination: Destination, projects: Sequence[str], report: Report
) -> Outcome:
    """Send the wheelhouse's wheels (of ``projects``, default all) to ``destination``."""
    wheels = select_wheels(Wheelhouse(wheelhouse), projects)
    for wheel in wheels:
        _check_local(wheel)
    there = destination.existing(wheels)
    _refuse_overwrites(wheels, there, destination)
    outcome = Outcome(sent=[], already_there=[w.filename for w in wheels if w.filename in there])
    for name in outcome.already_there:
        report(f"already there: {name}")
    todo = [wheel for wheel in wheels if wheel.filename not in there]
    for wheel in dependency_order(todo):
        how = destination.send(wheel)
        outcome.sent.append(wheel.filename)
        report(f"sent {wheel.filename} ({how})")
        faults.point(f"publish:sent-{len(outcome.sent)}")
    destination.finish()
    return outcome


def select_wheels(house: Wheelhouse, projects: Sequence[str]) -> list[StoredWheel]:
    """The wheels to publish; naming a project with no wheel is an error, not a no-op."""
    if not projects:
        wheels = house.wheels()
        if not wheels:
            raise ConfigError(f"{house.files} holds no wheels; build something first")
        return wheels
    chosen: list[StoredWheel] = []
    for project in projects:
        found = house.wheels(project)
        if not found:
            known = ", ".join(sorted({w.project for w in house.wheels()})) or "none"
            raise ConfigError(
                f"no wheels of project '{project}' in {house.files}; projects there: {known}"
            )
        chosen += [wheel for wheel in found if wheel not in chosen]
    return chosen


def dependency_order(wheels: Sequence[StoredWheel]) -> list[StoredWheel]:
    """Wheels that others of the batch require first (by Requires-Dist), then by name.

    So at every instant of a publish, a wheel already on the index finds the
    projects of the batch it requires there too. A cycle falls back to name order.
    """
    projects = {wheel.project for wheel in wheels}
    sorter: TopologicalSorter[str] = TopologicalSorter()
    for wheel in sorted(wheels, key=lambda w: w.filename):
        sorter.add(wheel.project, *sorted((_requires(wheel) & projects) - {wheel.project}))
    order: list[str] = []
    try:
        sorter.prepare()
        while sorter.is_active():
            ready = sorted(sorter.get_ready())  # by name within a level: the same every run
            order += ready
            sorter.done(*ready)
    except CycleError:
        order = sorted(projects)
    rank = {project: position for position, project in enumerate(order)}
    return sorted(wheels, key=lambda w: (rank[w.project], w.filename))


def _requires(wheel: StoredWheel) -> set[str]:
    raw, _ = parse_email(read_metadata(wheel.path))
    names: set[str] = set()
    for line in raw.get("requires_dist", []):
        try:
            names.add(canonicalize_name(Requirement(line).name))
        except InvalidRequirement as exc:
            raise PublishError(
                f"{wheel.path}: Requires-Dist '{line}' is not a valid requirement ({exc}); "
                "rebuild the wheel"
            ) from exc
    return names


def _check_local(wheel: StoredWheel) -> None:
    """The index lists the sha256 recorded at build time: publish only bytes that still
    match, and only wheels whose provenance is there (copies carry it along)."""
    if not wheel.provenance.is_file():
        raise PublishError(
            f"{wheel.provenance} is missing; the local wheelhouse is damaged: rebuild "
            f"{wheel.filename}"
        )
    actual = sha256_file(wheel.path)
    if actual != wheel.sha256:
        raise PublishError(
            f"{wheel.path} no longer matches the sha256 recorded in its provenance "
            f"({wheel.sha256}, file {actual}); the local wheelhouse is damaged: rebuild it"
        )


def _refuse_overwrites(
    wheels: Sequence[StoredWheel], there: dict[str, str], destination: Destination
) -> None:
    clashes = [w for w in wheels if w.filename in there and there[w.filename] != w.sha256]
    if not clashes:
        return
    first = clashes[0]
    more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
    with destination.read(first.filename) as remote:
        cut = _prefix_length(remote, first.path)
    if cut is not None:
        raise PublishError(
            f"{first.filename} at {destination.label} holds only the first {cut} of its "
            f"{first.size} bytes: an upload that was cut off, which the index kept{more}; "
            "nothing was published: delete that file there and publish again"
        )
    raise PublishError(
        f"would overwrite {first.filename} at {destination.label} with different bytes "
        f"(there sha256 {there[first.filename]}, here {first.sha256}){more}; nothing was "
        "published: bump the version or local label, or remove the file there deliberately"
    )


def _prefix_length(remote: IO[bytes], local: Path) -> int | None:
    """Length of ``remote`` when it is a strict prefix of ``local``'s bytes, else None.

    Some servers (pypiserver 2.4.2) store the part of an upload received before
    the client died under the final name; this tells that case apart.
    """
    length = 0
    with local.open("rb") as mine:
        while chunk := remote.read(1 << 20):
            if mine.read(len(chunk)) != chunk:
                return None
            length += len(chunk)
        return length if mine.read(1) else None


# --- choosing the destination -----------------------------------------------------------

#: ``[user@]host:path`` as rsync and ssh read it; the user part may hide a password.
_SSH_REMOTE = re.compile(r"^(?P<user>[^@/]+@)?(?P<host>[^:/@]+):")


def destination_for(to: str, *, simple_url: str | None, workspace: Workspace) -> Destination:
    """The destination ``--to`` names; credentials inside it are refused."""
    parts = urlsplit(to)
    if simple_url is not None and parts.scheme not in ("http", "https"):
        raise ConfigError("--simple-url only applies to an http(s) upload URL in --to")
    if parts.scheme in ("http", "https"):
        _refuse_userinfo(parts, allow_user=False)
        return UploadDestination.create(to, simple_url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"--to {to}: a file URL must name a local path (file:///path)")
        return DirectoryDestination(Path(unquote(parts.path)))
    if parts.scheme == "rsync":
        _refuse_userinfo(parts, allow_user=True)
        return RsyncDestination.create(to, workspace)
    if "://" in to:
        raise ConfigError(
            f"--to {to}: unknown scheme '{parts.scheme}'; use http(s)://, file://, rsync://, "
            "[user@]host:/path or a directory"
        )
    remote = _SSH_REMOTE.match(to)
    if remote:
        if ":" in (remote["user"] or ""):
            raise ConfigError(
                f"--to …@{remote['host']}: credentials in the destination are refused; "
                "rsync over ssh authenticates with ssh keys or the ssh agent"
            )
        return RsyncDestination.create(to, workspace)
    return DirectoryDestination(Path(to).expanduser().resolve())


def _refuse_userinfo(parts: SplitResult, *, allow_user: bool) -> None:
    """A password on the command line ends up in shell history, CI logs and ``ps``."""
    if parts.password is not None or (parts.username is not None and not allow_user):
        where = (
            "RSYNC_PASSWORD"
            if parts.scheme == "rsync"
            else "TWINE_USERNAME and TWINE_PASSWORD (or keyring)"
        )
        raise ConfigError(
            f"--to {parts.scheme}://{parts.hostname or ''}…: credentials in the URL are refused; "
            f"remove them and set {where} instead"
        )


# --- a directory: a wheelhouse of its own ------------------------------------------------


@dataclass
class DirectoryDestination:
    """A wheelhouse directory (a shared filesystem, a web server's document root …)."""

    root: Path
    label: str = field(init=False)

    def __post_init__(self) -> None:
        self.label = str(self.root)

    def existing(self, wheels: Sequence[StoredWheel]) -> dict[str, str]:
        files = self.root / "files"
        return {
            wheel.filename: sha256_file(files / wheel.filename)
            for wheel in wheels
            if (files / wheel.filename).is_file()
        }

    def read(self, filename: str) -> AbstractContextManager[IO[bytes]]:
        return (self.root / "files" / filename).open("rb")

    def send(self, wheel: StoredWheel) -> str:
        """Wheelhouse.publish: sidecars, then the wheel by temp name + link, then the index."""
        stored = Wheelhouse(self.root).publish(wheel.path, wheel.provenance.read_bytes())
        copied = sha256_file(stored.path)
        if copied != wheel.sha256:
            raise PublishError(
                f"{stored.path} reads back with sha256 {copied}, not {wheel.sha256}; "
                "check the destination's storage before publishing again"
            )
        return "copied; read back, sha256 matches"

    def finish(self) -> None:
        """Heals an index that went missing even when nothing new was sent."""
        Wheelhouse(self.root).regenerate_index()


# --- rsync: a local mirror, files pushed first, the index last ---------------------------


@dataclass
class RsyncDestination:
    """A wheelhouse on another host, reached by rsync (over ssh, or an rsync daemon).

    The remote tree is mirrored into ``staging`` (in the workspace, so later
    publishes transfer only what changed), the wheels are published into the
    mirror as into a directory, and the result is pushed in an order that
    keeps the remote valid at every instant: new files (never replacing one),
    the new index generation, the ``simple`` symlink (rsync writes it under a
    temp name and renames it), and only then the removal of old generations.
    """

    remote: str
    staging: Path
    rsync: str
    label: str = field(init=False)

    def __post_init__(self) -> None:
        self.label = self.remote
        self._local = DirectoryDestination(self.staging)

    @classmethod
    def create(cls, remote: str, workspace: Workspace) -> RsyncDestination:
        rsync = shutil.which("rsync")
        if rsync is None:
            raise ConfigError(
                f"--to {remote} needs rsync, which is not installed; apt-get install rsync "
                "(here and on the remote host)"
            )
        key = hashlib.sha256(remote.encode()).hexdigest()[:16]
        return cls(remote.rstrip("/"), workspace.root / "publish" / key, rsync)

    def existing(self, wheels: Sequence[StoredWheel]) -> dict[str, str]:
        self.staging.mkdir(parents=True, exist_ok=True)
        self._rsync("--delete", "--exclude=/.lock", f"{self.remote}/", f"{self.staging}/",
                    what=f"read {self.remote} (does the directory exist there?)")  # fmt: skip
        return self._local.existing(wheels)

    def read(self, filename: str) -> AbstractContextManager[IO[bytes]]:
        return self._local.read(filename)

    def send(self, wheel: StoredWheel) -> str:
        self._local.send(wheel)
        return f"staged in {self.staging}; pushed and compared at the end"

    def finish(self) -> None:
        self._local.finish()
        files, index = f"{self.staging}/files/", f"{self.staging}/.index/"
        self._rsync("--ignore-existing", files, f"{self.remote}/files/", what="push the files")
        self._verify_files(files)
        self._rsync(index, f"{self.remote}/.index/", what="push the index")
        self._rsync("--delay-updates", f"{self.staging}/simple", f"{self.remote}/",
                    what="switch the index")  # fmt: skip
        page = Path(self.staging) / "index.html"  # the page to browse, after the index it links
        if page.is_file():
            self._rsync("--delay-updates", str(page), f"{self.remote}/",
                        what="push the page to browse")  # fmt: skip
        self._rsync(
            "--delete", index, f"{self.remote}/.index/", what="remove old index generations"
        )

    def _verify_files(self, files: str) -> None:
        """Compare content (rsync --checksum, dry run): nothing may differ after the push."""
        differing = self._rsync("--checksum", "--dry-run", "--out-format=%n", files,
                                f"{self.remote}/files/", what="verify the files")  # fmt: skip
        names = [line for line in differing.splitlines() if line and not line.endswith("/")]
        if names:
            raise PublishError(
                f"{self.remote}/files/{names[0]} differs from the published bytes after the push "
                f"({len(names)} files differ); another publisher may have written it: check there"
            )

    def _rsync(self, *args: str, what: str) -> str:
        command = [self.rsync, "--archive", "--partial-dir=.rsync-partial", *args]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            detail = lines[0] if lines else f"exit code {result.returncode}"
            raise PublishError(f"rsync could not {what}: {detail}")
        return result.stdout


# --- an upload API through twine ---------------------------------------------------------


@dataclass(frozen=True)
class _Link:
    url: str
    sha256: str | None


class _Anchors(HTMLParser):
    """``href`` of every ``<a>`` of a PEP 503 page."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.hrefs.append(href)


@dataclass
class UploadDestination:
    """An index with the upload API that twine speaks, and a PEP 503 simple API to read."""

    upload_url: str
    simple_url: str
    http: _Http
    label: str = field(init=False)
    _found: dict[str, _Link] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.label = self.upload_url

    @classmethod
    def create(cls, upload_url: str, simple_url: str | None) -> UploadDestination:
        """The simple API is ``<upload URL>/simple/`` for pypiserver, Artifactory and GitLab;
        devpi's is ``<index>/+simple/`` (give it with ``--simple-url``)."""
        if importlib.util.find_spec("twine") is None:
            raise ConfigError(
                "uploading needs twine, which is not installed here; "
                "pip install 'sparkforge[publish]', or run it as `nox -s publish -- --to URL`"
            )
        simple = simple_url or upload_url.rstrip("/") + "/simple/"
        _refuse_userinfo(urlsplit(simple), allow_user=False)
        return cls(
            upload_url, simple.rstrip("/") + "/", _Http(upload_url, _credentials(upload_url))
        )

    def existing(self, wheels: Sequence[StoredWheel]) -> dict[str, str]:
        found: dict[str, str] = {}
        for project in sorted({wheel.project for wheel in wheels}):
            links = self._links(project)
            for wheel in wheels:
                link = links.get(wheel.filename) if wheel.project == project else None
                if link is not None:
                    self._found[wheel.filename] = link
                    found[wheel.filename] = link.sha256 or self.http.sha256_of(link.url)
        return found

    def read(self, filename: str) -> AbstractContextManager[IO[bytes]]:
        return self.http.open(self._found[filename].url)

    def send(self, wheel: StoredWheel) -> str:
        """Upload one file, then download it back through its simple page and compare."""
        _twine_upload(self.upload_url, wheel.path)
        link = self._links(wheel.project).get(wheel.filename)
        if link is None:
            raise PublishError(
                f"uploaded {wheel.filename}, but {self._page(wheel.project)} does not list it; "
                "is --simple-url the simple API of the index that received it?"
            )
        downloaded = self.http.sha256_of(link.url)
        for what, digest in (("lists", link.sha256), ("serves", downloaded)):
            if digest is not None and digest != wheel.sha256:
                raise PublishError(
                    f"{link.url}: after the upload the index {what} sha256 {digest}, not "
                    f"{wheel.sha256}; remove the file there and publish again"
                )
        return "uploaded; downloaded back, sha256 matches"

    def finish(self) -> None:
        """An upload API makes each file visible as it accepts it: nothing is left to do."""

    def _page(self, project: str) -> str:
        return f"{self.simple_url}{project}/"

    def _links(self, project: str) -> dict[str, _Link]:
        """File name → link on the project's simple page ({} when the project is not there)."""
        page = self._page(project)
        body = self.http.get(page)
        if body is None:
            return {}
        parser = _Anchors()
        parser.feed(body.decode("utf-8", errors="replace"))
        links: dict[str, _Link] = {}
        for href in parser.hrefs:
            url, _, fragment = urljoin(page, href).partition("#")
            name, _, value = fragment.partition("=")
            filename = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
            links[filename] = _Link(url, value.lower() if name == "sha256" else None)
        return links


def _twine_upload(url: str, wheel: Path) -> None:
    """One file per twine run, so a failure names the file and nothing after it is sent."""
    command = [sys.executable, "-m", "twine", "upload", "--non-interactive",
               "--disable-progress-bar", "--repository-url", url, str(wheel)]  # fmt: skip
    # twine prints through rich: wide lines keep its message on one line.
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "500"}
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0:
        raise PublishError(f"uploading {wheel.name} to {url} failed: {_twine_error(result)}")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _twine_error(result: subprocess.CompletedProcess[str]) -> str:
    """twine's ``ERROR`` record (with its indented continuation lines), else its last line."""
    lines = [_ANSI.sub("", line).rstrip() for line in (result.stdout + result.stderr).splitlines()]
    lines = [line for line in lines if line.strip()]
    message = lines[-1].strip() if lines else f"exit code {result.returncode}"
    for number, line in enumerate(lines):
        if line.startswith("ERROR"):
            record = [line.removeprefix("ERROR")]
            record += [more for more in lines[number + 1 :] if more.startswith(" ")]
            message = " ".join(" ".join(record).split())
    if re.search(r"\b(401|403)\b", message):
        message += "; check TWINE_USERNAME and TWINE_PASSWORD (or keyring) for this index"
    return message


def _credentials(url: str) -> tuple[str, str] | None:
    """What twine would use: TWINE_USERNAME / TWINE_PASSWORD, else keyring for ``url``."""
    user = os.environ.get("TWINE_USERNAME") or None
    password = os.environ.get("TWINE_PASSWORD") or None
    if (user is None or password is None) and importlib.util.find_spec("keyring") is not None:
        import keyring
        from keyring.errors import KeyringError

        try:
            if user is None:
                found = keyring.get_credential(url, None)
                user = found.username if found else None
            if user is not None and password is None:
                password = keyring.get_password(url, user)
        except KeyringError:
            pass  # no usable keyring backend: twine will say what is missing
    return (user, password) if user is not None and password is not None else None


@dataclass
class _Http:
    """GETs against the index through requests, the HTTP stack twine uploads with: the
    publish credentials (pypiserver and GitLab protect reading too) sent to the index's
    own host only (requests drops them on a redirect to another host, e.g. a CDN),
    twine's CA bundle (``TWINE_CERT``), proxies from the environment."""

    index_url: str
    credentials: tuple[str, str] | None

    def __post_init__(self) -> None:
        import requests

        self._session = requests.Session()
        self._session.auth = self.credentials
        self._session.verify = os.environ.get("TWINE_CERT") or True
        self._session.headers["Accept"] = "text/html"

    def get(self, url: str) -> bytes | None:
        """The body, or None for 404 (a project the index does not have yet)."""
        response = self._request(url, missing_ok=True)
        if response is None:
            return None
        with response:
            return response.content

    def open(self, url: str) -> IO[bytes]:
        response = self._request(url, missing_ok=False)
        assert response is not None  # only a missing_ok request answers None
        return cast(IO[bytes], _Body(response, url))

    def sha256_of(self, url: str) -> str:
        digest = hashlib.sha256()
        with self.open(url) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()

    def _request(self, url: str, *, missing_ok: bool) -> requests.Response | None:
        import requests

        try:
            response = self._session.get(url, stream=True, timeout=60)
        except requests.RequestException as exc:
            raise PublishError(f"cannot reach {url}: {_reason(exc)}") from None
        if response.status_code == 404 and missing_ok:
            response.close()
            return None
        if response.status_code >= 400:
            response.close()
            hint = (
                "; set TWINE_USERNAME and TWINE_PASSWORD (or keyring) for this index"
                if response.status_code in (401, 403)
                else ""
            )
            raise PublishError(f"{url}: HTTP {response.status_code} {response.reason}{hint}")
        return response


class _Body:
    """A response body read as a binary file (``read(n)``, ``with``), in requests'
    chunks, so that a connection cut in the middle is one PublishError line."""

    def __init__(self, response: requests.Response, url: str) -> None:
        self._response = response
        self._url = url
        self._chunks = response.iter_content(1 << 20)
        self._buffer = b""

    def read(self, size: int = -1) -> bytes:
        import requests

        try:
            while size < 0 or len(self._buffer) < size:
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                self._buffer += chunk
        except requests.RequestException as exc:
            raise PublishError(f"reading {self._url} failed: {_reason(exc)}") from None
        cut = len(self._buffer) if size < 0 else size
        data, self._buffer = self._buffer[:cut], self._buffer[cut:]
        return data

    def close(self) -> None:
        self._response.close()

    def __enter__(self) -> _Body:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reason(exc: Exception) -> str:
    """The innermost cause requests wraps (the refused connection, the TLS failure)."""
    while exc.__context__ is not None and isinstance(exc.__context__, Exception):
        exc = exc.__context__
    reason = getattr(exc, "reason", None)
    return str(reason or exc)
