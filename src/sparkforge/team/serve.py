"""Serve a wheelhouse over HTTP for pip and uv (``sparkforge serve``).

Read-only and small on purpose: a wheelhouse is already a complete static
index (see :mod:`sparkforge.wheelhouse.store`), so the server only maps URLs to files and
adds what a plain file server cannot:

* PEP 691 content negotiation: ``/simple/`` and ``/simple/<project>/`` answer
  with the generation's ``index.json`` when the ``Accept`` header prefers
  ``application/vnd.pypi.simple.v1+json``, else with ``index.html``
  (``Vary: Accept``);
* PEP 503 redirects from a non-normalized project name to the normalized one;
* one consistent index per request: ``simple`` is resolved once, so a publish
  that swaps the symlink mid-request cannot mix two generations;
* byte ranges on ``files/``: uv reads a wheel's central directory with range
  requests when an index has no PEP 658 sidecar, so ranges keep even that
  case cheap;
* no way out of the wheelhouse: every file path is resolved and must land
  directly in ``files/``; dot files, ``..``, encoded separators and symlinks
  pointing elsewhere are 404.

simple-repository-server (PyPI) was considered: it serves a directory of
``<project>/<file>`` folders, builds its own pages (without our hashes) and
extracts metadata from wheels on the fly, so it would neither serve these
pages nor these sidecars, and it brings FastAPI, uvicorn and httpx along.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from packaging.utils import canonicalize_name

from sparkforge.util.errors import ConfigError, WheelhouseError

JSON = "application/vnd.pypi.simple.v1+json"
HTML_V1 = "application/vnd.pypi.simple.v1+html"
TEXT_HTML = "text/html"
# On equal quality the first wins: HTML is PEP 503's baseline that every client reads.
_OFFERS = (TEXT_HTML, HTML_V1, JSON)
_PAGE_FILE = {JSON: "index.json", HTML_V1: "index.html", TEXT_HTML: "index.html"}
_CONTENT_TYPE = {JSON: JSON, HTML_V1: HTML_V1, TEXT_HTML: "text/html; charset=utf-8"}
# What files/ may serve: wheels and the two sidecars publish writes beside them.
_FILE_TYPES = (
    (".whl.metadata", "application/octet-stream"),  # PEP 658: the METADATA bytes as-is
    (".whl.provenance.json", "application/json"),
    (".whl", "application/octet-stream"),
)
_PROJECT_NAME = re.compile(r"^([a-z0-9]|[a-z0-9][a-z0-9._-]*[a-z0-9])$", re.IGNORECASE)
_CHUNK = 1 << 20
# Files never change under a name (the wheelhouse refuses that), pages change on publish.
_IMMUTABLE = "public, max-age=31536000, immutable"
_REVALIDATE = "no-cache"


# --- content negotiation (PEP 691) ---------------------------------------------------------


def negotiate(accept: str | None) -> str | None:
    """The media type to answer with, or None when the client accepts none of ours (406).

    Each offer gets the quality of the most specific ``Accept`` range that
    matches it (RFC 9110, section 12.5.1); the highest quality wins. pip and uv
    ask for JSON with q=1 and HTML with a lower q, so they get JSON; a browser or
    ``*/*`` gets HTML. No header at all means HTML, as PEP 691 asks.
    """
    if accept is None or not accept.strip():
        return TEXT_HTML
    ranges = _parse_accept(accept)
    chosen, best = None, 0.0
    for offer in _OFFERS:
        quality = _quality(offer, ranges)
        if quality > best:
            chosen, best = offer, quality
    return chosen


def _parse_accept(header: str) -> list[tuple[str, float]]:
    """``Accept`` as (media range, q) pairs; PEP 691's ``latest`` aliases mean v1."""
    ranges = []
    for part in header.split(","):
        media, *parameters = part.split(";")
        media = media.strip().lower().replace(".latest+", ".v1+")
        if not media:
            continue
        quality = 1.0
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = min(max(float(value.strip()), 0.0), 1.0)
                except ValueError:
                    quality = 0.0
        ranges.append((media, quality))
    return ranges


def _quality(offer: str, ranges: list[tuple[str, float]]) -> float:
    kind = offer.split("/")[0]
    specificity, quality = -1, 0.0
    for media, q in ranges:
        if media == offer:
            rank = 2
        elif media == f"{kind}/*":
            rank = 1
        elif media == "*/*":
            rank = 0
        else:
            continue
        if rank > specificity:
            specificity, quality = rank, q
    return quality


# --- byte ranges ---------------------------------------------------------------------------


class _Unsatisfiable(Exception):
    """A syntactically valid range that lies outside the file (416)."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte span one ``Range: bytes=`` asks for, or None to send it all.

    Several ranges in one request are answered with the whole file (RFC 9110
    lets a server ignore Range); pip and uv ask for one at a time.
    """
    if header is None:
        return None
    unit, _, spec = header.partition("=")
    first, dash, last = spec.strip().partition("-")
    numbers = all(part == "" or part.isdigit() for part in (first, last))
    if unit.strip().lower() != "bytes" or not dash or not numbers or not (first or last):
        return None  # not one byte range (several, or malformed): send the whole file
    if not first:  # a suffix: the last N bytes
        if int(last) == 0 or size == 0:
            raise _Unsatisfiable
        return max(size - int(last), 0), size - 1
    start, end = int(first), int(last) if last else size - 1
    if start >= size:
        raise _Unsatisfiable
    if end < start:
        return None  # invalid: RFC 9110 says to ignore it
    return start, min(end, size - 1)


# --- routing -------------------------------------------------------------------------------


@dataclass
class Response:
    """What one request gets: status, headers, and a body in memory or a file span."""

    status: HTTPStatus
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    file: BinaryIO | None = None
    span: tuple[int, int] = (0, 0)  # [start, end) of ``file``

    @property
    def length(self) -> int:
        return self.span[1] - self.span[0] if self.file is not None else len(self.body)


def _text(status: HTTPStatus, message: str, **headers: str) -> Response:
    return Response(status, {"Content-Type": "text/plain; charset=utf-8", **headers},
                    f"{status.value} {status.phrase}: {message}\n".encode())  # fmt: skip


def _redirect(location: str) -> Response:
    return _text(HTTPStatus.MOVED_PERMANENTLY, f"see {location}", Location=location)


def route(root: Path, target: str, headers: dict[str, str]) -> Response:
    """Answer a GET for ``target`` (path and query as sent) from the wheelhouse at ``root``.

    ``headers`` holds the request headers that matter, by lower-case name:
    ``accept``, ``range``, ``if-range``.
    """
    segments = _segments(urlsplit(target).path)
    if segments is None:
        return _text(HTTPStatus.NOT_FOUND, "no such path")
    match segments:
        case [""] | ["index.html"]:
            return _browse_page(root)
        case ["simple"]:
            return _redirect("/simple/")
        case ["simple", ""]:
            return _page(root, None, headers.get("accept"))
        case ["simple", name, ""] if canonicalize_name(name) == name and _PROJECT_NAME.match(name):
            return _page(root, name, headers.get("accept"))
        case ["simple", name] | ["simple", name, ""] if _PROJECT_NAME.match(name):
            return _redirect(f"/simple/{canonicalize_name(name)}/")  # PEP 503
        case ["files", name]:
            return _file(root, name, headers.get("range"), headers.get("if-range"))
    return _text(HTTPStatus.NOT_FOUND, "no such path")


def _browse_page(root: Path) -> Response:
    """The page a person browses (written with the index by every publish)."""
    try:
        body = (root / "index.html").read_bytes()
    except FileNotFoundError:
        return _text(HTTPStatus.NOT_FOUND, "no browsable page yet; run `nox -s index` once "
                     "(pip and uv use /simple/)")  # fmt: skip
    return Response(HTTPStatus.OK, {"Content-Type": "text/html; charset=utf-8",
                                    "Cache-Control": _REVALIDATE}, body)  # fmt: skip


def _segments(path: str) -> list[str] | None:
    """Path segments after the leading ``/``, decoded; None for anything that could escape.

    Each segment is decoded on its own, so ``%2f`` cannot make a new one, and a
    decoded ``.``, ``..``, dot file, separator or NUL refuses the whole path.
    """
    if not path.startswith("/"):
        return None
    segments = [unquote(raw, errors="strict") for raw in path[1:].split("/")]
    for index, segment in enumerate(segments):
        empty_last = segment == "" and index == len(segments) - 1
        if not empty_last and (segment == "" or segment.startswith(".")):
            return None
        if any(bad in segment for bad in ("/", "\\", "\0")):
            return None
    return segments


def _generation(root: Path) -> Path | None:
    """The index generation ``simple`` points at now, if it lies inside the wheelhouse."""
    try:
        generation = (root / "simple").resolve(strict=True)
    except (FileNotFoundError, RuntimeError):
        return None
    return generation if generation.is_relative_to(root.resolve()) else None


def _page(root: Path, project: str | None, accept: str | None) -> Response:
    media = negotiate(accept)
    if media is None:
        return _text(HTTPStatus.NOT_ACCEPTABLE, f"this index serves {', '.join(_OFFERS)}",
                     Vary="Accept")  # fmt: skip
    relative = f"{project}/{_PAGE_FILE[media]}" if project else _PAGE_FILE[media]
    # A publish may delete the generation just resolved; the next one is complete.
    for _ in range(3):
        generation = _generation(root)
        if generation is None:
            return _text(HTTPStatus.SERVICE_UNAVAILABLE, "the wheelhouse has no index yet")
        try:
            body = (generation / relative).read_bytes()
        except FileNotFoundError:
            if _generation(root) == generation:
                return _text(HTTPStatus.NOT_FOUND, f"no {relative} in the index", Vary="Accept")
            continue
        return Response(HTTPStatus.OK, {"Content-Type": _CONTENT_TYPE[media], "Vary": "Accept",
                                        "Cache-Control": _REVALIDATE}, body)  # fmt: skip
    return _text(HTTPStatus.SERVICE_UNAVAILABLE, "the index is being replaced; retry")


def _file(root: Path, name: str, range_header: str | None, if_range: str | None) -> Response:
    content_type = next((kind for suffix, kind in _FILE_TYPES if name.endswith(suffix)), None)
    files = (root / "files").resolve()
    path = (files / name).resolve()
    if content_type is None or path.parent != files:
        return _text(HTTPStatus.NOT_FOUND, f"no file {name!r}")
    try:
        handle = path.open("rb")
    except OSError:
        return _text(HTTPStatus.NOT_FOUND, f"no file {name!r}")
    info = os.fstat(handle.fileno())
    if not stat.S_ISREG(info.st_mode):
        handle.close()
        return _text(HTTPStatus.NOT_FOUND, f"no file {name!r}")
    modified = formatdate(info.st_mtime, usegmt=True)
    headers = {"Content-Type": content_type, "Accept-Ranges": "bytes",
               "Last-Modified": modified, "Cache-Control": _IMMUTABLE}  # fmt: skip
    size = info.st_size
    try:
        wanted = parse_range(range_header if if_range in (None, modified) else None, size)
    except _Unsatisfiable:
        handle.close()
        return _text(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, f"{name} has {size} bytes",
                     **{"Content-Range": f"bytes */{size}"})  # fmt: skip
    if wanted is None:
        return Response(HTTPStatus.OK, headers, file=handle, span=(0, size))
    start, end = wanted
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return Response(HTTPStatus.PARTIAL_CONTENT, headers, file=handle, span=(start, end + 1))


# --- the server ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestRecord:
    """One answered request, as the access log (or a test) sees it."""

    client: str
    method: str
    path: str
    status: int
    sent: int  # body bytes written to the client
    seconds: float


def stderr_log(record: RequestRecord) -> None:
    """The default access log: one line per request (control characters escaped, so a
    request cannot forge log lines)."""
    method, path = (_printable(text) for text in (record.method, record.path))
    print(f'{record.client} "{method} {path}" {record.status} '
          f"{record.sent} B {record.seconds * 1000:.1f} ms", file=sys.stderr, flush=True)  # fmt: skip


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


class WheelhouseServer(ThreadingHTTPServer):
    """A threading HTTP server over one wheelhouse; ``log`` receives every request."""

    daemon_threads = True  # a keep-alive client must not hold up Ctrl-C

    def __init__(
        self,
        root: Path,
        address: tuple[str, int],
        log: Callable[[RequestRecord], None] | None = stderr_log,
    ) -> None:
        self.root = root
        self.log = log
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        """The index URL to give pip or uv."""
        host, port = self.socket.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/simple/"


class _Handler(BaseHTTPRequestHandler):
    server: WheelhouseServer
    protocol_version = "HTTP/1.1"  # keep-alive: pip and uv reuse one connection
    server_version = "sparkforge-serve"
    timeout = 60  # idle keep-alive connections give their thread back
    _sent = 0  # body bytes of the response being written

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def __getattr__(self, name: str) -> Callable[[], None]:
        """Every other method (POST, PUT, DELETE, ...) is refused: the index is read-only."""
        if name.startswith("do_"):
            return self._refuse
        raise AttributeError(name)

    def _refuse(self) -> None:
        self.close_connection = True  # a request body we will not read may follow
        response = _text(HTTPStatus.METHOD_NOT_ALLOWED, "this index is read-only",
                         Allow="GET, HEAD", Connection="close")  # fmt: skip
        self._send(response, send_body=True, started=time.monotonic())

    def _answer(self, send_body: bool) -> None:
        started = time.monotonic()
        wanted = {key: value for key in ("accept", "range", "if-range")
                  if (value := self.headers.get(key)) is not None}  # fmt: skip
        try:
            response = route(self.server.root, self.path, wanted)
        except UnicodeDecodeError:
            response = _text(HTTPStatus.NOT_FOUND, "no such path")
        self._send(response, send_body, started)

    def _send(self, response: Response, send_body: bool, started: float) -> None:
        self._sent = 0
        try:
            self.send_response(response.status)
            for key, value in response.headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(response.length))
            self.end_headers()
            if send_body:
                self._write_body(response)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client stopped reading (uv does, once it has enough)
        finally:
            if response.file is not None:
                response.file.close()
            if self.server.log is not None:
                self.server.log(RequestRecord(self.client_address[0], self.command, self.path,
                                              response.status.value, self._sent,
                                              time.monotonic() - started))  # fmt: skip

    def _write_body(self, response: Response) -> None:
        """Write the body, counting into ``_sent`` as it goes (a client may hang up midway)."""
        if response.file is None:
            self.wfile.write(response.body)
            self._sent = len(response.body)
            return
        start, end = response.span
        response.file.seek(start)
        while self._sent < end - start:
            chunk = response.file.read(min(_CHUNK, end - start - self._sent))
            if not chunk:
                break  # the file shrank: impossible for the wheelhouse, but never loop
            self.wfile.write(chunk)
            self._sent += len(chunk)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Requests are logged once they are answered, with the bytes sent (see _send)."""

    def log_message(self, format: str, *args: object) -> None:
        """Protocol errors (bad request lines, timeouts) go where the access log goes."""
        if self.server.log is not None:
            print(f"{self.address_string()} {format % args}", file=sys.stderr, flush=True)


@contextmanager
def running(
    root: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    log: Callable[[RequestRecord], None] | None = None,
) -> Iterator[WheelhouseServer]:
    """A server for ``root`` answering in a background thread (tests and benchmarks)."""
    server = open_server(root, host, port, log)
    # A short poll interval: shutdown() waits for it, and tests start many servers.
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def open_server(
    root: Path, host: str, port: int, log: Callable[[RequestRecord], None] | None
) -> WheelhouseServer:
    """Bind a server to ``host:port`` for the wheelhouse at ``root``, or say why not."""
    if not (root / "simple").exists():
        raise WheelhouseError(
            f"{root} has no index (no {root / 'simple'}); build a recipe or run "
            "`sparkforge index` first, or pass --wheelhouse"
        )
    try:
        return WheelhouseServer(root.resolve(), (host, port), log)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port or --host"
        ) from exc


def serve_wheelhouse(root: Path, host: str, port: int, *, quiet: bool = False) -> int:
    """``sparkforge serve``: answer until Ctrl-C (or SIGTERM), then close cleanly."""
    server = open_server(root, host, port, None if quiet else stderr_log)
    if not _is_loopback(host):
        print(f"warning: serving on {host}: anyone who can reach it can download these wheels "
              "(no TLS, no authentication); prefer a reverse proxy in front of 127.0.0.1",
              file=sys.stderr)  # fmt: skip
    print(f"serving {root} at {server.url} (read-only; Ctrl-C stops)", flush=True)
    # Ctrl-C stops it even when SIGINT came in ignored (a pytest-xdist worker, some CI
    # shells start children so, and Python then installs no handler of its own).
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.server_close()
    print("stopped", flush=True)
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGINT and SIGTERM (CI, nox, systemd) stop the server the way Ctrl-C does."""
    raise KeyboardInterrupt


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
