"""Bytes a resolver fetches from the index for one large wheel, with and without PEP 658.

Generates one wheel of ``--size-mb`` (default 300) MB of incompressible data
(stored, dist-info last, as in real wheels), publishes it, and runs a
dry-run install of it by name against three servers:

* ``sparkforge serve`` on the wheelhouse as published (pages carry
  ``data-core-metadata``, ``files/<wheel>.metadata`` exists);
* ``sparkforge serve`` on a copy without PEP 658 (sidecar deleted, the
  attributes and JSON keys removed): a client may fall back to HTTP range
  requests, which this server answers;
* Python's ``http.server`` on that copy: no sidecar and no range support, like
  a bare static file host.

Clients: ``uv pip install --dry-run --no-config`` (empty cache each time) and
``pip install --dry-run --isolated --no-cache-dir``. Counted: bytes written by
the server (response bodies for sparkforge serve, from its request log;
everything written to the socket for http.server, headers included, which
adds a few hundred bytes). Results go to .bench/metadata.json and are printed
as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from sparkforge.team.serve import RequestRecord, running  # noqa: E402
from sparkforge.wheelhouse.store import Wheelhouse  # noqa: E402
from test_serve import make_large_wheel, uv_binary, uv_dry_run  # noqa: E402
from test_wheels import fresh_venv, pip_install  # noqa: E402

NAME = "sfbig"


@dataclass
class Case:
    client: str
    server: str
    metadata: str
    requests: int
    fetched: int
    wheel_size: int
    seconds: float

    @property
    def ratio(self) -> float:
        return self.fetched / self.wheel_size


def strip_pep658(source: Path, dest: Path) -> None:
    """A hard-linked copy of the wheelhouse whose index has no PEP 658 metadata at all."""
    shutil.copytree(source, dest, symlinks=True, copy_function=os.link)
    for sidecar in (dest / "files").glob("*.whl.metadata"):
        sidecar.unlink()
    for page in (dest / "simple").rglob("index.*"):
        text = page.read_text()
        if page.suffix == ".html":
            text = re.sub(r' data-(core|dist-info)-metadata="[^"]*"', "", text)
        else:
            document = json.loads(text)
            for item in document.get("files", []):
                item.pop("core-metadata", None)
                item.pop("dist-info-metadata", None)
            text = json.dumps(document, indent=2, sort_keys=True) + "\n"
        page.unlink()  # a hard link: never write through to the original
        page.write_text(text)


class _Counting:
    """A writable that counts what passes through it."""

    def __init__(self, inner: BinaryIO, add: Callable[[int], None]) -> None:
        self.inner, self.add = inner, add

    def write(self, data: bytes) -> int:
        self.add(len(data))
        return self.inner.write(data)

    def flush(self) -> None:
        self.inner.flush()

    @property
    def closed(self) -> bool:
        return self.inner.closed


@contextmanager
def plain_server(root: Path, records: list[RequestRecord]) -> Iterator[str]:
    """Python's http.server on ``root`` (no ranges, no negotiation), counting bytes sent."""

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def setup(self) -> None:
            super().setup()
            self.wfile = _Counting(self.wfile, self._count)  # type: ignore[assignment]

        def _count(self, size: int) -> None:
            records.append(RequestRecord("-", "-", "-", 0, size, 0.0))

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple/"
    finally:
        server.shutdown()
        server.server_close()


def dry_run(client: str, url: str, python: Path, scratch: Path) -> None:
    if client == "uv":
        uv_dry_run(uv_binary(), url, python, Path(tempfile.mkdtemp(dir=scratch)), NAME)
        return
    result = pip_install(python, "--dry-run", "--index-url", url, NAME)
    if result.returncode != 0:
        sys.exit(f"pip failed: {result.stderr}")


def measure(client: str, server: str, house: Path, python: Path, scratch: Path) -> Case:
    records: list[RequestRecord] = []
    started = time.perf_counter()
    if server == "http.server":
        with plain_server(house, records) as url:
            dry_run(client, url, python, scratch)
        requests = -1  # not logged per request by http.server
    else:
        with running(house, log=records.append) as served:
            dry_run(client, served.url, python, scratch)
        requests = len(records)
    seconds = time.perf_counter() - started
    (wheel,) = Wheelhouse(house).wheels()
    metadata = "PEP 658 sidecar" if (house / "files" / f"{wheel.filename}.metadata").exists() \
        else "none"  # fmt: skip
    return Case(client, server, metadata, requests, sum(r.sent for r in records), wheel.size,
                seconds)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mb", type=int, default=300)
    args = parser.parse_args()
    out = ROOT / ".bench"
    out.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-metadata-") as tmp:
        scratch = Path(tmp)
        wheel = make_large_wheel(scratch / "raw", NAME, "1.0", args.size_mb * 1000 * 1000)
        with_sidecar = scratch / "wheelhouse"
        Wheelhouse(with_sidecar).publish(wheel, b'{"_type": "https://in-toto.io/Statement/v1"}')
        wheel.unlink()
        without = scratch / "no-pep658"
        strip_pep658(with_sidecar, without)
        python = fresh_venv(scratch / "venv")
        cases = [
            measure("uv", "sparkforge serve", with_sidecar, python, scratch),
            measure("uv", "sparkforge serve", without, python, scratch),
            measure("uv", "http.server", without, python, scratch),
            measure("pip", "sparkforge serve", with_sidecar, python, scratch),
            measure("pip", "sparkforge serve", without, python, scratch),
        ]
    (out / "metadata.json").write_text(
        json.dumps([{**asdict(c), "ratio": c.ratio} for c in cases], indent=2)
    )
    print(f"wheel: {cases[0].wheel_size:,} bytes\n")
    print(
        "| client | server | index metadata | requests | bytes fetched | of the wheel | seconds |"
    )
    print("|---|---|---|---|---|---|---|")
    for c in cases:
        requests = str(c.requests) if c.requests >= 0 else "-"
        print(f"| {c.client} | {c.server} | {c.metadata} | {requests} | {c.fetched:,} | "
              f"{c.ratio:.4%} | {c.seconds:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
