"""The page a person browses at the wheelhouse root, read by a real browser (headless
Chromium from Debian) as a static file and from ``sparkforge serve``."""

from __future__ import annotations

import html.parser
import os
import shutil
import subprocess
from pathlib import Path
from urllib.error import HTTPError
from urllib.parse import urljoin
from urllib.request import urlopen

import pytest

from sparkforge.team.serve import running
from sparkforge.wheelhouse.provenance import Provenance
from sparkforge.wheelhouse.store import PAGE, Wheelhouse
from test_index import build


def _provenance(wheel: Path, target: str, verdicts: dict[str, str]) -> bytes:
    return Provenance.model_validate({
        "subject": [{"name": wheel.name, "digest": {"sha256": "0" * 64}}],
        "predicate": {
            "buildDefinition": {"externalParameters": {"recipe": "demo", "target": {"name": target}},
                                "internalParameters": {"build_key": "ab" * 32}},
            "runDetails": {"byproducts": [{"name": "audit", "content": {
                arch: {"verdict": v} for arch, v in verdicts.items()}}]},
        },
    }).to_json()  # fmt: skip


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium, installed here (as root) when it is missing."""
    found = shutil.which("chromium")
    if found is None:
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.skip("chromium is not installed and cannot be installed here")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
                       check=True, env=env)  # fmt: skip
        found = shutil.which("chromium")
    assert found is not None
    return found


def _dom(chromium: str, url: str, profile: Path) -> str:
    """The DOM after the browser loaded ``url`` (what a person would see, as HTML)."""
    done = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={profile}", "--dump-dom", url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class _Page(html.parser.HTMLParser):
    """Rows of the browsed page: per project section, the cells and links of each row."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, object]] = []
        self.project = ""
        self._cell: str | None = None
        self._in_h2 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "section":
            self.project = str(found.get("id"))
        elif tag == "tr":
            self.rows.append({"project": self.project, "links": []})
        elif tag == "td" and self.rows:
            self._cell = str(found.get("class") or "wheel")
            self.rows[-1].setdefault(self._cell, "")
        elif tag == "a" and self.rows and self._cell is not None:
            links = self.rows[-1]["links"]
            assert isinstance(links, list)
            links.append(str(found.get("href")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self.rows[-1][self._cell] = str(self.rows[-1][self._cell]) + data


def _rows(dom: str) -> list[dict[str, object]]:
    page = _Page()
    page.feed(dom)
    return [row for row in page.rows if "version" in row]


@pytest.fixture(scope="module")
def house(tmp_path_factory: pytest.TempPathFactory) -> Wheelhouse:
    tmp = tmp_path_factory.mktemp("browse")
    house = Wheelhouse(tmp / "wheelhouse")
    one = build(tmp, "sfdemo", "1.0")
    two = build(tmp, "sfdemo", "1.1", local_version="cu130")
    other = build(tmp, "Other_Proj", "0.1")
    house.publish(one, _provenance(one, "hopper", {"sm_90": "native"}))
    house.publish(
        two, _provenance(two, "dgx-spark", {"sm_121": "native", "sm_120": "will-not-run"})
    )
    house.publish(other, b'{"_type": "https://in-toto.io/Statement/v1"}')  # an older, bare one
    return house


def _check(rows: list[dict[str, object]], base: str) -> None:
    by_version = {str(r["version"]): r for r in rows}
    assert set(by_version) == {"1.0", "1.1+cu130", "0.1"}
    newest = by_version["1.1+cu130"]
    assert newest["project"] == "sfdemo" and newest["target"] == "dgx-spark"
    assert "sm_121: native" in str(newest["verdicts"]) and "sm_120: will-not-run" in str(
        newest["verdicts"]
    )
    assert str(newest["key"]).startswith("abababab")
    assert str(newest["size"]).endswith(("kB", "MB")) and str(newest["built"]).endswith("Z")
    assert by_version["1.0"]["target"] == "hopper"
    bare = by_version["0.1"]  # provenance without those fields: empty cells, nothing guessed
    assert bare["project"] == "other-proj" and bare["target"] == "-" and bare["verdicts"] == "-"
    # Every link the page shows leads to a file: the wheel, its provenance.
    for row in rows:
        links = row["links"]
        assert isinstance(links, list) and len(links) == 2
        for link in links:
            with urlopen(urljoin(base, link)) as response:
                assert response.read()  # file: or http: (urlopen raises on an HTTP error)
        assert str(links[1]).endswith(".whl.provenance.json")


def test_the_page_as_a_static_file(house: Wheelhouse, chromium: str, tmp_path: Path) -> None:
    page = house.root / PAGE
    rows = _rows(_dom(chromium, page.as_uri(), tmp_path / "profile"))
    _check(rows, page.as_uri())


def test_the_page_served_at_the_root(house: Wheelhouse, chromium: str, tmp_path: Path) -> None:
    with running(house.root) as server:
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        rows = _rows(_dom(chromium, base, tmp_path / "profile"))
        _check(rows, base)
        # pip's index is untouched beside it: PEP 503 pages hold links, not the page.
        with urlopen(base + "simple/sfdemo/") as response:
            simple = response.read().decode()
    assert "sfdemo-1.1+cu130" in simple.replace("%2B", "+") and "<table" not in simple


def test_the_page_follows_every_publish(house: Wheelhouse, tmp_path: Path) -> None:
    before = (house.root / PAGE).read_text()
    house.publish(build(tmp_path, "sfdemo", "1.2"), b"{}")
    after = (house.root / PAGE).read_text()
    assert "1.2" in after and "1.2" not in before.replace("1.2 ", "")
    assert not list(house.root.glob(f".{PAGE}*"))  # no temp file left beside it


def test_without_a_page_the_root_says_how_to_make_one(tmp_path: Path) -> None:
    house = Wheelhouse(tmp_path / "wheelhouse")
    house.publish(build(tmp_path, "sfdemo", "1.0"), b"{}")
    (house.root / PAGE).unlink()  # a wheelhouse written before the page existed
    with running(house.root) as server, pytest.raises(HTTPError) as caught:
        urlopen(f"http://127.0.0.1:{server.server_address[1]}/")
    assert caught.value.code == 404 and "nox -s index" in caught.value.read().decode()


def test_one_odd_field_does_not_hide_the_rest_of_the_provenance(tmp_path: Path) -> None:
    """A statement with a field of an unexpected type (an older or hand-edited one) still
    gives the page and the index its subject, target, key and verdicts."""
    import json

    from sparkforge.wheelhouse.store import describe

    house = Wheelhouse(tmp_path / "wheelhouse")
    wheel = build(tmp_path, "sfdemo", "1.0")
    data = json.loads(_provenance(wheel, "dgx-spark", {"sm_121": "native"}))
    data["predicate"]["buildDefinition"]["internalParameters"]["jobs"] = "many"
    data["predicate"]["runDetails"]["byproducts"].append({"no": "name"})
    stored = house.publish(wheel, json.dumps(data).encode())
    info = describe(stored)
    assert info["target"] == "dgx-spark" and info["build_key"] == "ab" * 32
    assert info["audit"] == {"sm_121": "native"}
    assert "sm_121: native" in (house.root / PAGE).read_text()
