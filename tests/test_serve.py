"""``sparkforge serve``: real pip and uv against the server, PEP 691, ranges, traversal.

``make_large_wheel`` and ``uv_dry_run`` are imported by ``benchmarks/bench_metadata.py``.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import http.client
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.request import Request, urlopen

import pytest

from conftest import copy_project
from sparkforge.building.runners import find_python
from sparkforge.cli import main
from sparkforge.team.serve import HTML_V1, JSON, RequestRecord, WheelhouseServer, negotiate, running
from sparkforge.wheelhouse.store import Wheelhouse
from test_index import INSTALLED, PROVENANCE, build
from test_wheels import fresh_venv, pip_install, run_python

PIP_ACCEPT = (  # what pip sends for index pages
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
    "text/html; q=0.01"
)
SECRET = b"secret outside the wheelhouse\n"


def uv_binary() -> str:
    found = shutil.which("uv", path=sysconfig.get_path("scripts")) or shutil.which("uv")
    if found is None:
        pytest.skip("uv is not installed")
    return found


def uv_dry_run(uv: str, index_url: str, python: Path, cache: Path, *requirements: str) -> str:
    """``uv pip install --dry-run`` from one index only, with an empty cache; its output."""
    result = subprocess.run(
        [uv, "pip", "install", "--dry-run", "--no-config", "--index-url", index_url,
         "--python", str(python), *requirements],
        env={**os.environ, "UV_CACHE_DIR": str(cache)}, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


def make_large_wheel(directory: Path, name: str, version: str, size: int) -> Path:
    """A valid pure wheel of about ``size`` bytes: one incompressible data file, stored.

    The data file comes first and the dist-info last, as in real wheels, so a
    client that streams the wheel to find METADATA reads all of it.
    """
    stem = f"{name}-{version}"
    wheel = directory / f"{stem}-py3-none-any.whl"
    directory.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, int]] = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as archive:
        digest, written = hashlib.sha256(), 0
        with archive.open(f"{name}/payload.bin", "w", force_zip64=True) as payload:
            while written < size:
                chunk = os.urandom(min(1 << 24, size - written))
                digest.update(chunk)
                payload.write(chunk)
                written += len(chunk)
        rows.append((f"{name}/payload.bin", _record_hash(digest.digest()), written))
        small = {
            f"{name}/__init__.py": b"VALUE = 'large'\n",
            f"{stem}.dist-info/METADATA": (
                f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
            ).encode(),
            f"{stem}.dist-info/WHEEL": (
                b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
            ),
        }
        for path, data in small.items():
            archive.writestr(path, data)
            rows.append((path, _record_hash(hashlib.sha256(data).digest()), len(data)))
        record = io.StringIO()
        writer = csv.writer(record, lineterminator="\n")
        writer.writerows([*rows, (f"{stem}.dist-info/RECORD", "", "")])
        archive.writestr(f"{stem}.dist-info/RECORD", record.getvalue())
    return wheel


def _record_hash(digest: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def house(tmp_path_factory: pytest.TempPathFactory) -> Wheelhouse:
    """sfdemo 1.0 and 1.1+cu130, Other_Proj 0.1 (needs sfdemo>=1.1), a secret beside it."""
    tmp = tmp_path_factory.mktemp("serve")
    house = Wheelhouse(tmp / "wheelhouse")
    house.publish(build(tmp, "sfdemo", "1.0", requires_python=">=3.8,<4"), PROVENANCE)
    house.publish(build(tmp, "sfdemo", "1.1", local_version="cu130"), PROVENANCE)
    house.publish(build(tmp, "Other_Proj", "0.1", requires=["sfdemo>=1.1"]), PROVENANCE)
    (tmp / "secret.txt").write_bytes(SECRET)
    (house.files / ".sfdemo-1.0-py3-none-any.whl.tmp1234").write_bytes(SECRET)
    return house


@pytest.fixture
def escape_link(house: Wheelhouse) -> Iterator[None]:
    """A symlink in files/ to the secret outside (only while a test needs it: the index
    would refuse to list it)."""
    link = house.files / "escape-1.0-py3-none-any.whl"
    link.symlink_to(house.root.parent / "secret.txt")
    yield
    link.unlink()


@pytest.fixture
def served(house: Wheelhouse) -> Iterator[tuple[WheelhouseServer, list[RequestRecord]]]:
    records: list[RequestRecord] = []
    with running(house.root, log=records.append) as server:
        yield server, records


def request(
    server: WheelhouseServer, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One raw request (no redirects followed, the path sent exactly as given)."""
    host, port = server.socket.getsockname()[:2]
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_pip_installs_by_name_from_the_server(
    served: tuple[WheelhouseServer, list[RequestRecord]], tmp_path: Path
) -> None:
    server, records = served
    python = fresh_venv(tmp_path / "venv")

    result = pip_install(python, "--index-url", server.url, "other-proj")

    assert result.returncode == 0, result.stderr
    assert run_python(python, INSTALLED) == "1.1 1.1+cu130"
    paths = {record.path for record in records if record.status == 200}
    assert "/files/sfdemo-1.1%2Bcu130-py3-none-any.whl.metadata" in paths  # PEP 658 used
    assert {"/simple/other-proj/", "/simple/sfdemo/"} <= paths


def test_uv_installs_by_name_from_the_server(
    served: tuple[WheelhouseServer, list[RequestRecord]], tmp_path: Path
) -> None:
    uv = uv_binary()
    server, records = served
    python = fresh_venv(tmp_path / "venv")

    result = subprocess.run(
        [uv, "pip", "install", "--no-config", "--index-url", server.url, "--python", str(python),
         "other-proj"],
        env={**os.environ, "UV_CACHE_DIR": str(tmp_path / "uv-cache")},
        capture_output=True, text=True, check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert run_python(python, INSTALLED) == "1.1 1.1+cu130"
    assert all(record.status in (200, 206) for record in records), records


@pytest.mark.parametrize(
    ("accept", "content_type", "page"),
    [
        (None, "text/html; charset=utf-8", "index.html"),
        (PIP_ACCEPT, JSON, "index.json"),
        (JSON, JSON, "index.json"),
        ("application/vnd.pypi.simple.latest+json", JSON, "index.json"),
        (HTML_V1, HTML_V1, "index.html"),
        ("text/html", "text/html; charset=utf-8", "index.html"),
        ("*/*", "text/html; charset=utf-8", "index.html"),
        (f"{JSON};q=0.5, text/html", "text/html; charset=utf-8", "index.html"),
        (f"text/html;q=0.2, {JSON};q=0.9, */*;q=0.1", JSON, "index.json"),
        (f"{JSON}, {HTML_V1};q=0, */*;q=0.01", JSON, "index.json"),
        ("application/*", HTML_V1, "index.html"),
    ],
)
@pytest.mark.parametrize("project", ["", "sfdemo/"])
def test_pages_are_negotiated_by_accept(
    served: tuple[WheelhouseServer, list[RequestRecord]],
    house: Wheelhouse,
    accept: str | None,
    content_type: str,
    page: str,
    project: str,
) -> None:
    server, _ = served
    headers = {} if accept is None else {"Accept": accept}

    with urlopen(Request(f"{server.url}{project}", headers=headers), timeout=10) as response:
        body = response.read()
        assert response.headers["Content-Type"] == content_type
        assert response.headers["Vary"] == "Accept"
        assert int(response.headers["Content-Length"]) == len(body)

    assert body == (house.root / "simple" / project / page).read_bytes()
    if page == "index.json":
        assert json.loads(body)["meta"] == {"api-version": "1.1"}


@pytest.mark.parametrize("accept", ["application/json", f"{JSON};q=0, text/html;q=0, */*;q=0"])
def test_nothing_acceptable_is_406(
    served: tuple[WheelhouseServer, list[RequestRecord]], accept: str
) -> None:
    server, _ = served

    status, headers, body = request(server, "GET", "/simple/sfdemo/", {"Accept": accept})

    assert status == 406
    assert headers["Vary"] == "Accept"
    assert JSON.encode() in body


def test_negotiation_rules() -> None:
    assert negotiate("") == "text/html"
    assert negotiate("text/*;q=0.3, application/vnd.pypi.simple.v1+json;q=0.2") == "text/html"
    assert negotiate(f"{JSON};q=bogus, text/html;q=0.1") == "text/html"
    assert negotiate("image/png") is None


@pytest.mark.parametrize(
    ("path", "location"),
    [
        ("/simple/Other_Proj/", "/simple/other-proj/"),
        ("/simple/OTHER.proj", "/simple/other-proj/"),
        ("/simple/sfdemo", "/simple/sfdemo/"),
        ("/simple", "/simple/"),
    ],
)
def test_non_normalized_names_redirect(
    served: tuple[WheelhouseServer, list[RequestRecord]], path: str, location: str
) -> None:
    server, _ = served

    status, headers, _ = request(server, "GET", path)

    assert (status, headers["Location"]) == (301, location)


def test_unknown_project_is_404(served: tuple[WheelhouseServer, list[RequestRecord]]) -> None:
    server, _ = served
    assert request(server, "GET", "/simple/no-such-project/")[0] == 404
    assert request(server, "GET", "/simple/bad%20name/")[0] == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND"])
def test_only_get_and_head_are_allowed(
    served: tuple[WheelhouseServer, list[RequestRecord]], house: Wheelhouse, method: str
) -> None:
    server, _ = served
    before = sorted(p.name for p in house.files.iterdir())

    status, headers, _ = request(server, method, "/files/sfdemo-1.0-py3-none-any.whl")

    assert status == 405
    assert headers["Allow"] == "GET, HEAD"
    assert sorted(p.name for p in house.files.iterdir()) == before


def test_files_have_types_lengths_and_head(
    served: tuple[WheelhouseServer, list[RequestRecord]], house: Wheelhouse
) -> None:
    server, _ = served
    wheel = house.wheels("sfdemo")[0]
    for suffix, content_type in [("", "application/octet-stream"),
                                 (".metadata", "application/octet-stream"),
                                 (".provenance.json", "application/json")]:  # fmt: skip
        status, headers, body = request(server, "GET", f"/files/{wheel.filename}{suffix}")
        assert status == 200
        assert headers["Content-Type"] == content_type
        assert body == (house.files / f"{wheel.filename}{suffix}").read_bytes()
        assert int(headers["Content-Length"]) == len(body)

    status, headers, body = request(server, "HEAD", f"/files/{wheel.filename}")
    assert (status, body) == (200, b"")
    assert int(headers["Content-Length"]) == wheel.size
    assert headers["Accept-Ranges"] == "bytes"


@pytest.mark.parametrize(
    ("spec", "status", "span"),
    [
        ("bytes=0-9", 206, (0, 10)),
        ("bytes=10-", 206, (10, None)),
        ("bytes=-22", 206, (-22, None)),
        ("bytes=5-1000000000", 206, (5, None)),
        ("bytes=0-1,5-6", 200, (0, None)),  # several ranges: the whole file
        ("lines=1-2", 200, (0, None)),
        ("bytes=1000000000-", 416, None),
    ],
)
def test_range_requests(
    served: tuple[WheelhouseServer, list[RequestRecord]],
    house: Wheelhouse,
    spec: str,
    status: int,
    span: tuple[int, int | None] | None,
) -> None:
    server, _ = served
    wheel = house.wheels("sfdemo")[0]
    data = wheel.path.read_bytes()

    got, headers, body = request(server, "GET", f"/files/{wheel.filename}", {"Range": spec})

    assert got == status
    if span is None:
        assert headers["Content-Range"] == f"bytes */{len(data)}"
        return
    expected = data[span[0] : span[1]]
    assert body == expected
    if status == 206:
        start = span[0] % len(data)
        assert headers["Content-Range"] == f"bytes {start}-{start + len(expected) - 1}/{len(data)}"


@pytest.mark.parametrize(
    "path",
    [
        "/files/../../secret.txt",
        "/files/%2e%2e/%2e%2e/secret.txt",
        "/files/..%2f..%2fsecret.txt",
        "/files/%2e%2e%2f%2e%2e%2fsecret.txt",
        "/files/%2fetc%2fpasswd",
        "/files//etc/passwd",
        "//etc/passwd",
        "/simple/../../secret.txt",
        "/simple/..%2f..%2fsecret.txt/",
        "/simple/%2e%2e/",
        "/files/escape-1.0-py3-none-any.whl",  # a symlink out of the wheelhouse
        "/files/.sfdemo-1.0-py3-none-any.whl.tmp1234",  # a publish's temp file
        "/files/sfdemo-1.0-py3-none-any.whl%00",
        "/files/%ff.whl",
        "/files/",
        "/files",
        "/.lock",
        "/.index/",
        "/simple/.hidden/",
        "/files/..\\..\\secret.txt",
        "http://127.0.0.1/../secret.txt",
        "secret.txt",
    ],
)
@pytest.mark.usefixtures("escape_link")
def test_paths_never_leave_the_wheelhouse(
    served: tuple[WheelhouseServer, list[RequestRecord]], path: str
) -> None:
    server, _ = served

    status, _, body = request(server, "GET", path)

    assert status in (400, 403, 404), (path, status)
    assert SECRET not in body


def test_index_generation_goes_away_mid_flight(
    served: tuple[WheelhouseServer, list[RequestRecord]], house: Wheelhouse, tmp_path: Path
) -> None:
    """A publish between two requests: each sees one whole index, old or new."""
    server, _ = served
    old = request(server, "GET", "/simple/sfdemo/", {"Accept": JSON})[2]

    house.publish(build(tmp_path, "sfdemo", "1.2"), PROVENANCE)
    new = request(server, "GET", "/simple/sfdemo/", {"Accept": JSON})[2]

    assert json.loads(old)["versions"] == ["1.0", "1.1+cu130"]
    assert json.loads(new)["versions"] == ["1.0", "1.1+cu130", "1.2"]


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("sigint_ignored", [False, True], ids=["plain", "sigint-ignored"])
def test_cli_serves_until_interrupted(house: Wheelhouse, sigint_ignored: bool) -> None:
    """Ctrl-C stops it, also when it was started with SIGINT ignored (as a pytest-xdist
    worker or a non-interactive shell starts children: Python then installs no handler)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sparkforge.cli", "serve", "--wheelhouse", str(house.root),
         "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_ignore_sigint if sigint_ignored else None,
    )  # fmt: skip
    try:
        assert process.stdout is not None and process.stderr is not None
        banner = process.stdout.readline()
        url = re.search(r"at (http://127\.0\.0\.1:\d+/simple/) ", banner)
        assert url, banner
        with urlopen(url[1] + "sfdemo/", timeout=10) as response:
            assert response.status == 200
        # The line is written once the body is sent, so wait for it before interrupting.
        logged = process.stderr.readline()
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)

    assert process.returncode == 0, err
    assert out.strip() == "stopped"
    assert re.fullmatch(r'127\.0\.0\.1 "GET /simple/sfdemo/" 200 \d+ B [\d.]+ ms\n', logged)
    assert "Traceback" not in err


def test_cli_refuses_a_wheelhouse_without_an_index(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sparkforge.cli", "serve", "--wheelhouse", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "has no index" in result.stderr


def test_cli_port_in_use_is_one_line(
    served: tuple[WheelhouseServer, list[RequestRecord]], house: Wheelhouse
) -> None:
    server, _ = served
    port = str(server.socket.getsockname()[1])

    result = subprocess.run(
        [sys.executable, "-m", "sparkforge.cli", "serve", "--wheelhouse", str(house.root),
         "--port", port],
        capture_output=True, text=True, check=False,
    )  # fmt: skip

    assert result.returncode == 2
    assert result.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}")
    assert result.stderr.count("\n") == 1


# --- the probe, built for real (nvcc), installed by name over HTTP -------------------------


@pytest.fixture(scope="module")
def probe_house(tmp_path_factory: pytest.TempPathFactory, shared_workspace: Path) -> Path:
    project = copy_project(tmp_path_factory.mktemp("probe"))
    argv = ["build", "sm121-probe", "--target", "hopper", "--cuda-arch", "121",
            "--project", str(project), "--workspace", str(shared_workspace)]  # fmt: skip
    assert main(argv) == 0
    return project / "wheelhouse"


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.parametrize("installer", ["pip", "uv"])
def test_the_probe_installs_by_name_from_the_server(
    probe_house: Path, tmp_path: Path, installer: str
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([find_python("3.12"), "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"

    with running(probe_house) as server:
        if installer == "pip":
            result = pip_install(python, "--index-url", server.url, "sm121-probe")
        else:
            result = subprocess.run(
                [uv_binary(), "pip", "install", "--no-config", "--index-url", server.url,
                 "--python", str(python), "sm121-probe"],
                env={**os.environ, "UV_CACHE_DIR": str(tmp_path / "uv-cache")},
                capture_output=True, text=True, check=False,
            )  # fmt: skip

    assert result.returncode == 0, result.stderr
    probe = run_python(python, "import sm121_probe as p; print(p.__version__, p.built_archs())")
    assert probe.startswith("0.1.0 ") and "90-real" in probe and "121-real" in probe


# --- a large wheel: the resolver must read the sidecar, not the wheel ---------------------

LARGE_SIZE = 300 * 1000 * 1000


@pytest.fixture(scope="session")
def large_house(tmp_path_factory: pytest.TempPathFactory) -> Wheelhouse:
    """A ~300 MB wheel, generated once per session and published."""
    tmp = tmp_path_factory.mktemp("large")
    wheel = make_large_wheel(tmp / "raw", "sfbig", "1.0", LARGE_SIZE)
    house = Wheelhouse(tmp / "wheelhouse")
    house.publish(wheel, PROVENANCE)
    wheel.unlink()
    return house


@pytest.mark.slow
def test_uv_resolves_a_large_wheel_from_its_sidecar(
    large_house: Wheelhouse, tmp_path: Path
) -> None:
    uv = uv_binary()
    (wheel,) = large_house.wheels()
    python = fresh_venv(tmp_path / "venv")
    records: list[RequestRecord] = []

    with running(large_house.root, log=records.append) as server:
        output = uv_dry_run(uv, server.url, python, tmp_path / "uv-cache", "sfbig")

    assert "Would install 1 package" in output and "sfbig==1.0" in output, output
    fetched = sum(record.sent for record in records)
    assert fetched <= wheel.size / 100, records
    assert f"/files/{wheel.filename}.metadata" in {r.path for r in records if r.status == 200}
    assert not [r for r in records if r.path == f"/files/{wheel.filename}" and r.sent]


@pytest.mark.slow
def test_pip_resolves_a_large_wheel_from_its_sidecar(
    large_house: Wheelhouse, tmp_path: Path
) -> None:
    (wheel,) = large_house.wheels()
    python = fresh_venv(tmp_path / "venv")
    records: list[RequestRecord] = []

    with running(large_house.root, log=records.append) as server:
        result = pip_install(python, "--dry-run", "--index-url", server.url, "sfbig")

    assert result.returncode == 0, result.stderr
    assert "Would install sfbig-1.0" in result.stdout
    assert sum(record.sent for record in records) <= wheel.size / 100, records
