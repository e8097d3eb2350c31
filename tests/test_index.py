"""The wheelhouse: immutable files, index pages that resolve, real pip and uv installs."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sysconfig
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import pytest

from sparkforge.util.errors import WheelhouseError
from sparkforge.wheel.repair import normalize
from sparkforge.wheelhouse.store import StoredWheel, Wheelhouse
from test_wheels import EPOCH, fresh_venv, make_wheel, pip_install, run_python

PROVENANCE = b'{"_type": "https://in-toto.io/Statement/v1"}'
INSTALLED = (
    "import importlib.metadata as m, sfdemo, other_proj; print(sfdemo.VALUE, m.version('sfdemo'))"
)


class Anchors(HTMLParser):
    """Collects ``<a>`` attributes (values unescaped, as a client reads them)."""

    def __init__(self) -> None:
        super().__init__()
        self.anchors: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.anchors.append(dict(attrs))


def anchors(page: Path) -> list[dict[str, str | None]]:
    parser = Anchors()
    parser.feed(page.read_text())
    return parser.anchors


def url_to_path(url: str) -> Path:
    return Path(unquote(urlsplit(url).path))


def snapshot(root: Path) -> dict[str, tuple[str, bytes | str, int]]:
    """Every entry under ``root`` (but the lock file) with its content and mtime."""
    state: dict[str, tuple[str, bytes | str, int]] = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if path.is_symlink():
            state[relative] = ("link", os.readlink(path), 0)
        elif path.is_file() and path.name != ".lock":
            state[relative] = ("file", path.read_bytes(), path.stat().st_mtime_ns)
    return state


def build(
    tmp: Path,
    name: str,
    version: str,
    *,
    body: bytes | None = None,
    requires_python: str | None = None,
    requires: Sequence[str] = (),
    local_version: str | None = None,
) -> Path:
    """A normalized wheel for package ``name.lower()`` with ``VALUE`` in its ``__init__``."""
    files = {f"{name.lower()}/__init__.py": body or f"VALUE = {version!r}\n".encode()}
    raw = make_wheel(tmp / "raw" / name / version, name, version, files,
                     requires_python=requires_python, requires=requires)  # fmt: skip
    return normalize(raw, out_dir=tmp / "normalized", source_date_epoch=EPOCH,
                     local_version=local_version)  # fmt: skip


@pytest.fixture
def published(tmp_path: Path) -> tuple[Wheelhouse, list[StoredWheel]]:
    house = Wheelhouse(tmp_path / "wheelhouse")
    stored = [
        house.publish(build(tmp_path, "sfdemo", "1.0", requires_python=">=3.8,<4"), PROVENANCE),
        house.publish(build(tmp_path, "sfdemo", "1.1", local_version="cu130"), PROVENANCE),
        house.publish(build(tmp_path, "Other_Proj", "0.1", requires=["sfdemo>=1.1"]), PROVENANCE),
    ]
    return house, stored


def test_layout_is_files_plus_one_index_generation(
    published: tuple[Wheelhouse, list[StoredWheel]],
) -> None:
    house, stored = published
    root = house.root

    assert sorted(p.name for p in (root / "files").iterdir()) == sorted(
        name for wheel in stored for name in
        (wheel.filename, f"{wheel.filename}.metadata", f"{wheel.filename}.provenance.json")
    )  # fmt: skip
    (generation,) = (root / ".index").iterdir()
    assert (root / "simple").is_symlink()
    assert os.readlink(root / "simple") == f".index/{generation.name}"
    assert sorted(str(p.relative_to(generation)) for p in generation.rglob("*.*")) == [
        "index.html", "index.json", "other-proj/index.html", "other-proj/index.json",
        "sfdemo/index.html", "sfdemo/index.json",
    ]  # fmt: skip
    assert [w.project for w in stored] == ["sfdemo", "sfdemo", "other-proj"]
    assert [w.version for w in stored] == ["1.0", "1.1+cu130", "0.1"]
    for wheel in stored:
        assert wheel.sha256 == hashlib.sha256(wheel.path.read_bytes()).hexdigest()
        assert wheel.size == wheel.path.stat().st_size
        assert wheel.provenance.read_bytes() == PROVENANCE
    assert house.wheels() == sorted(stored, key=lambda w: (w.project, w.version))
    assert house.wheels("Other_Proj") == [stored[2]]
    assert house.index_url() == (root / "simple").absolute().as_uri()


def test_html_links_resolve_to_files_with_the_listed_hashes(
    published: tuple[Wheelhouse, list[StoredWheel]],
) -> None:
    house, stored = published
    simple = house.root / "simple"

    root_links = anchors(simple / "index.html")
    assert [a["href"] for a in root_links] == ["other-proj/", "sfdemo/"]

    seen = []
    for project in ("other-proj", "sfdemo"):
        base = f"{house.index_url()}/{project}/index.html"  # what pip fetches
        for anchor in anchors(simple / project / "index.html"):
            href = anchor["href"] or ""
            url, _, fragment = urljoin(base, href).partition("#")
            wheel = url_to_path(url)
            assert wheel.parent == (house.root / "files").absolute()
            assert fragment == f"sha256={hashlib.sha256(wheel.read_bytes()).hexdigest()}"
            metadata = Path(f"{wheel}.metadata").read_bytes()
            expected = f"sha256={hashlib.sha256(metadata).hexdigest()}"
            assert anchor["data-core-metadata"] == anchor["data-dist-info-metadata"] == expected
            # Served over HTTP, simple/<project>/ is two levels below the root too.
            assert urljoin(f"http://host/simple/{project}/", href).startswith("http://host/files/")
            seen.append((wheel.name, anchor.get("data-requires-python")))
    assert sorted(seen) == sorted(
        [
            ("Other_Proj-0.1-py3-none-any.whl", None),
            ("sfdemo-1.0-py3-none-any.whl", ">=3.8,<4"),
            ("sfdemo-1.1+cu130-py3-none-any.whl", None),
        ]
    )
    assert 'data-requires-python="&gt;=3.8,&lt;4"' in (simple / "sfdemo/index.html").read_text()
    assert {w.filename for w in stored} == {name for name, _ in seen}


def test_json_pages_follow_pep_691_and_700(
    published: tuple[Wheelhouse, list[StoredWheel]],
) -> None:
    house, stored = published
    simple = house.root / "simple"

    root = json.loads((simple / "index.json").read_text())
    assert root == {"meta": {"api-version": "1.1"},
                    "projects": [{"name": "other-proj"}, {"name": "sfdemo"}]}  # fmt: skip
    page = json.loads((simple / "sfdemo/index.json").read_text())
    assert page["meta"] == {"api-version": "1.1"}
    assert page["name"] == "sfdemo"
    assert page["versions"] == ["1.0", "1.1+cu130"]
    by_name = {w.filename: w for w in stored}
    for item in page["files"]:
        wheel = by_name[item["filename"]]
        path = url_to_path(urljoin(f"{house.index_url()}/sfdemo/index.json", item["url"]))
        assert path == wheel.path.absolute()
        assert item["hashes"] == {"sha256": wheel.sha256}
        assert item["size"] == wheel.size
        metadata_hash = hashlib.sha256(wheel.metadata.read_bytes()).hexdigest()
        assert item["core-metadata"] == item["dist-info-metadata"] == {"sha256": metadata_hash}
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", item["upload-time"])
    assert [f.get("requires-python") for f in page["files"]] == [">=3.8,<4", None]


def test_clash_with_different_bytes_changes_nothing(
    published: tuple[Wheelhouse, list[StoredWheel]], tmp_path: Path
) -> None:
    house, _ = published
    before = snapshot(house.root)
    impostor = build(tmp_path / "other", "sfdemo", "1.0", body=b"VALUE = 'impostor'\n",
                     requires_python=">=3.8,<4")  # fmt: skip

    with pytest.raises(WheelhouseError) as caught:
        house.publish(impostor, b'{"other": true}')

    message = caught.value.message
    assert "\n" not in message
    assert "files/sfdemo-1.0-py3-none-any.whl already exists with different content" in message
    assert "bump the version or local label, or remove it deliberately" in message
    assert snapshot(house.root) == before


def test_republishing_the_same_bytes_is_idempotent(
    published: tuple[Wheelhouse, list[StoredWheel]], tmp_path: Path
) -> None:
    house, stored = published
    before = snapshot(house.root)
    same = build(tmp_path / "again", "sfdemo", "1.0", requires_python=">=3.8,<4")
    assert same.read_bytes() == stored[0].path.read_bytes()  # normalize is reproducible

    again = house.publish(same, b'{"second": "provenance is not stored"}')

    assert again == stored[0]
    assert snapshot(house.root) == before
    assert house.regenerate_index() == (house.root / "simple").resolve()
    assert snapshot(house.root) == before


def test_a_new_wheel_swaps_the_generation_and_drops_the_old_one(
    published: tuple[Wheelhouse, list[StoredWheel]], tmp_path: Path
) -> None:
    house, _ = published
    old = (house.root / "simple").resolve()

    house.publish(build(tmp_path, "sfdemo", "1.2"), PROVENANCE)

    new = (house.root / "simple").resolve()
    assert new != old
    assert list((house.root / ".index").iterdir()) == [new]
    assert json.loads((new / "sfdemo/index.json").read_text())["versions"] == [
        "1.0", "1.1+cu130", "1.2",
    ]  # fmt: skip


def test_a_missing_sidecar_is_reported_and_restored_by_republishing(
    published: tuple[Wheelhouse, list[StoredWheel]],
) -> None:
    house, stored = published
    stored[1].metadata.unlink()

    with pytest.raises(WheelhouseError, match=r"\.whl\.metadata is missing; publish .* again"):
        house.regenerate_index()
    house.publish(stored[1].path, PROVENANCE)

    assert house.regenerate_index().is_dir()
    assert stored[1].metadata.exists()


@pytest.mark.parametrize(
    ("filename", "error"),
    [
        ("not-a-wheel.zip", "is not a valid wheel file name"),
        ("sfdemo-9.9-py3-none-any.whl", "METADATA says sfdemo 1.0"),
    ],
)
def test_bad_wheels_are_refused_before_anything_is_written(
    tmp_path: Path, filename: str, error: str
) -> None:
    house = Wheelhouse(tmp_path / "wheelhouse")
    renamed = tmp_path / filename
    shutil.copy(build(tmp_path, "sfdemo", "1.0"), renamed)

    with pytest.raises(WheelhouseError, match=error):
        house.publish(renamed, PROVENANCE)
    assert not (tmp_path / "wheelhouse").exists()


def test_provenance_must_be_json(tmp_path: Path) -> None:
    house = Wheelhouse(tmp_path / "wheelhouse")

    with pytest.raises(
        WheelhouseError, match=r"provenance for sfdemo-1\.0-py3-none-any\.whl is not valid JSON"
    ):
        house.publish(build(tmp_path, "sfdemo", "1.0"), b"not json")


def test_pip_installs_by_name_from_the_file_index(
    published: tuple[Wheelhouse, list[StoredWheel]], tmp_path: Path
) -> None:
    house, _ = published
    python = fresh_venv(tmp_path / "venv")

    result = pip_install(python, "--index-url", house.index_url(), "other-proj")

    assert result.returncode == 0, result.stderr
    # pip resolved the dependency from the PEP 658 sidecar, not the wheel.
    assert "sfdemo-1.1%2Bcu130-py3-none-any.whl.metadata" in result.stdout
    assert run_python(python, INSTALLED) == "1.1 1.1+cu130"


def test_pip_installs_over_http_from_the_served_root(
    published: tuple[Wheelhouse, list[StoredWheel]], tmp_path: Path
) -> None:
    house, _ = published
    python = fresh_venv(tmp_path / "venv")

    with serve(house.root) as base:
        result = pip_install(python, "--index-url", f"{base}/simple/", "sfdemo==1.0")

    assert result.returncode == 0, result.stderr
    assert run_python(python, "import sfdemo; print(sfdemo.VALUE)") == "1.0"


def test_uv_installs_by_name_from_the_file_index(
    published: tuple[Wheelhouse, list[StoredWheel]], tmp_path: Path
) -> None:
    uv = shutil.which("uv", path=sysconfig.get_path("scripts")) or shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed")
    house, _ = published
    python = fresh_venv(tmp_path / "venv")
    env = {**os.environ, "UV_NO_CONFIG": "1", "UV_CACHE_DIR": str(tmp_path / "uv-cache")}

    result = subprocess.run(
        [uv, "pip", "install", "--python", str(python), "--index-url", house.index_url(),
         "other-proj"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert run_python(python, INSTALLED) == "1.1 1.1+cu130"


@contextmanager
def serve(root: Path) -> Iterator[str]:
    """Serve ``root`` over HTTP on localhost (a stand-in for any static web server)."""

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            """Keep the test output clean."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
