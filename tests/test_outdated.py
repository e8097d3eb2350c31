"""`sparkforge outdated` against a PyPI-style JSON index on 127.0.0.1 (wheels made here), and
on-demand versions (`--version`, `--lock-moved`) against the real PyPI with a small sdist."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import struct
import threading
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import CliRunner, copy_project

EM_CUDA = 190


def cubin(sm: int) -> bytes:
    """The smallest standalone cubin the reader accepts: an ELF64 header for EM_CUDA whose
    e_flags name the SM (ELF ABI version 8, as CUDA 13 writes), no sections."""
    ident = b"\x7fELF\x02\x01\x01\x41\x08" + b"\0" * 7
    header = struct.pack("<HHIQQQIHHHHHH", 2, EM_CUDA, 1, 0, 0, 0, sm << 8, 64, 56, 0, 64, 0, 0)
    return ident + header


def wheel(name: str, version: str, tag: str, files: dict[str, bytes]) -> tuple[str, bytes]:
    filename = f"{name}-{version}-{tag}.whl"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr(
            f"{name}-{version}.dist-info/METADATA", f"Name: {name}\nVersion: {version}\n"
        )
    return filename, buffer.getvalue()


class Index:
    """A PyPI-style JSON API: /pypi/<project>/json and /files/<name>; counts file downloads."""

    def __init__(self) -> None:
        self.projects: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.files: dict[str, bytes] = {}
        self.downloads: Counter[str] = Counter()
        self.corrupt: set[str] = set()

    def add(self, project: str, version: str, filename: str, data: bytes) -> None:
        self.files[filename] = data
        self.projects.setdefault(project, {}).setdefault(version, []).append({
            "filename": filename, "url": f"../../files/{filename}", "size": len(data),
            "digests": {"sha256": hashlib.sha256(data).hexdigest()}, "yanked": False,
        })  # fmt: skip


@pytest.fixture
def index() -> Iterator[tuple[Index, str]]:
    state = Index()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = self.path.strip("/").split("/")
            body: bytes | None = None
            if len(parts) == 3 and parts[0] == "pypi" and parts[2] == "json":
                releases = state.projects.get(parts[1])
                if releases is not None:
                    body = json.dumps({"releases": releases}).encode()
            elif len(parts) == 2 and parts[0] == "files" and parts[1] in state.files:
                state.downloads[parts[1]] += 1
                body = state.files[parts[1]]
                if parts[1] in state.corrupt:
                    body = body[:-1] + bytes([body[-1] ^ 1])
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/pypi"
    finally:
        server.shutdown()


AARCH64 = "manylinux_2_28_aarch64"


def fill(state: Index) -> None:
    """vllm: a GPU wheel for the Spark (sm_120 family code runs on sm_121), plus an older
    release; torch: a CPU-only aarch64 wheel; onnxruntime-gpu: x86_64 only; llama-cpp-python:
    an sdist only; nothing for the others."""
    for version, sm in (("0.40.0", 120), ("0.39.0", 90)):
        name, data = wheel("vllm", version, f"cp38-abi3-{AARCH64}",
                           {"vllm/kernels/k.cubin": cubin(sm), "vllm/__init__.py": b""})  # fmt: skip
        state.add("vllm", version, name, data)
    state.add("vllm", "0.41.0rc1", *wheel("vllm", "0.41.0rc1", f"cp38-abi3-{AARCH64}", {}))
    state.add("torch", "2.16.0", *wheel("torch", "2.16.0", f"cp312-cp312-{AARCH64}",
                                        {"torch/__init__.py": b""}))  # fmt: skip
    state.add("onnxruntime-gpu", "1.32.0", *wheel("onnxruntime_gpu", "1.32.0",
              "cp312-cp312-manylinux_2_28_x86_64", {"onnxruntime/k.cubin": cubin(121)}))  # fmt: skip
    state.add("llama-cpp-python", "0.3.40", "llama_cpp_python-0.3.40.tar.gz", b"sdist")


RECIPES = ["vllm", "torch", "onnxruntime", "llama-cpp-python", "sm121-probe"]


def test_outdated_answers_build_or_pip_install(
    cli: CliRunner, index: tuple[Index, str], tmp_path: Path
) -> None:
    state, url = index
    fill(state)
    project = copy_project(tmp_path / "project")
    args = ["outdated", *RECIPES, "--index-url", url, "--json", "--project", project,
            "--workspace", tmp_path / "ws"]  # fmt: skip
    result = cli(*args)
    assert result.code == 0, result.err
    rows = {row["recipe"]: row for row in json.loads(result.out)["recipes"]}
    vllm = rows["vllm"]
    assert vllm["newest"] == "0.40.0" and vllm["moved"]  # the release candidate is not newest
    assert vllm["wheel"] == f"vllm-0.40.0-cp38-abi3-{AARCH64}.whl"
    assert (vllm["verdict"], vllm["runs"]) == ("family", True) or vllm["verdict"] == "compatible"
    assert vllm["answer"].startswith("pip install vllm==0.40.0: upstream's wheel is")
    assert "0.11.1" in vllm["listed"] and vllm["default"] == "0.11.1"
    torch = rows["torch"]
    assert (torch["verdict"], torch["runs"]) == ("no-cuda-code", False)
    assert torch["answer"] == "build: upstream's wheel is no-cuda-code"
    assert any("a CPU-only build" in line for line in torch["reasoning"])
    assert rows["onnxruntime"]["answer"] == (
        "build: no linux_aarch64 wheel for Python 3.12 upstream"
    )
    assert rows["onnxruntime"]["unlocked"] == ["1.31.1"]
    assert rows["llama-cpp-python"]["wheel"] is None
    assert rows["sm121-probe"]["answer"] == f"build: no release on {url}"
    assert rows["sm121-probe"]["newest"] is None and not rows["sm121-probe"]["moved"]

    # Verdicts are cached by sha256: a second run downloads nothing; the table reads them.
    downloads = sum(state.downloads.values())
    assert downloads == 2  # vllm 0.40.0 and torch 2.16.0, once each
    table = cli(*[a for a in args if a != "--json"])
    assert table.code == 0, table.err
    assert sum(state.downloads.values()) == downloads
    assert "pip install" in table.out and "(new)" in table.out  # cells wrap at 80 columns


def test_target_decides_the_wheel_and_the_verdict(
    cli: CliRunner, index: tuple[Index, str], tmp_path: Path
) -> None:
    """For hopper (x86_64) the onnxruntime wheel is the one, and sm_121 code is not Hopper's."""
    state, url = index
    fill(state)
    project = copy_project(tmp_path / "project")
    result = cli("outdated", "onnxruntime", "--target", "hopper", "--index-url", url, "--json",
                 "--project", project, "--workspace", tmp_path / "ws")  # fmt: skip
    (row,) = json.loads(result.out)["recipes"]
    assert row["wheel"] == "onnxruntime_gpu-1.32.0-cp312-cp312-manylinux_2_28_x86_64.whl"
    assert (row["verdict"], row["runs"]) == ("will-not-run", False)


def test_a_corrupt_download_is_one_line_and_caches_nothing(
    cli: CliRunner, index: tuple[Index, str], tmp_path: Path
) -> None:
    state, url = index
    fill(state)
    state.corrupt.add(f"vllm-0.40.0-cp38-abi3-{AARCH64}.whl")
    project = copy_project(tmp_path / "project")
    args = ["outdated", "vllm", "--index-url", url, "--project", project,
            "--workspace", tmp_path / "ws"]  # fmt: skip
    result = cli(*args)
    assert result.code != 0
    (line,) = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert "is not the index's" in line and "nothing was judged" in line
    assert not list((tmp_path / "ws" / "verdicts").glob("*.json"))
    unreachable = cli("outdated", "vllm", "--index-url", "http://127.0.0.1:9/pypi",
                      "--project", project)  # fmt: skip
    assert unreachable.code != 0 and "check --index-url and the network" in unreachable.err


# --- versions the recipe does not list ----------------------------------------------------

SMALL = """\
name = "flit"
dist = "flit-core"
summary = "flit_core from its PyPI sdist: a small real source for on-demand versions"
memory_per_job_gb = 0.5
cuda = false

[source]
pypi = "flit-core"

[versions."3.9.0"]
default = true

[build]
requires = []
command = ["{python} -m pip wheel --no-build-isolation --no-deps --wheel-dir {dist_dir} {source_dir}"]
wheel = "{dist_dir}/flit_core-*.whl"
"""


@pytest.fixture
def small_project(tmp_path: Path) -> Path:
    project = copy_project(tmp_path / "project")
    (project / "recipes" / "flit").mkdir()
    (project / "recipes" / "flit" / "recipe.toml").write_text(SMALL)
    return project


@pytest.mark.network
def test_version_on_demand_is_locked_and_unreviewed(
    cli: CliRunner, small_project: Path, tmp_path: Path
) -> None:
    """`--version 3.10.1` (not listed): a dry run resolves it without writing lock.toml;
    `lock --version` writes it, marked with the version whose settings it borrows."""
    lock = small_project / "lock.toml"
    before = lock.read_text()
    common = ["--project", small_project, "--workspace", tmp_path / "ws"]
    dry = cli("build", "flit", "--version", "3.10.1", "--target", "hopper", "--dry-run", *common)
    assert dry.code == 0, dry.err
    plan = json.loads(dry.out)
    assert plan["version"] == "3.10.1"
    assert plan["unreviewed"][0].startswith("flit 3.10.1 is not listed in")
    assert "settings, assets and needs of 3.9.0" in plan["unreviewed"][0]
    assert "a dry run leaves lock.toml as is" in dry.err + dry.out
    assert lock.read_text() == before

    locked = cli("lock", "flit", "--version", "3.10.1", *common)
    assert locked.code == 0, locked.err
    text = lock.read_text()
    assert '[recipes.flit."3.10.1"]' in text and 'derived_from = "3.9.0"' in text
    again = cli("build", "flit", "--version", "3.10.1", "--target", "hopper", "--dry-run", *common)
    assert again.code == 0 and "resolved flit" not in again.err + again.out  # from lock.toml now

    bad = cli("build", "flit", "--version", "not-a-version", "--dry-run", *common)
    assert bad.code == 2 and "is not a release version of flit" in bad.err


@pytest.mark.network
def test_lock_moved_locks_the_newest_release(
    cli: CliRunner, small_project: Path, tmp_path: Path
) -> None:
    common = ["--project", small_project, "--workspace", tmp_path / "ws"]
    result = cli("outdated", "flit", "--no-audit", "--lock-moved", "--json", *common)
    assert result.code == 0, result.err
    (row,) = json.loads(result.out)["recipes"]
    assert row["moved"] and row["newest"] not in ("3.9.0", None)
    text = (small_project / "lock.toml").read_text()
    assert f'[recipes.flit."{row["newest"]}"]' in text and 'derived_from = "3.9.0"' in text
